#!/usr/bin/env bash
# Image test: builds both images offline (images/build.sh: Debian packages, this machine's
# release build, buildah), pushes each to an OCI layout, unpacks its layer with GNU tar the
# way a runtime would, and checks what the chart relies on:
#   - the config: user 65532, entrypoint (and the operator's `run`), PATH (the chart runs
#     `dot-proxy` by name, node-local runs `nft` and `iptables-*` by name), the OCI labels
#     and annotations (source, revision = git HEAD, version);
#   - the proxy binary's file capability cap_net_bind_service=ep, in the layer's tar headers
#     and after unpacking (getcap); no shell in either image; the CA bundle; the size;
#   - running from the unpacked root filesystems (chroot), in a network namespace of its own:
#     `dot-proxy --version` and `dot-proxy-operator --version`; the operator renders the
#     DotProxyConfig of manifests/ and the proxy's `check-config` accepts what it wrote; the
#     proxy as UID 65532 binds port 53 (only the file capability allows it) and answers a
#     query from dig over a DoT upstream (Unbound with a test CA, on loopback); `nft` and
#     `iptables` from the image report their versions, and `dot-proxy node-local --once`
#     sets up the interface and NOTRACK rules with each of them, then `--cleanup` removes them.
# Every process and mount it starts is gone when it exits; the images are removed.
#
# Needs root, buildah, mmdebstrap, setcap/getcap, objcopy, cargo, ip, unbound, dig, openssl, python3 with
# PyYAML. Without them it prints SKIPPED and exits 0, except under CI=true, where it fails.
#
# Environment: CARGO (default cargo), CARGO_TARGET_DIR, KEEP_WORK=1 keeps the work dir.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
registry=localhost/dot-proxy-image-test
tag="test"
ns=dpimg-$$
pids=()

skip_or_fail() {
  echo "image: $*"
  # As the Rust test kit reads it: CI set to anything but empty, false or 0.
  case "${CI:-}" in ''|false|0) echo "image: SKIPPED"; exit 0 ;; esac
  exit 1
}
[ "$(id -u)" = 0 ] || skip_or_fail "needs root (buildah mount, chroot, ip netns)"
for tool in buildah mmdebstrap setcap getcap objcopy ip unbound dig openssl python3 unshare "${CARGO:-cargo}"; do
  command -v "${tool%% *}" >/dev/null || skip_or_fail "$tool is missing (apt-get install buildah mmdebstrap libcap2-bin binutils iproute2 unbound bind9-dnsutils openssl util-linux; .ci/run installs them)"
done
python3 -c 'import yaml' 2>/dev/null || skip_or_fail "python3 lacks PyYAML (apt-get install python3-yaml)"

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  for n in dot-proxy dot-proxy-operator; do buildah rmi -f "$registry/$n:$tag" >/dev/null 2>&1 || true; done
  # --one-file-system: never into a mount (the chroots' /dev and /proc are mounted only in
  # private mount namespaces that are gone by now; this is the second guard).
  [ -n "${KEEP_WORK:-}" ] || rm -rf --one-file-system "$work"
}
work=$(mktemp -d /tmp/dot-proxy-image.XXXXXX)
trap cleanup EXIT

fail=0 passed=0 failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); fail=1; }
check() { # description expected actual
  if [ "$2" == "$3" ]; then ok "$1"; else bad "$1: expected [$2] got [$3]"; fi
}
check_true() { # description command...
  local d=$1; shift
  if "$@"; then ok "$d"; else bad "$d"; fi
}

start=$(date +%s)
for image in proxy operator; do
  REGISTRY=$registry TAG=$tag OFFLINE=1 BUILDER=buildah bash images/build.sh "$image"
done
built=$(date +%s)

# Each image as a runtime gets it: an OCI layout, its config, its layers unpacked in order.
unpack() { # name -> $work/NAME/{rootfs,config.json,manifest.json}
  local name=$1 dir=$work/$1
  mkdir -p "$dir/rootfs"
  buildah push --quiet "$registry/$name:$tag" "oci:$dir/oci:$tag" >/dev/null
  python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
blob = lambda digest: f"{d}/oci/blobs/{digest.replace(':', '/')}"
index = json.load(open(f"{d}/oci/index.json"))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
json.dump(manifest, open(f"{d}/manifest.json", "w"))
open(f"{d}/config.json", "w").write(open(blob(manifest["config"]["digest"])).read())
open(f"{d}/layers", "w").write("".join(blob(l["digest"]) + "\n" for l in manifest["layers"]))
PY
  while read -r layer; do
    tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$layer" -C "$dir/rootfs"
  done <"$dir/layers"
}
unpack dot-proxy
unpack dot-proxy-operator
P=$work/dot-proxy/rootfs
O=$work/dot-proxy-operator/rootfs

cfg() { python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"c": c}))' "$@"; }
revision=$(git rev-parse HEAD)
for name in dot-proxy dot-proxy-operator; do
  c=$work/$name/config.json; m=$work/$name/manifest.json
  check "$name: user" "65532:65532" "$(cfg "$c" 'c["config"]["User"]')"
  check "$name: PATH has /usr/local/bin and /usr/sbin" "yes" \
    "$(cfg "$c" '"yes" if any(e.startswith("PATH=") and "/usr/local/bin" in e and ":/usr/sbin" in e for e in c["config"]["Env"]) else c["config"]["Env"]')"
  for key in source:https://example.invalid/dot-proxy revision:$revision version:$tag; do
    k=org.opencontainers.image.${key%%:*}; v=${key#*:}
    check "$name: label $k" "$v" "$(cfg "$c" "c['config']['Labels'].get('$k')")"
    check "$name: annotation $k" "$v" "$(cfg "$m" "c.get('annotations', {}).get('$k')")"
  done
  shells=$(find "$work/$name/rootfs" \( -name sh -o -name bash -o -name dash -o -name busybox -o -name perl -o -name '*awk' -o -name python3 \) -printf '%P ' )
  check "$name: no shell or interpreter" "" "$shells"
  check "$name: one layer" "1" "$(wc -l <"$work/$name/layers")"
done
check "dot-proxy: entrypoint, no cmd" "['dot-proxy'] None" \
  "$(cfg "$work/dot-proxy/config.json" '" ".join(map(str, (c["config"]["Entrypoint"], c["config"].get("Cmd"))))')"
check "dot-proxy-operator: entrypoint and cmd" "['/usr/local/bin/dot-proxy-operator'] ['run']" \
  "$(cfg "$work/dot-proxy-operator/config.json" '" ".join(map(str, (c["config"]["Entrypoint"], c["config"]["Cmd"])))')"

# The SBOMs: CycloneDX, the crates of the binary, every Debian package of the image.
for image in proxy operator; do
  name=dot-proxy; [ "$image" = operator ] && name=dot-proxy-operator
  check "$name: SBOM lists over 100 crates and the image's Debian packages" "ok" "$(python3 - "$target_dir/images/$name.cdx.json" "$target_dir/images/$image/rootfs.packages" "$name" <<'PY'
import json, sys
bom = json.load(open(sys.argv[1]))
purls = [c.get("purl", "") for c in bom["components"]]
crates = [p for p in purls if p.startswith("pkg:cargo/")]
debs = sorted(p.split("/")[2].split("@")[0] for p in purls if p.startswith("pkg:deb/"))
want = sorted(line.split()[0] for line in open(sys.argv[2]) if line.strip())
problems = []
if bom.get("bomFormat") != "CycloneDX" or bom["metadata"]["component"]["name"] != sys.argv[3]:
    problems.append("not a CycloneDX BOM of " + sys.argv[3])
if len(crates) <= 100:
    problems.append(f"{len(crates)} crates")
if debs != want:
    problems.append(f"Debian packages {debs} != {want}")
print("; ".join(problems) or "ok")
PY
)"
done

# The Dockerfiles give the same image (their build cannot run here: no base images): the same
# rootfs script, the final stage's user, entrypoint, cmd, PATH and label names as the config
# of the offline build, and the same setcap.
for image in proxy operator; do
  name=dot-proxy; [ "$image" = operator ] && name=dot-proxy-operator
  check "Dockerfile.$image agrees with the offline image" "ok" "$(python3 - "Dockerfile.$image" "$work/$name/config.json" "$image" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
cfg = json.load(open(sys.argv[2]))["config"]
image = sys.argv[3]
final = text[text.rindex("\nFROM "):]
def directive(name):
    found = re.findall(rf"(?m)^{name}\s+(.*)$", final)
    return found[-1].strip() if found else None
problems = []
if f"bash /rootfs.sh {image} /rootfs" not in text:
    problems.append("does not run images/rootfs.sh for its root filesystem")
if not re.search(r"(?m)^FROM scratch$", final):
    problems.append("final stage is not FROM scratch")
if directive("USER") != cfg["User"]:
    problems.append(f"USER {directive('USER')} != {cfg['User']}")
if json.loads(directive("ENTRYPOINT")) != cfg["Entrypoint"]:
    problems.append(f"ENTRYPOINT {directive('ENTRYPOINT')} != {cfg['Entrypoint']}")
cmd = directive("CMD")
if (json.loads(cmd) if cmd else None) != (cfg.get("Cmd") or None):
    problems.append(f"CMD {cmd} != {cfg.get('Cmd')}")
path = [e for e in cfg["Env"] if e.startswith("PATH=")]
if f"ENV {path[0]}" not in final:
    problems.append(f"no ENV {path[0]}")
for label in cfg["Labels"]:
    if label.startswith("org.opencontainers.") and label not in final:
        problems.append(f"no LABEL {label}")
if image == "proxy" and "setcap cap_net_bind_service=+ep /rootfs/usr/local/bin/dot-proxy" not in text:
    problems.append("no setcap cap_net_bind_service=+ep on the binary")
print("; ".join(problems) or "ok")
PY
)"
done

# The file capability: in the layer's tar header (what a registry stores), then on disk.
check "dot-proxy: security.capability in the layer's tar header" "yes" "$(python3 - "$(head -1 "$work/dot-proxy/layers")" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    m = t.getmember("usr/local/bin/dot-proxy") if "usr/local/bin/dot-proxy" in t.getnames() else t.getmember("./usr/local/bin/dot-proxy")
    print("yes" if "SCHILY.xattr.security.capability" in m.pax_headers else f"no: {m.pax_headers}")
PY
)"
check "dot-proxy: getcap on the unpacked binary" "cap_net_bind_service=ep" "$(getcap "$P/usr/local/bin/dot-proxy" | awk '{print $2}')"
check "dot-proxy-operator: no file capability" "" "$(getcap "$O/usr/local/bin/dot-proxy-operator")"
for r in "$P" "$O"; do
  n=$(grep -c 'BEGIN CERTIFICATE' "$r/etc/ssl/certs/ca-certificates.crt")
  check "$(basename "$(dirname "$r")"): CA bundle has over 100 certificates" "yes" "$([ "$n" -gt 100 ] && echo yes || echo "no ($n)")"
  check "$(basename "$(dirname "$r")"): nonroot user 65532 in /etc/passwd" "nonroot" "$(awk -F: '$3 == 65532 {print $1}' "$r/etc/passwd")"
done

# Runs a command in an image's root filesystem, in the test's network namespace, with /dev
# and /proc as a runtime gives them; --userspec as the image's user unless AS is root.
ip netns add "$ns"
ip -n "$ns" link set lo up
# Commands are found through the image's own PATH (its config's Env), as a runtime does.
image_path=$(cfg "$work/dot-proxy/config.json" 'next(e[5:] for e in c["config"]["Env"] if e.startswith("PATH="))')
in_image() { # ROOTFS USER:GROUP CMD...
  local r=$1 user=$2; shift 2
  mkdir -p "$r/proc" "$r/dev"
  ip netns exec "$ns" unshare --mount --propagation private -- /bin/sh -c '
    r=$1; user=$2; path=$3; shift 3
    mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" &&
      exec env PATH="$path" chroot --userspec="$user" "$r" "$@"
  ' in_image "$r" "$user" "$image_path" "$@"
}

# The first word of a command's output, or its error (no pipes into grep -q: with pipefail, a
# grep that stops reading early fails the pipeline).
first_word() { local out; out=$("$@" 2>&1) || { echo "exit $?: ${out:0:300}"; return; }; echo "${out%% *}"; }
check "dot-proxy --version" "dot-proxy" "$(first_word in_image "$P" 65532:65532 dot-proxy --version)"
check "dot-proxy-operator --version" "dot-proxy-operator" "$(first_word in_image "$O" 65532:65532 /usr/local/bin/dot-proxy-operator --version)"

# The chart's configuration: the DotProxyConfig of manifests/, rendered by the operator image,
# checked by the proxy image, as the pods would get it.
python3 - "$root/manifests/10-dot-proxy.yaml" "$O/tmp/dotproxyconfig.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "DotProxyConfig"]
assert len(docs) == 1, f"{len(docs)} DotProxyConfigs in {sys.argv[1]}"
yaml.safe_dump(docs[0], open(sys.argv[2], "w"))
PY
if in_image "$O" 65532:65532 /usr/local/bin/dot-proxy-operator render --resource /tmp/dotproxyconfig.yaml >"$work/rendered.yaml" 2>"$work/render.err"; then
  ok "the operator image renders manifests/' DotProxyConfig"
else
  bad "the operator image renders manifests/' DotProxyConfig: $(head -5 "$work/render.err")"
fi
mkdir -p "$P/etc/dot-proxy/config" "$P/etc/dot-proxy/overrides"
python3 - "$work/rendered.yaml" "$P/etc/dot-proxy/config/config.yaml" <<'PY'
import sys, yaml
cms = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and "config.yaml" in d.get("data", {})]
assert cms, "no ConfigMap with config.yaml in the operator's output"
open(sys.argv[2], "w").write(cms[0]["data"]["config.yaml"])
PY
out=$(in_image "$P" 65532:65532 dot-proxy check-config /etc/dot-proxy/config/config.yaml 2>&1) && rc=0 || rc=$?
check "dot-proxy check-config of the rendered chart config (exit 0)" "0" "$rc$([ "$rc" = 0 ] || echo ": $out")"

# A DoT upstream on loopback in the namespace: Unbound with a test CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=image test CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=upstream.test" \
  -keyout "$work/up.key" -out "$work/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:upstream.test\n' >"$work/ext"
openssl x509 -req -in "$work/up.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
  -extfile "$work/ext" -out "$work/up.pem" 2>/dev/null
cp "$work/ca.pem" "$P/tmp/ca.pem"
cat >"$work/unbound.conf" <<CONF
server:
  interface: 127.0.0.77@853
  tls-port: 853
  tls-service-key: "$work/up.key"
  tls-service-pem: "$work/up.pem"
  username: ""
  chroot: ""
  directory: "$work"
  pidfile: "$work/unbound.pid"
  use-syslog: no
  logfile: "$work/unbound.log"
  do-daemonize: no
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  local-zone: "image.test." static
  local-data: "www.image.test. 300 IN A 192.0.2.53"
remote-control:
  control-enable: no
CONF
ip netns exec "$ns" unbound -d -c "$work/unbound.conf" &
pids+=($!)
# The proxy as UID 65532 on port 53: the namespace's ip_unprivileged_port_start is 1024, so
# only the file capability lets it bind.
check "unprivileged ports start at 1024 in the namespace" "1024" "$(ip netns exec "$ns" cat /proc/sys/net/ipv4/ip_unprivileged_port_start)"
in_image "$P" 65532:65532 dot-proxy --listen 127.0.0.1:53 --upstream 'tls://127.0.0.77:853#upstream.test' \
  --tls-ca-file /tmp/ca.pem --admin-listen off --log-level warn 2>"$work/proxy.log" &
pids+=($!)
answer=""
for _ in $(seq 1 50); do
  answer=$(ip netns exec "$ns" dig +short +time=1 +tries=1 @127.0.0.1 -p 53 www.image.test A 2>&1 || true)
  [ "$answer" = 192.0.2.53 ] && break
  sleep 0.2
done
check "dig -> dot-proxy (image, UID 65532, port 53) -> DoT -> Unbound" "192.0.2.53" "$answer"
[ "$answer" = 192.0.2.53 ] || { echo "proxy log:"; cat "$work/proxy.log"; cat "$work/unbound.log" 2>/dev/null || true; }
check "the proxy runs as UID 65532" "65532" "$(ps -o uid= -p "$(pgrep -f -n -- '--listen 127.0.0.1:53 --upstream tls://127.0.0.77:853')" 2>/dev/null | tr -d ' ')"

# The node-local container's tools, as it runs them: root in the image, in the namespace.
check "nft from the image" "nftables" "$(first_word in_image "$P" 0:0 nft --version)"
ipt=$(in_image "$P" 0:0 iptables --version 2>&1 || true)
check "iptables from the image is the nf_tables variant" "yes" "$([[ $ipt == *"(nf_tables)"* ]] && echo yes || echo "$ipt")"
quiet() { "$@" >/dev/null 2>&1; }
for t in iptables-save iptables-restore ip6tables-save ip6tables-restore; do
  check_true "$t runs by name from the image's PATH" quiet in_image "$P" 0:0 "$t" --version
done

# node-local --once with each firewall, against a proxy on the node-local address.
nl_config() { # FIREWALL -> /etc/dot-proxy/nl-FIREWALL.yaml in the proxy image
  python3 - "$P/etc/dot-proxy/config/config.yaml" "$P/etc/dot-proxy/nl-$1.yaml" "$1" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
nl = c.setdefault("node_local", {})
nl.update({"enabled": True, "firewall": sys.argv[3]})
open(sys.argv[2], "w").write(yaml.safe_dump(c))
PY
}
nl_addr=$(python3 -c 'import sys,yaml; c=yaml.safe_load(open(sys.argv[1])); print(c["node_local"]["addresses"][0])' "$P/etc/dot-proxy/config/config.yaml")
nl_if=$(python3 -c 'import sys,yaml; c=yaml.safe_load(open(sys.argv[1])); print(c["node_local"].get("interface", "dot-proxy0"))' "$P/etc/dot-proxy/config/config.yaml")
nl_config nftables; nl_config iptables
in_image "$P" 65532:65532 dot-proxy --config /etc/dot-proxy/config/config.yaml \
  --admin-listen off --log-level warn 2>"$work/proxy-nl.log" &
pids+=($!)
nl() { in_image "$P" 0:0 dot-proxy node-local "$@"; }
if nl --config /etc/dot-proxy/nl-nftables.yaml --once --wait 10s >"$work/nl.log" 2>&1; then
  ok "node-local --once (nftables)"
else
  bad "node-local --once (nftables): $(tail -5 "$work/nl.log")"
fi
check "node-local: $nl_if has $nl_addr" "1" "$(ip -n "$ns" addr show dev "$nl_if" 2>/dev/null | grep -c "inet $nl_addr/32" || true)"
check "node-local: nft table, 6 rules for one IPv4 address" "6" "$(in_image "$P" 0:0 nft list table inet dot_proxy_notrack 2>/dev/null | grep -c ' notrack$' || true)"
nl --config /etc/dot-proxy/nl-nftables.yaml --cleanup >>"$work/nl.log" 2>&1 || true
check "node-local --cleanup removes the nft table" "" "$(in_image "$P" 0:0 nft list tables 2>/dev/null | grep dot_proxy || true)"
if nl --config /etc/dot-proxy/nl-iptables.yaml --once --wait 10s >>"$work/nl.log" 2>&1; then
  ok "node-local --once (iptables)"
else
  bad "node-local --once (iptables): $(tail -5 "$work/nl.log")"
fi
check "node-local: iptables raw table, 4 rules and 2 jumps" "6" "$(in_image "$P" 0:0 iptables-save -t raw 2>/dev/null | grep -c -- '-j DOT-PROXY-NOTRACK\|--notrack' || true)"
nl --config /etc/dot-proxy/nl-iptables.yaml --cleanup --remove-interface >>"$work/nl.log" 2>&1 || true
check "node-local --cleanup --remove-interface: no chain, no interface" "0 no" \
  "$(in_image "$P" 0:0 iptables-save -t raw 2>/dev/null | grep -c DOT-PROXY-NOTRACK || true) $(ip -n "$ns" link show "$nl_if" >/dev/null 2>&1 && echo yes || echo no)"

# Sizes, for docs/install.md.
for image in proxy operator; do
  name=dot-proxy; [ "$image" = operator ] && name=dot-proxy-operator
  layer=$(head -1 "$work/$name/layers")
  echo "size $name: $(du -sk --apparent-size "$work/$name/rootfs" | awk '{printf "%.1f", $1/1024}') MiB unpacked," \
    "$(stat -c %s "$layer" | awk '{printf "%.1f", $1/1048576}') MiB compressed layer," \
    "$(wc -l <"$target_dir/images/$image/rootfs.packages") Debian packages"
done
echo "image: built in $((built - start)) s, checked in $(( $(date +%s) - built )) s"
echo "image: $passed passed, $failed failed"
exit "$fail"
