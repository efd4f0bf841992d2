#!/usr/bin/env bash
# Builds one image: `bash images/build.sh proxy|operator` (`make image`, `make images`).
#
# Two paths give the same image:
#   - Dockerfile: `docker build`, `podman build` or `buildah bud` of Dockerfile.proxy or
#     Dockerfile.operator, when the builder can pull their base images (rust, debian);
#   - offline, where it cannot: the release binary from this machine's cargo build, the root
#     filesystem from Debian packages (images/rootfs.sh, which the Dockerfiles run too),
#     assembled with buildah from scratch. Needs buildah, mmdebstrap, setcap, objcopy and python3, as root.
# Either way the image gets the same user (65532), entrypoint, PATH, file capability and
# labels, and a CycloneDX SBOM is written beside the build (images/sbom.py).
#
# Environment (the Makefile passes these):
#   REGISTRY   image name prefix (default localhost/dot-proxy)
#   TAG        image tag (default the chart's appVersion)
#   BUILDER    docker, podman or buildah (default: the first whose engine answers)
#   OFFLINE    auto (default: offline when the base images cannot be pulled), 1 or 0
#   CARGO, CARGO_TARGET_DIR   the cargo command and its target dir (offline path)
#   IMAGE_SOURCE   org.opencontainers.image.source (default the chart's `home`)
set -euo pipefail

image=${1:?usage: build.sh proxy|operator}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
case "$image" in
  proxy) name=dot-proxy ;;
  operator) name=dot-proxy-operator ;;
  *) echo "build.sh: unknown image $image (proxy or operator)" >&2; exit 64 ;;
esac

chart_field() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" charts/dot-proxy/Chart.yaml; }
REGISTRY=${REGISTRY:-localhost/dot-proxy}
TAG=${TAG:-$(chart_field appVersion)}
IMAGE_SOURCE=${IMAGE_SOURCE:-$(chart_field home)}
CARGO=${CARGO:-cargo}
target_dir=${CARGO_TARGET_DIR:-$root/target}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
ref="$REGISTRY/$name:$TAG"
work="$target_dir/images/$image"
sbom="$target_dir/images/$name.cdx.json"
mkdir -p "$work"

log() { printf 'build.sh %s: %s\n' "$image" "$*" >&2; }

. images/builder.sh
[ -n "${BUILDER:-}" ] || { log "no docker or podman engine, and no buildah: install one (apt-get install buildah)"; exit 69; }

# The labels of the offline path (the Dockerfiles set the same from their build arguments).
labels=(
  "org.opencontainers.image.title=$name"
  "org.opencontainers.image.source=$IMAGE_SOURCE"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.version=$TAG"
  "org.opencontainers.image.licenses=Apache-2.0"
)

offline=${OFFLINE:-auto}
if [ "$offline" = auto ]; then
  offline=0
  for base in $(sed -n 's/^FROM \([^ ]*\).*/\1/p' "Dockerfile.$image" | grep -v '^scratch$' | sort -u); do
    if ! "$BUILDER" pull -q "$base" >/dev/null 2>&1; then
      log "$BUILDER cannot pull $base: building offline from Debian packages"
      offline=1; break
    fi
  done
fi

if [ "$offline" = 0 ]; then
  sub=build; [ "$BUILDER" = buildah ] && sub=bud
  args=(--build-arg "VERSION=$TAG" --build-arg "REVISION=$revision" --build-arg "SOURCE=$IMAGE_SOURCE")
  "$BUILDER" "$sub" -f "Dockerfile.$image" -t "$ref" "${args[@]}" .
  # The Debian package list for the SBOM, from the image itself.
  rm -rf "$work/status.d"
  if [ "$BUILDER" = buildah ]; then
    ctr=$(buildah from "$ref"); mnt=$(buildah mount "$ctr")
    cp -r "$mnt/var/lib/dpkg/status.d" "$work/status.d"
    buildah umount "$ctr" >/dev/null; buildah rm "$ctr" >/dev/null
  else
    ctr=$("$BUILDER" create "$ref")
    "$BUILDER" cp "$ctr:/var/lib/dpkg/status.d" "$work/status.d"
    "$BUILDER" rm "$ctr" >/dev/null
  fi
  # The crates come from cargo tree, so this needs cargo here (the image built without it).
  if python3 images/sbom.py --name "$name" --version "$TAG" --revision "$revision" \
      --status-dir "$work/status.d" --cargo "$CARGO" --out "$sbom"; then
    log "built $ref with $BUILDER (Dockerfile.$image); SBOM $sbom"
  else
    log "built $ref with $BUILDER (Dockerfile.$image); no SBOM: images/sbom.py needs cargo and python3"
  fi
  exit 0
fi

for tool in buildah mmdebstrap setcap objcopy python3; do
  command -v "$tool" >/dev/null || { log "offline build needs $tool (apt-get install buildah mmdebstrap libcap2-bin binutils)"; exit 69; }
done
[ "$(id -u)" = 0 ] || { log "offline build runs as root (the image's files are root's; buildah mount)"; exit 77; }

# The command of `make release` and the Dockerfiles (both binaries: features unify the same way,
# and after `make test` nothing is rebuilt). Unquoted: CARGO may be a command with arguments.
$CARGO build --release --locked -p dot-proxy -p dot-proxy-operator
bin="$target_dir/release/$name"

bash images/rootfs.sh "$image" "$work/rootfs"
# Without the DWARF line tables of the release profile (the proxy is 87 MB with them, 22 MB
# without): every node pulls this image. The symbols stay, so backtraces still name functions;
# the unstripped binary stays in the target dir.
objcopy --strip-debug "$bin" "$work/rootfs/usr/local/bin/$name"
chmod 0755 "$work/rootfs/usr/local/bin/$name"
# The binary is the host's build: it must run on the image's (bookworm's) glibc. A newer
# host glibc would give an image whose every pod fails to start, so refuse it here.
chroot "$work/rootfs" "/usr/local/bin/$name" --version >/dev/null \
  || { log "the $name binary built here does not run on the image's glibc (build on Debian 12 or older)"; exit 1; }
if [ "$image" = proxy ]; then
  # Port 53 as a non-root user: a file capability is the only way Kubernetes can give
  # NET_BIND_SERVICE to a non-root process (it sets no ambient capabilities).
  setcap cap_net_bind_service=+ep "$work/rootfs/usr/local/bin/$name"
fi

ctr=$(buildah from --quiet scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah mount "$ctr")
# tar keeps what cp may not: the security.capability extended attribute, owners, modes.
tar --xattrs --xattrs-include='security.capability' -C "$work/rootfs" -cf - . \
  | tar --xattrs --xattrs-include='security.capability' --numeric-owner -C "$mnt" -xpf -
buildah umount "$ctr" >/dev/null

cfg=(--user 65532:65532 --workingdir / --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for l in "${labels[@]}"; do cfg+=(--label "$l" --annotation "$l"); done
case "$image" in
  proxy) cfg+=(--entrypoint '["dot-proxy"]' --cmd '') ;;
  operator) cfg+=(--entrypoint '["/usr/local/bin/dot-proxy-operator"]' --cmd '["run"]') ;;
esac
buildah config "${cfg[@]}" "$ctr"
buildah commit --quiet --format oci --rm "$ctr" "$ref" >/dev/null
trap - EXIT
# A Docker engine that answered but could not pull the base images: hand it the image, so
# that `make push-images` (which pushes with the same builder) finds it.
if [ "$BUILDER" = docker ]; then
  buildah push --quiet "$ref" "docker-daemon:$ref"
fi

python3 images/sbom.py --name "$name" --version "$TAG" --revision "$revision" \
  --status-dir "$work/rootfs/var/lib/dpkg/status.d" --cargo "$CARGO" --out "$sbom"
log "built $ref offline (buildah, Debian $(wc -l <"$work/rootfs.packages") packages); SBOM $sbom"
