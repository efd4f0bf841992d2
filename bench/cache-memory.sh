#!/usr/bin/env bash
# Peak memory with 1,000,000 distinct names cached: dot-proxy beside Unbound, in one run.
#
# Both proxies forward to the same local Unbound (plain DNS on 127.0.0.1:5499, answering
# every name under bench. from a local zone), get the same 1,000,000 distinct names from
# dnsperf, and are then asked the first 10,000 names again: the upstream's query counter
# shows whether they were still cached. Both are configured to hold all of them (dot-proxy:
# max_entries 2,000,000 and max_bytes 4 GiB; Unbound: msg- and rrset-cache 1 GiB each), and
# then once more at their default cache sizes. Peak RSS is VmHWM after the run.
#
# Needs: unbound, unbound-control, dnsperf, python3; a release build (make release).
# Usage: bench/cache-memory.sh [NAMES]   (default 1000000). Takes about two minutes.
set -euo pipefail

names=${1:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${DOT_PROXY_BIN:-$root/target/release/dot-proxy}
dir=$(mktemp -d /tmp/dot-proxy-memory.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

for tool in unbound unbound-control dnsperf python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "no $bin: run make release" >&2; exit 2; }

python3 - "$names" >"$dir/names.txt" <<'EOF'
import random, sys
rng = random.Random(7)
seen = set()
while len(seen) < int(sys.argv[1]):
    n = '%016x' % rng.getrandbits(64)
    if n not in seen:
        seen.add(n)
        print(f'm{n}.bench. A')
EOF
head -10000 "$dir/names.txt" >"$dir/sample.txt"
echo 'ready.bench. A' >"$dir/ready.txt"

unbound_conf() { # port pidfile extra-server-lines forward?
    cat <<EOF
server:
  interface: 127.0.0.1@$1
  port: $1
  do-daemonize: no
  use-syslog: no
  logfile: ""
  username: ""
  chroot: ""
  directory: "$dir"
  pidfile: "$dir/$2"
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  verbosity: 0
$3
EOF
}

# The upstream: answers from a local zone, never recurses; its counter tells cache hits.
unbound_conf 5499 up.pid "  num-threads: 2
  local-zone: \"bench.\" redirect
  local-data: \"bench. 3600 IN A 192.0.2.1\"
remote-control:
  control-enable: yes
  control-interface: $dir/up.ctl
  control-use-cert: no" >"$dir/up.conf"
unbound -c "$dir/up.conf" >"$dir/up.log" 2>&1 &
pids+=($!)
sleep 1
upq() { unbound-control -c "$dir/up.conf" stats_noreset | awk -F= '/^total.num.queries=/{print $2}'; }

measure() { # label port command...
    local label=$1 port=$2
    shift 2
    "$@" >"$dir/$label.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 50); do
        dnsperf -s 127.0.0.1 -p "$port" -d "$dir/ready.txt" -n 1 -t 1 2>/dev/null | grep -q 'Queries completed: *1 ' && break
        sleep 0.2
    done
    local q0 q1 q2 load
    q0=$(upq)
    load=$(dnsperf -s 127.0.0.1 -p "$port" -d "$dir/names.txt" -n 1 -c 4 -q 200 -l 600 2>&1 |
        awk '/Queries completed/{c=$3} /Queries per second/{q=$4} END{printf "%s answered at %.0f qps", c, q}')
    q1=$(upq)
    dnsperf -s 127.0.0.1 -p "$port" -d "$dir/sample.txt" -n 1 -c 4 -q 200 -l 60 >/dev/null 2>&1
    q2=$(upq)
    local hwm
    hwm=$(awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    printf '| %s | %s MiB | %s | %s of 10,000 |\n' "$label" "$hwm" "$load" "$((q2 - q1))"
}

proxy_conf() { # port extra
    cat <<EOF
listen: [127.0.0.1:$1]
workers: 1
log: {level: warn}
admin: {listen: null}
upstream_groups:
  - name: default
    servers: [{address: 127.0.0.1:5499, protocol: plain}]
zones: [{zone: ., group: default}]
allow_plain_default: true
$2
EOF
}
proxy_conf 5491 "cache: {max_entries: 2000000, max_bytes: 4294967296}" >"$dir/dp-large.yaml"
proxy_conf 5492 "" >"$dir/dp-default.yaml"
unbound_conf 5493 pa.pid "  num-threads: 1
  msg-cache-size: 1g
  rrset-cache-size: 1g
forward-zone:
  name: \".\"
  forward-addr: 127.0.0.1@5499" >"$dir/ub-large.conf"
unbound_conf 5494 pb.pid "  num-threads: 1
forward-zone:
  name: \".\"
  forward-addr: 127.0.0.1@5499" >"$dir/ub-default.conf"

echo "$names distinct names; peak RSS (VmHWM) after the run; re-asked: upstream queries for the first 10,000 names asked again"
echo
echo '| proxy, cache size | peak RSS | load | re-asked names sent upstream |'
echo '|---|---|---|---|'
measure "dot-proxy, holds all" 5491 "$bin" --config "$dir/dp-large.yaml"
measure "unbound, holds all" 5493 unbound -c "$dir/ub-large.conf"
measure "dot-proxy, default (16 MiB)" 5492 "$bin" --config "$dir/dp-default.yaml"
measure "unbound, default (4+4 MiB)" 5494 unbound -c "$dir/ub-default.conf"
