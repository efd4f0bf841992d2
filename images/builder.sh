# shellcheck shell=bash
# Sourced by images/build.sh and images/push.sh: sets BUILDER, when unset, to the first of
# docker, podman and buildah that can build here. A docker or podman client without a
# reachable engine does not count (CI machines have a docker client and no daemon).
if [ -z "${BUILDER:-}" ]; then
  for b in docker podman buildah; do
    command -v "$b" >/dev/null 2>&1 || continue
    case "$b" in
      docker|podman) "$b" info >/dev/null 2>&1 || continue ;;
    esac
    BUILDER=$b; break
  done
fi
