#!/usr/bin/env bash
# Pushes both images that `make images` built (`make push-images REGISTRY=... TAG=...`), with
# the builder that built them; log in to the registry first (`docker|podman|buildah login`).
# Prints each image's digest, for the chart's proxy.image.digest and operator.image.digest.
# PUSH_FLAGS adds flags to the push, e.g. PUSH_FLAGS=--tls-verify=false for a registry served
# over plain HTTP (podman, buildah; Docker reads that from its daemon's insecure-registries).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
REGISTRY=${REGISTRY:-localhost/dot-proxy}
TAG=${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/dot-proxy/Chart.yaml)}
. images/builder.sh
[ -n "${BUILDER:-}" ] || { echo "push.sh: no docker or podman engine, and no buildah" >&2; exit 69; }
for name in dot-proxy dot-proxy-operator; do
  ref="$REGISTRY/$name:$TAG"
  if [ "$BUILDER" = docker ]; then
    # shellcheck disable=SC2086 # PUSH_FLAGS is a list of flags
    docker push ${PUSH_FLAGS:-} "$ref"
    echo "$ref: $(docker inspect --format '{{index .RepoDigests 0}}' "$ref")"
  else
    digest_file=$(mktemp)
    # shellcheck disable=SC2086 # PUSH_FLAGS is a list of flags
    "$BUILDER" push ${PUSH_FLAGS:-} --digestfile "$digest_file" "$ref"
    echo "$ref: $(cat "$digest_file")"
    rm -f "$digest_file"
  fi
done
