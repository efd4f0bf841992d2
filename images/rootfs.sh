#!/usr/bin/env bash
# The root filesystem of an image, from Debian bookworm packages, without a base image:
#   bash images/rootfs.sh proxy|operator DIR
# Both the Dockerfiles (in a build stage) and the offline build (images/build.sh) run this,
# so the two paths give the same files. Needs mmdebstrap and dpkg-deb; run as root (the
# files must be owned by root in the image).
#
# Why not a base image with a package manager (debian:bookworm-slim) as before: neither
# container runs a shell or apt, and each program in the image is something an attacker who
# got in could use. mmdebstrap's `extract` variant unpacks the named packages and what they
# depend on, and runs no maintainer scripts, so no shell, dpkg, apt or perl comes along.
# What those scripts would have done, this script does:
#   - /etc/ssl/certs/ca-certificates.crt, which update-ca-certificates would write: every
#     certificate of the ca-certificates package (its default, /etc/ca-certificates.conf
#     lists all of them);
#   - iptables' alternatives: iptables, ip6tables and their -save and -restore pointing at
#     xtables-nft-multi, Debian's default (nft mode); `iptables-legacy*` are in the package;
#   - users: root, nobody and nonroot (65532), as in distroless images; an nsswitch.conf;
#     /tmp and /run.
# Dropped after unpacking (what the tools never use): openssl and libssl3, and debconf,
# which ca-certificates depends on only for its maintainer scripts; mawk, which base-files
# pre-depends on for its own; docs except copyright files, man pages, locales, and glibc's
# gconv modules (iconv character sets).
# The packages are the suite's current ones: two builds on different days can differ (the
# SBOM and var/lib/dpkg/status.d say what went in).
#
# Writes DIR/ (the root filesystem) and DIR.packages (one `name version arch` line per
# Debian package in it, for the SBOM).
set -euo pipefail

image=${1:?usage: rootfs.sh proxy|operator DIR}
out=${2:?usage: rootfs.sh proxy|operator DIR}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-}

case "$image" in
  # The node-local container runs nft, or iptables-save/-restore and ip6tables-save/-restore
  # (proxy/src/netsetup/firewall); glibc and CA certificates for the binary itself.
  proxy) include=base-files,nftables,iptables,ca-certificates ;;
  # The operator: glibc, libgcc_s (unwinding), CA certificates (the API server's CA comes
  # from the ServiceAccount; the roots are for clusters whose endpoint uses a public CA).
  operator) include=base-files,libc6,libgcc-s1,ca-certificates ;;
  *) echo "rootfs.sh: unknown image $image (proxy or operator)" >&2; exit 64 ;;
esac
# base-files for /etc/os-release and /etc/debian_version, by which scanners tell the
# distribution (with var/lib/dpkg/status.d, below); mawk comes only as its pre-dependency.
drop="openssl libssl3 debconf mawk"

for tool in mmdebstrap dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "rootfs.sh: $tool is missing (apt-get install mmdebstrap)" >&2; exit 69; }
done

rm -rf "$out"
mkdir -p "$(dirname "$out")"
# The downloaded packages stay in var/cache/apt/archives until we have read them.
# chrootless: it runs nothing inside the tree, so it works in an unprivileged build container.
mmdebstrap --quiet --mode=chrootless --variant=extract --include="$include" --skip=cleanup/apt/cache \
  "$suite" "$out" ${mirror:+"$mirror"}

archives="$out/var/cache/apt/archives"
: >"$out.packages"
for deb in "$archives"/*.deb; do
  read -r name version arch < <(dpkg-deb --show --showformat '${Package} ${Version} ${Architecture}\n' "$deb")
  if [[ " $drop " == *" $name "* ]]; then
    # Its regular files and symlinks; directories stay (others may share them).
    dpkg-deb --fsys-tarfile "$deb" | tar -t | while read -r f; do
      [[ "$f" == */ ]] && continue
      rm -f "$out/${f#./}"
    done
  else
    echo "$name $version $arch" >>"$out.packages"
    # As distroless images do: one control file per package, where image scanners (Trivy,
    # Grype, Syft) look for the packages of an image that has no dpkg database.
    mkdir -p "$out/var/lib/dpkg/status.d"
    dpkg-deb --field "$deb" >"$out/var/lib/dpkg/status.d/$name"
  fi
done
sort -o "$out.packages" "$out.packages"
rm -rf "$out/var/cache/apt" "$out/var/lib/apt" "$out/var/log"/* "$out/etc/apt" \
  "$out/var/lib/dpkg/"{arch,updates,status,triggers,alternatives,info} "$out/var/cache/debconf"
# The runtime provides /dev, /etc/resolv.conf and /etc/hostname; mmdebstrap's are the host's.
rm -rf "${out:?}/dev"/* "$out/etc/resolv.conf" "$out/etc/hostname" "$out/etc/fstab"
# base-files' login message script: nothing here logs in, and there is no shell to run it.
rm -rf "$out/etc/update-motd.d"

# Documentation but the licences, manuals, translations, character sets.
find "$out/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$out/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$out/usr/share/man" "$out/usr/share/info" "$out/usr/share/locale" "$out/usr/share/lintian" \
  "$out/usr/lib/x86_64-linux-gnu/gconv" "$out/usr/lib/aarch64-linux-gnu/gconv"
# Empty directories left by the dropped packages (never /tmp, /run or the like: made below).
find "$out/usr/share" "$out/etc" -mindepth 1 -type d -empty -delete 2>/dev/null || true

# What update-ca-certificates would have written.
mkdir -p "$out/etc/ssl/certs"
find "$out/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat >"$out/etc/ssl/certs/ca-certificates.crt"
test -s "$out/etc/ssl/certs/ca-certificates.crt"

if [ "$image" = proxy ]; then
  # What iptables' postinst would have registered with update-alternatives (nft mode).
  for t in iptables ip6tables; do
    for suffix in "" -save -restore; do
      ln -sfn xtables-nft-multi "$out/usr/sbin/$t$suffix"
    done
  done
fi

# glibc's lookups: files, then DNS (the kubelet mounts /etc/hosts and /etc/resolv.conf).
cat >"$out/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
networks: files
protocols: files
services: files
EOF
cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
EOF
mkdir -p "$out/root" "$out/home/nonroot" "$out/tmp" "$out/run" "$out/usr/local/bin"
chown 65532:65532 "$out/home/nonroot"
chmod 0700 "$out/root"
chmod 1777 "$out/tmp"
