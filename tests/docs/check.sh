#!/usr/bin/env bash
# Checks that the docs say what the code does (tests/docs/check.py: YAML examples, metrics,
# flags, alerts, RBAC, sizes). `make docs-check`; `make test` runs it after `interop`.
#
# Environment:
#   DOT_PROXY_BIN           the proxy binary (default target/release/dot-proxy, else target/debug/dot-proxy)
#   DOT_PROXY_OPERATOR_BIN  the operator binary (default target/release/..., else target/debug/...)
#   PYTHON                  python3 with PyYAML (default python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pick() {
    if [ -x "$root/target/release/$1" ]; then echo "$root/target/release/$1"; else echo "$root/target/debug/$1"; fi
}
export DOT_PROXY_BIN="${DOT_PROXY_BIN:-$(pick dot-proxy)}"
export DOT_PROXY_OPERATOR_BIN="${DOT_PROXY_OPERATOR_BIN:-$(pick dot-proxy-operator)}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import yaml' 2>/dev/null; then
    echo "check.sh: $python lacks PyYAML (apt-get install python3-yaml, or pip install PyYAML)" >&2
    exit 2
fi
echo "docs-check: $DOT_PROXY_BIN, $DOT_PROXY_OPERATOR_BIN"
exec "$python" "$root/tests/docs/check.py" "$@"
