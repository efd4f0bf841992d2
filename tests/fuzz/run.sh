#!/usr/bin/env bash
# Fuzz smoke run (part of .ci/run): builds the cargo-fuzz target `query_path` on the stable
# toolchain and fuzzes it for FUZZ_SECONDS (60) from the committed seed corpus. Exits
# non-zero on a crash (a panic in dot_proxy_testkit::fuzz::query_path, or a sanitizer report),
# leaving the reproducer in fuzz/artifacts/query_path/. See docs/fuzzing.md.
#
# Stable rustc: cargo-fuzz passes nightly-only flags (-Zsanitizer=address and the
# SanitizerCoverage options); RUSTC_BOOTSTRAP=1 lets the stable compiler take them, and the
# stable toolchain ships the AddressSanitizer runtime, so no nightly toolchain is needed.
#
# The committed corpus is only read: new inputs go to a scratch directory removed on exit,
# so the run is idempotent. Each step has its own time limit.
#
# Environment: FUZZ_SECONDS (60), FUZZ_SANITIZER (address; `none` for a plain build),
# FUZZ_BUILD_TIMEOUT (seconds, 1800), CARGO (cargo).
set -euo pipefail
cd "$(dirname "$0")/../.."

target=query_path
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
build_timeout=${FUZZ_BUILD_TIMEOUT:-1800}
cargo=${CARGO:-cargo}
export RUSTC_BOOTSTRAP=1

if ! "$cargo" fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  timeout "$build_timeout" "$cargo" install cargo-fuzz --locked
fi
echo "fuzz: $("$cargo" fuzz --version), $(rustc --version), sanitizer $sanitizer"

start=$(date +%s)
timeout "$build_timeout" "$cargo" fuzz build --sanitizer "$sanitizer" "$target"
echo "fuzz: built in $(($(date +%s) - start)) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/dot-proxy-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" fuzz/artifacts/$target
log=$work/fuzz.log

# libFuzzer writes new inputs to the first corpus directory (the scratch one) and only
# reads the others. Ten seconds on one input counts as a hang; 2 GiB of memory as a leak.
set +e
timeout $((seconds + 120)) "$cargo" fuzz run --sanitizer "$sanitizer" "$target" \
  "$work/corpus" "fuzz/corpus/$target" -- \
  -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  >"$log" 2>&1
rc=$?
set -e

if [ "$rc" -ne 0 ]; then
  # The panic message, then the input and where libFuzzer saved it (no stack frames and
  # no NEW/REDUCE lines).
  grep -A3 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' "$log" | head -n 20 || true
  grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)|^[[:space:]]+#[0-9]+ 0x|^[[:space:]]+[0-9]+: |^[[:space:]]+at ' "$log" \
    | tail -n 25
  if [ "$rc" -eq 124 ]; then
    echo "fuzz: FAILED: the run did not end within $((seconds + 120)) s"
  else
    echo "fuzz: FAILED (exit $rc): reproducer in fuzz/artifacts/$target/;" \
      "replay it with: RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/artifacts/$target/<file>"
  fi
  exit 1
fi
grep -E '^INFO: seed corpus|INITED|DONE|^stat::' "$log" || true
echo "fuzz: OK: $target ran ${seconds} s with no crash; $(find "$work/corpus" -type f | wc -l) new inputs (discarded)"
