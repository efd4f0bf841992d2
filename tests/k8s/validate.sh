#!/usr/bin/env bash
# Validates the Kubernetes packaging: the Helm chart, manifests/, the alert rules and the
# Grafana dashboard. Exits non-zero on any failure. See tests/k8s/validate.py for the steps.
#
# Tools, installed here when missing (idempotent, so CI can call this on a fresh machine):
#   - promtool, from Debian's prometheus package (apt);
#   - helm-python-sdk, kubernetes-validate, checkov, jsonschema and PyYAML, pinned in
#     tests/k8s/requirements.txt, in a virtualenv of their own: checkov brings many
#     dependencies (boto3, ...) that must not replace the system Python's.
#
# Usage:
#   bash tests/k8s/validate.sh            run every check
#   bash tests/k8s/validate.sh --render   regenerate manifests/ and the rules copy instead
#                                         (tests/k8s/render.py with the tools set up here)
#
# Environment:
#   DOT_PROXY_K8S_VENV   where the virtualenv lives (default ~/.cache/dot-proxy-k8s-venv)
#   PYTHON               the interpreter that creates it (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${DOT_PROXY_K8S_VENV:-${HOME:-/root}/.cache/dot-proxy-k8s-venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"

log() { printf 'validate.sh: %s\n' "$*" >&2; }

# promtool
if ! command -v promtool >/dev/null 2>&1; then
    log "installing promtool (Debian package prometheus)"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The Python tools. The stamp holds the hash of requirements.txt, so a changed pin
# reinstalls and an unchanged one costs nothing.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "setting up $venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
fi

# The SDK embeds Helm as a shared library; fail early, with its own message, if it
# cannot load here (wrong architecture or libc).
"$venv/bin/python" -c 'import helm_python' || { log "helm-python-sdk cannot load its native library"; exit 1; }

cd "$root"
export PATH="$venv/bin:$PATH"
if [ "${1:-}" = "--render" ]; then
    shift
    exec "$venv/bin/python" "$here/render.py" "$@"
fi
exec "$venv/bin/python" "$here/validate.py" "$@"
