#!/usr/bin/env python3
"""Validates the Kubernetes packaging. Run through tests/k8s/validate.sh, which sets up the
tools; exits non-zero on any failure.

Steps (each prints PASS, FAIL or SKIP with the reason):
  derived       manifests/ and deploy/prometheus/ match the chart (render.py --check)
  values        values.schema.json accepts every variant and rejects known-bad values
  lint          Helm's own lint (strict) for every variant
  render        every variant renders; failure cases fail with the intended message
  k8s-schema    every built-in object validates (strict) against the Kubernetes schemas
                of the oldest and newest supported versions; prometheus-operator objects
                get a structural check
  invariants    what the design depends on: host network, surge rollout, privileges,
                probes, mounts, RBAC, ... (see check_invariants)
  crd           the DotProxyConfig against the CRD's openAPIV3Schema (skipped, with a
                message, while charts/dot-proxy/crds/dotproxyconfigs.yaml is missing)
  manifests     manifests/*.yaml: the same schema and CRD checks
  examples      deploy/examples/*.yaml against the Kubernetes schemas; proxy configs
                embedded in them use only fields of proxy/src/config/mod.rs
  checkov       security scan of every variant; each finding must be skipped with a
                reason in values.yaml, and each skip must match a real finding
  metrics       metric names used by the rules and the dashboard are exported (docs/observability.md's table)
  dashboard     files/dashboard.json is well-formed and has the expected panels; every
                panel query parses (promtool)
  rules         promtool check rules (both copies) and promtool test rules
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
import check as docs_check  # noqa: E402  tests/docs/check.py: the RBAC table of docs/operator.md
from chartlib import (  # noqa: E402
    CHART,
    CRD_FILE,
    DASHBOARD_FILE,
    MANIFESTS,
    OBSERVABILITY_MD,
    NAMESPACE,
    RELEASE,
    ROOT,
    RULES_COPY,
    RULES_FILE,
    Doc,
    load_crd,
    render,
)

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
LINT_KUBE_VERSION = "v1.29.0"

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "node-local-off": {
        "nodeLocal": {"enabled": False},
        "config": {"listen": ["169.254.20.10:53"]},
    },
    "monitoring-on": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        }
    },
    "ipv6": {"nodeLocal": {"ipv6Address": "fd00::10"}},
    "ipv6-only": {
        "nodeLocal": {"ipv4Address": "", "ipv6Address": "fd00::10", "firewall": "nftables"},
        "clusterDNS": {"ip": "fd00:10:96::a", "reverseZones": ["6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa"]},
        "proxy": {"admin": {"host": "[$(NODE_IP)]"}},
    },
    "operator-off": {"operator": {"enabled": False}, "metrics": {"dashboard": {"enabled": False}}},
    "blocklists": {
        "proxy": {
            "blocklistConfigMaps": ["ads", "malware-lists"],
            "extraVolumes": [{"name": "shared-lists", "hostPath": {"path": "/var/lib/dns-lists", "type": "Directory"}}],
            "extraVolumeMounts": [{"name": "shared-lists", "mountPath": "/var/lib/dns-lists", "readOnly": True}],
        },
        "config": {"extraSpec": {"policy": {"blocklists": [
            {"name": "ads", "file": "/etc/dot-proxy/lists/ads/ads.hosts"},
            {"name": "malware", "file": "/etc/dot-proxy/lists/malware-lists/malware.hosts", "action": "refused"},
        ]}}},
    },
    # dnstap to a collector's Unix socket on the node (connecting needs no write access to
    # the mount: sockets are exempt from read-only mounts).
    "dnstap": {
        "proxy": {
            "extraVolumes": [{"name": "dnstap", "hostPath": {"path": "/var/run/dnstap", "type": "Directory"}}],
            "extraVolumeMounts": [{"name": "dnstap", "mountPath": "/var/run/dnstap", "readOnly": True}],
        },
        "config": {"dnstap": {"enabled": True, "socket": "/var/run/dnstap/dnstap.sock", "clientIpv4Prefix": 16}},
    },
    # DNS over HTTPS where port 853 is blocked, DNS over QUIC beside it.
    "doh-doq": {
        "config": {"upstreamGroups": [{"name": "public", "policy": "failover", "timeout": "2s", "servers": [
            {"address": "1.1.1.1:443", "tlsName": "cloudflare-dns.com", "protocol": "https", "path": "/dns-query"},
            {"address": "94.140.14.14:853", "tlsName": "dns.adguard-dns.com", "protocol": "quic"},
        ]}]},
    },
    # Tenants (issue 27): privileged annotations granted by namespace names and labels, a
    # group granted to one namespace, and room for the shards to grow to 32.
    "tenant-grants": {
        "operator": {"overrideShards": 4, "maxOverrideShards": 32},
        "config": {
            "annotationGrants": {
                "rateLimitExempt": {"namespaces": ["monitoring"]},
                "rateAboveDefault": {"namespaceSelector": {"matchExpressions": [
                    {"key": "dns.dot-proxy.io/rate", "operator": "In", "values": ["high"]}]}},
            },
            "upstreamGroups": [
                {"name": "public", "policy": "failover", "timeout": "2s", "servers": [
                    {"address": "1.1.1.1:853", "tlsName": "cloudflare-dns.com"}]},
                {"name": "tenant-a", "servers": [{"address": "9.9.9.9:853", "tlsName": "dns.quad9.net"}],
                 "grantedTo": {"namespaces": ["team-a"], "namespaceSelector": {"matchLabels": {"tenant": "a"}}}},
            ],
        },
    },
    # Search-path completion: the proxies watch their node's pods (token, RBAC), and AAAA
    # is filtered for an IPv4-only cluster.
    "search-completion": {
        "searchCompletion": {"enabled": True, "hostSearchDomains": ["corp.example", "example.com"]},
        "config": {"filterAaaa": {"zones": ["."]}},
    },
    # The operator's egress closed to the API server's own addresses.
    "apiserver-cidrs": {"operator": {"networkPolicy": {"apiServerCIDRs": ["10.0.0.2/32", "fd00:10::2/128"]}}},
    # Images from a private registry (docs/install.md): a pull secret for both. (Not pinned
    # by digest here: that would clear the findings the image checkov skips are for.)
    "private-registry": {
        "imagePullSecrets": [{"name": "regcred"}],
        "proxy": {"image": {"repository": "registry.example.com/dns/dot-proxy", "tag": "0.1.0"}},
        "operator": {"image": {"repository": "registry.example.com/dns/dot-proxy-operator", "tag": "0.1.0"}},
    },
}

# Values the schema must refuse, and values that must make rendering fail.
BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown top-level key": {"nodelocal": {"enabled": True}},
    "firewall not in the enum": {"nodeLocal": {"firewall": "pf"}},
    "interface name over 15 characters": {"nodeLocal": {"interface": "a-much-too-long-name"}},
    "IPv4 address that is not one": {"nodeLocal": {"ipv4Address": "169.254.20"}},
    "unknown group policy": {"config": {"upstreamGroups": [{"name": "x", "policy": "random", "servers": [{"address": "1.1.1.1:853"}]}]}},
    "server address without port": {"config": {"upstreamGroups": [{"name": "x", "servers": [{"address": "1.1.1.1"}]}]}},
    "bad duration": {"clusterDNS": {"timeout": "2 seconds"}},
    "zero override shards": {"operator": {"overrideShards": 0}},
    "block-list ConfigMap name that is no volume name": {"proxy": {"blocklistConfigMaps": ["my.lists"]}},
    "checkov reason with '='": {"proxy": {"checkovSkips": {"CKV_K8S_1": "a reason with = in it"}}},
    "completion of a type it cannot complete": {"searchCompletion": {"types": ["PTR"]}},
    "API server address without a prefix length": {"operator": {"networkPolicy": {"apiServerCIDRs": ["10.0.0.2"]}}},
}
RENDER_FAILURES: dict[str, tuple[dict[str, Any], str]] = {
    "node-local off without listen": ({"nodeLocal": {"enabled": False}}, "config.listen must list"),
    "ServiceMonitor without Service": (
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
        "metrics.serviceMonitor.enabled needs metrics.service.enabled",
    ),
}

PROM_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}

# --------------------------------------------------------------------------------------

results: list[tuple[str, str, str]] = []


def record(step: str, status: str, message: str) -> None:
    results.append((step, status, message))
    print(f"[{status}] {step}: {message}", flush=True)


def run_step(step: str, fn: Callable[[], str | None]) -> None:
    """Runs one step; an AssertionError or exception is a failure, a returned string
    starting with "SKIP:" is a skip."""
    try:
        msg = fn() or "ok"
    except Skip as s:
        record(step, "SKIP", str(s))
        return
    except AssertionError as e:
        record(step, "FAIL", str(e) or "assertion failed")
        return
    except Exception as e:  # noqa: BLE001 - a crash is a failure to report, not to hide
        record(step, "FAIL", f"{type(e).__name__}: {e}")
        return
    record(step, "PASS", msg)


class Skip(Exception):
    pass


class Problems:
    """Collects every problem of a step so one run reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.items.append(msg)

    def raise_if_any(self) -> None:
        if self.items:
            head = self.items[:40]
            more = f"\n  ... and {len(self.items) - 40} more" if len(self.items) > 40 else ""
            raise AssertionError(f"{len(self.items)} problem(s):\n  " + "\n  ".join(head) + more)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def chart_defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------- render & lint

rendered: dict[str, tuple[list[Doc], str]] = {}


def step_derived() -> str:
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("render.py")), "--check"],
                          capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, out
    assert RULES_FILE.read_bytes() == RULES_COPY.read_bytes(), f"{rel(RULES_COPY)} differs from {rel(RULES_FILE)}"
    return out.splitlines()[-1] if out else "up to date"


def step_values() -> str:
    import helm_python as helm

    p = Problems()
    with helm.Chart.load(str(CHART)) as chart:
        for name, values in VARIANTS.items():
            try:
                chart.validate_schema(values)
            except helm.HelmError as e:
                p.add(f"variant {name}: schema rejects it: {e}")
        for name, values in BAD_VALUES.items():
            try:
                chart.validate_schema(values)
                p.add(f"schema accepts bad values ({name}): {values}")
            except helm.HelmValuesError:
                pass
    p.raise_if_any()
    return f"{len(VARIANTS)} variants accepted, {len(BAD_VALUES)} bad value sets refused"


def step_lint() -> str:
    import helm_python as helm

    p = Problems()
    infos = set()
    for name, values in VARIANTS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                           kube_version=LINT_KUBE_VERSION)
        for err in report.get("errors") or []:
            p.add(f"{name}: {err}")
        for m in report.get("messages") or []:
            if m.get("severity", 0) >= 2:
                p.add(f"{name}: {m.get('path')}: {m.get('error')}")
            else:
                infos.add(f"{m.get('path')}: {m.get('error')}")
    p.raise_if_any()
    extra = f" (info only: {'; '.join(sorted(infos))})" if infos else ""
    return f"{len(VARIANTS)} variants lint clean in strict mode{extra}"


def step_render() -> str:
    import helm_python as helm

    p = Problems()
    for name, values in VARIANTS.items():
        try:
            rendered[name] = render(values)
        except helm.HelmError as e:
            p.add(f"{name}: {e}")
    for name, (values, expected) in RENDER_FAILURES.items():
        try:
            render(values)
            p.add(f"{name}: rendered, but should fail with {expected!r}")
        except helm.HelmError as e:
            p.check(expected in str(e), f"{name}: failed, but not with {expected!r}: {e}")
    p.raise_if_any()
    counts = ", ".join(f"{n}={len(d)}" for n, (d, _) in rendered.items())
    return f"objects per variant: {counts}; {len(RENDER_FAILURES)} invalid inputs fail as intended"


# --------------------------------------------------------------------- k8s schemas

def validate_k8s(obj: dict[str, Any], where: str, p: Problems) -> None:
    import kubernetes_validate as kv

    kind = obj.get("kind", "")
    if kind in PROM_OPERATOR_KINDS:
        check_prom_operator_object(obj, where, p)
        return
    if kind in ("DotProxyConfig",):
        return  # checked against the CRD in its own step
    for version in K8S_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(x) for x in e.path)
            p.add(f"{where}: {kind}/{obj['metadata'].get('name')} (k8s {version}): {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            p.add(f"{where}: no Kubernetes schema: {e.message}")


def check_prom_operator_object(obj: dict[str, Any], where: str, p: Problems) -> None:
    """kubernetes-validate has no schemas for prometheus-operator's CRDs, so check the
    fields we use by hand (the rule content itself is checked by promtool)."""
    name = f"{where}: {obj['kind']}/{obj.get('metadata', {}).get('name')}"
    p.check(obj.get("apiVersion") == "monitoring.coreos.com/v1", f"{name}: apiVersion must be monitoring.coreos.com/v1")
    spec = obj.get("spec") or {}
    if obj["kind"] == "ServiceMonitor":
        p.check(set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, f"{name}: unexpected spec fields {sorted(spec)}")
        p.check(bool(spec.get("selector", {}).get("matchLabels")), f"{name}: no selector.matchLabels")
        for ep in spec.get("endpoints", []):
            p.check(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings", "scheme"},
                    f"{name}: unexpected endpoint fields {sorted(ep)}")
            p.check(isinstance(ep.get("port"), str), f"{name}: endpoint port must be a Service port name")
            for r in ep.get("relabelings", []):
                p.check(set(r) <= {"sourceLabels", "targetLabel", "regex", "replacement", "action", "separator"},
                        f"{name}: unexpected relabeling fields {sorted(r)}")
    else:
        p.check(set(spec) == {"groups"}, f"{name}: spec must hold only groups")
        expected = yaml.safe_load(RULES_FILE.read_text())
        p.check(spec == expected, f"{name}: spec differs from {rel(RULES_FILE)}")


def step_k8s_schema() -> str:
    p = Problems()
    n = 0
    for name, (docs, _) in rendered.items():
        for d in docs:
            validate_k8s(d.obj, f"{name}/{d.source}", p)
            n += 1
    p.raise_if_any()
    return f"{n} rendered objects valid against Kubernetes {' and '.join(K8S_VERSIONS)} (strict)"


# ---------------------------------------------------------------------- invariants

def find(docs: list[Doc], kind: str, suffix: str = "") -> list[dict[str, Any]]:
    return [d.obj for d in docs if d.kind == kind and d.name.endswith(suffix)]


def env_map(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def check_invariants(variant: str, values: dict[str, Any], docs: list[Doc], notes: str, p: Problems) -> None:
    v = deep_merge(chart_defaults(), values)
    tag = f"{variant}:"
    admin_port = v["proxy"]["admin"]["port"]
    # The proxies mount every shard the operator may grow to.
    shards = min(64, max(v["operator"]["overrideShards"], v["operator"].get("maxOverrideShards") or 0))

    # Nothing anywhere mounts with subPath (it would freeze ConfigMap updates).
    for d in docs:
        p.check("subPath" not in json.dumps(d.obj), f"{tag} {d.kind}/{d.name} uses subPath")
        p.check(d.obj.get("metadata", {}).get("namespace") in (NAMESPACE, None) or d.kind == "ConfigMap",
                f"{tag} {d.kind}/{d.name} is not in the release namespace")

    dss = find(docs, "DaemonSet")
    p.check(len(dss) == 1, f"{tag} expected one DaemonSet, got {len(dss)}")
    if dss:
        ds = dss[0]
        spec = ds["spec"]
        pod = spec["template"]["spec"]
        p.check(pod.get("hostNetwork") is True, f"{tag} DaemonSet must use hostNetwork")
        p.check(pod.get("dnsPolicy") == "Default", f"{tag} DaemonSet dnsPolicy must be Default")
        p.check(pod.get("priorityClassName") == "system-node-critical", f"{tag} priorityClassName must be system-node-critical")
        p.check({"operator": "Exists"} in pod.get("tolerations", []), f"{tag} DaemonSet must tolerate every taint (operator: Exists, no key)")
        ru = spec.get("updateStrategy", {})
        p.check(ru.get("type") == "RollingUpdate" and ru.get("rollingUpdate") == {"maxSurge": 1, "maxUnavailable": 0},
                f"{tag} update strategy must be RollingUpdate maxSurge 1 / maxUnavailable 0, got {ru}")
        completion = v["searchCompletion"]["enabled"]
        p.check(pod.get("automountServiceAccountToken") is completion,
                f"{tag} proxy pods mount an API token exactly when search completion is on")
        containers = {c["name"]: c for c in pod["containers"]}
        for c in pod["containers"]:
            p.check(not c.get("ports"), f"{tag} container {c['name']} declares ports: in a host-network pod they become hostPorts and block the surge pod")
            sc = c.get("securityContext", {})
            p.check(sc.get("readOnlyRootFilesystem") is True, f"{tag} {c['name']}: readOnlyRootFilesystem must be true")
            p.check(sc.get("allowPrivilegeEscalation") is False, f"{tag} {c['name']}: allowPrivilegeEscalation must be false")
            p.check(sc.get("privileged") in (False, None), f"{tag} {c['name']}: must not be privileged")
            p.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{tag} {c['name']}: must drop ALL capabilities")
            p.check("resources" in c and c["resources"].get("requests") and c["resources"].get("limits"),
                    f"{tag} {c['name']}: needs resource requests and limits")
        proxy = containers.get("proxy")
        p.check(proxy is not None, f"{tag} no proxy container")
        if proxy:
            sc = proxy["securityContext"]
            p.check(sc.get("runAsUser") == 65532 and sc.get("runAsNonRoot") is True, f"{tag} proxy must run as 65532, non-root")
            p.check(sc.get("capabilities", {}).get("add") == ["NET_BIND_SERVICE"], f"{tag} proxy may add only NET_BIND_SERVICE")
            p.check(proxy.get("command") == ["dot-proxy"] and proxy.get("args") == ["--config", "/etc/dot-proxy/config/config.yaml"],
                    f"{tag} proxy must run `dot-proxy --config /etc/dot-proxy/config/config.yaml`")
            env = env_map(proxy)
            p.check(env.get("NODE_IP") == {"fieldRef": {"fieldPath": "status.hostIP"}}, f"{tag} NODE_IP must come from status.hostIP")
            p.check(env.get("DOT_PROXY_NODE_NAME") == {"fieldRef": {"fieldPath": "spec.nodeName"}}, f"{tag} DOT_PROXY_NODE_NAME must come from spec.nodeName")
            p.check(env.get("DOT_PROXY_ADMIN_LISTEN") == f"{v['proxy']['admin']['host']}:{admin_port}",
                    f"{tag} DOT_PROXY_ADMIN_LISTEN is {env.get('DOT_PROXY_ADMIN_LISTEN')!r}")
            p.check("$(NODE_IP)" in str(env.get("DOT_PROXY_ADMIN_LISTEN")), f"{tag} admin server must bind the node IP")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                hg = proxy.get(probe, {}).get("httpGet", {})
                p.check(hg.get("path") == path and hg.get("port") == admin_port, f"{tag} proxy {probe} must GET {path} on port {admin_port}")
            mounts = {m["mountPath"]: m for m in proxy.get("volumeMounts", [])}
            p.check(mounts.get("/etc/dot-proxy/config", {}).get("name") == "config", f"{tag} config volume not at /etc/dot-proxy/config")
            p.check(mounts.get("/etc/dot-proxy/overrides", {}).get("name") == "overrides", f"{tag} overrides volume not at /etc/dot-proxy/overrides")
            p.check(all(m.get("readOnly") for m in proxy.get("volumeMounts", [])), f"{tag} proxy mounts must be read-only")
            for cm in v["proxy"]["blocklistConfigMaps"]:
                p.check(mounts.get(f"/etc/dot-proxy/lists/{cm}", {}).get("name") == f"list-{cm}",
                        f"{tag} block-list ConfigMap {cm} not mounted at /etc/dot-proxy/lists/{cm}")
            for m in v["proxy"]["extraVolumeMounts"]:
                p.check(mounts.get(m["mountPath"]) == m, f"{tag} extra mount {m} missing")
        vols = {vol["name"]: vol for vol in pod.get("volumes", [])}
        for cm in v["proxy"]["blocklistConfigMaps"]:
            p.check(vols.get(f"list-{cm}") == {"name": f"list-{cm}", "configMap": {"name": cm}},
                    f"{tag} block-list volume list-{cm} must be ConfigMap {cm}")
        for ev in v["proxy"]["extraVolumes"]:
            p.check(vols.get(ev["name"]) == ev, f"{tag} extra volume {ev['name']} missing")
        cm_name = v["config"]["configMapName"] or "dot-proxy-config"
        p.check(vols.get("config", {}).get("configMap", {}).get("name") == cm_name, f"{tag} config volume must be ConfigMap {cm_name}")
        sources = vols.get("overrides", {}).get("projected", {}).get("sources", [])
        want = [{"configMap": {"name": f"{cm_name}-overrides-{i}", "optional": True,
                               "items": [{"key": f"shard-{i}.yaml", "path": f"shard-{i}.yaml"}]}} for i in range(shards)]
        p.check(sources == want, f"{tag} overrides projected volume must hold {shards} optional shards {cm_name}-overrides-<i> with key shard-<i>.yaml")

        nl = containers.get("node-local")
        if v["nodeLocal"]["enabled"]:
            p.check(nl is not None, f"{tag} node-local container missing while nodeLocal.enabled")
            if nl:
                sc = nl["securityContext"]
                caps = sc.get("capabilities", {}).get("add", [])
                want_caps = ["NET_ADMIN", "NET_BIND_SERVICE"] + (["NET_RAW"] if v["nodeLocal"]["firewall"] in ("auto", "iptables") else [])
                p.check(caps == want_caps, f"{tag} node-local capabilities {caps}, want {want_caps}")
                p.check(nl.get("args", [])[:1] == ["node-local"] and "--config" in nl.get("args", []),
                        f"{tag} node-local must run `dot-proxy node-local --config ...`")
                p.check(sc.get("runAsUser") == 0, f"{tag} node-local runs as root (see the template)")
                # Probes on the watch loop's heartbeat (kubernetes/dns#394, #453: a setup
                # container hung on the xtables lock went unnoticed).
                args = nl.get("args", [])
                status = args[args.index("--status-file") + 1] if "--status-file" in args else None
                p.check(status is not None, f"{tag} node-local must write a --status-file heartbeat")
                for probe, mode in (("livenessProbe", "live"), ("readinessProbe", "ready")):
                    cmd = nl.get(probe, {}).get("exec", {}).get("command", [])
                    p.check(cmd[:4] == ["dot-proxy", "node-local", "--check", mode]
                            and "--status-file" in cmd and cmd[cmd.index("--status-file") + 1] == status,
                            f"{tag} node-local {probe} must run `dot-proxy node-local --check {mode} --status-file {status}`")
                mounts = {m["mountPath"]: m["name"] for m in nl.get("volumeMounts", [])}
                vols = {vol["name"]: vol for vol in pod.get("volumes", [])}
                status_dir = os.path.dirname(status or "/nonexistent/x")
                p.check(status_dir in mounts and "emptyDir" in vols.get(mounts.get(status_dir, ""), {}),
                        f"{tag} the heartbeat directory {status_dir} must be a writable emptyDir mount")
                iptables = v["nodeLocal"]["firewall"] in ("auto", "iptables")
                has_lock = any(m["mountPath"] == "/run/xtables.lock" for m in nl.get("volumeMounts", []))
                p.check(has_lock == iptables, f"{tag} xtables.lock mount must exist exactly when iptables may be used")
        else:
            p.check(nl is None, f"{tag} node-local container present while nodeLocal.enabled is false")
        for name, c in containers.items():
            if name != "node-local":
                p.check("NET_ADMIN" not in json.dumps(c.get("securityContext", {})), f"{tag} only node-local may have NET_ADMIN ({name} has it)")

    # The operator.
    deps = find(docs, "Deployment")
    if v["operator"]["enabled"]:
        p.check(len(deps) == 1, f"{tag} expected one operator Deployment, got {len(deps)}")
        for dep in deps:
            p.check(dep["spec"]["replicas"] == v["operator"]["replicas"], f"{tag} operator replicas")
            c = dep["spec"]["template"]["spec"]["containers"][0]
            p.check(c.get("args") == ["run"], f"{tag} operator args must be [run]")
            env = env_map(c)
            p.check(env.get("POD_NAMESPACE") == {"fieldRef": {"fieldPath": "metadata.namespace"}}, f"{tag} POD_NAMESPACE from the downward API")
            # Without it the operator watches DotProxyConfigs in every namespace, which its
            # namespaced Role does not allow.
            p.check(env.get("DOT_PROXY_OPERATOR_NAMESPACE") == {"fieldRef": {"fieldPath": "metadata.namespace"}},
                    f"{tag} DOT_PROXY_OPERATOR_NAMESPACE must be the release namespace")
            # Its own Lease and only its own DotProxyConfigs (docs/operator.md, several
            # releases in one namespace).
            p.check(env.get("DOT_PROXY_OPERATOR_RELEASE") == RELEASE, f"{tag} DOT_PROXY_OPERATOR_RELEASE must be the release name")
            p.check(env.get("DOT_PROXY_OPERATOR_METRICS_ADDR", "").endswith(f":{v['operator']['port']}"), f"{tag} operator metrics address must use operator.port")
            p.check(c["ports"] == [{"name": "http", "containerPort": v["operator"]["port"], "protocol": "TCP"}], f"{tag} operator port")
            p.check(c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{tag} operator probes")
            sc = c["securityContext"]
            p.check(sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("capabilities", {}).get("drop") == ["ALL"]
                    and not sc.get("capabilities", {}).get("add"), f"{tag} operator securityContext must be restrictive")
        check_rbac(tag, v, operator_objects(docs), p)
        check_networkpolicy(tag, v, docs, p)
    else:
        p.check(not deps and not find(docs, "Role") and not find(operator_objects(docs), "ClusterRole"), f"{tag} operator objects present while operator.enabled is false")
    check_proxy_rbac(tag, v, docs, p)
    check_rbac_doc(tag, v, docs, p)

    # Services, monitoring, dashboard.
    svc_names = {d.name for d in docs if d.kind == "Service"}
    p.check("dot-proxy-metrics" in svc_names, f"{tag} proxy metrics Service missing")
    for s in find(docs, "Service"):
        p.check(s["spec"].get("clusterIP") == "None", f"{tag} metrics Services are headless")
    sm = find(docs, "ServiceMonitor")
    pr = find(docs, "PrometheusRule")
    p.check(bool(sm) == v["metrics"]["serviceMonitor"]["enabled"], f"{tag} ServiceMonitor presence must follow metrics.serviceMonitor.enabled")
    p.check(bool(pr) == v["metrics"]["prometheusRule"]["enabled"], f"{tag} PrometheusRule presence must follow metrics.prometheusRule.enabled")
    dash = [d.obj for d in docs if d.kind == "ConfigMap" and d.name.endswith("-dashboard")]
    p.check(bool(dash) == v["metrics"]["dashboard"]["enabled"], f"{tag} dashboard ConfigMap presence")
    for cm in dash:
        p.check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"{tag} dashboard ConfigMap needs label grafana_dashboard: \"1\"")
        p.check(json.loads(cm["data"]["dot-proxy.json"]) == json.loads(DASHBOARD_FILE.read_text()), f"{tag} dashboard ConfigMap differs from files/dashboard.json")

    check_images(tag, v, docs, p)

    # The DotProxyConfig.

    cfgs = find(docs, "DotProxyConfig")
    p.check(len(cfgs) == 1, f"{tag} expected one DotProxyConfig")
    for cfg in cfgs:
        check_dotproxyconfig(tag, v, cfg, p)

    # NOTES: the dnsConfig snippet.
    servers = [a for a in (v["nodeLocal"]["ipv4Address"], v["nodeLocal"]["ipv6Address"]) if a] if v["nodeLocal"]["enabled"] else []
    if v["clusterDNS"]["enabled"]:
        servers.append(v["clusterDNS"]["ip"])
    for s in servers[:3]:
        p.check(f"      - {s}\n" in notes, f"{tag} NOTES.txt does not list nameserver {s}")
    p.check('dnsPolicy: "None"' in notes and "name: ndots" in notes and 'value: "5"' in notes, f"{tag} NOTES.txt lacks the dnsConfig snippet")
    p.check(f"NAMESPACE.svc.{v['clusterDNS']['domain']}" in notes, f"{tag} NOTES.txt lacks the search domains")


def check_images(tag: str, v: dict[str, Any], docs: list[Doc], p: Problems) -> None:
    """Every pod (the DaemonSet's and the operator's) pulls with `imagePullSecrets` and runs the
    configured image: repository@digest when a digest is set, else repository:tag (appVersion
    when the tag is empty)."""
    def ref(img: dict[str, Any]) -> str:
        if img.get("digest"):
            return f"{img['repository']}@{img['digest']}"
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        return f"{img['repository']}:{img.get('tag') or app_version}"
    for kind, key in (("DaemonSet", "proxy"), ("Deployment", "operator")):
        for obj in find(docs, kind):
            pod = obj["spec"]["template"]["spec"]
            where = f"{tag} {kind}/{obj['metadata']['name']}"
            p.check(pod.get("imagePullSecrets", []) == v["imagePullSecrets"],
                    f"{where}: imagePullSecrets {pod.get('imagePullSecrets')} != values {v['imagePullSecrets']}")
            for c in pod["containers"]:
                p.check(c["image"] == ref(v[key]["image"]), f"{where}: container {c['name']} runs {c['image']}, not {ref(v[key]['image'])}")


def check_networkpolicy(tag: str, v: dict[str, Any], docs: list[Doc], p: Problems) -> None:
    """The operator's egress: the API server's ports, to any address unless
    operator.networkPolicy.apiServerCIDRs lists the API server's, which become ipBlock peers."""
    np = v["operator"]["networkPolicy"]
    pols = find(docs, "NetworkPolicy")
    p.check(len(pols) == (1 if np["enabled"] else 0), f"{tag} expected {int(np['enabled'])} NetworkPolicy, got {len(pols)}")
    for pol in pols:
        egress = pol["spec"].get("egress", [])
        p.check(len(egress) == 1, f"{tag} the operator NetworkPolicy must have one egress rule, got {egress}")
        for rule in egress:
            ports = [(x.get("protocol"), x.get("port")) for x in rule.get("ports", [])]
            p.check(ports == [("TCP", port) for port in np["apiServerPorts"]],
                    f"{tag} egress ports {ports}, want TCP {np['apiServerPorts']}")
            want_to = [{"ipBlock": {"cidr": c}} for c in np["apiServerCIDRs"]]
            p.check(rule.get("to", []) == want_to,
                    f"{tag} egress peers {rule.get('to')}, want {want_to or 'none (any address)'}")


def component(d: Doc) -> str:
    return d.obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component", "")


def operator_objects(docs: list[Doc]) -> list[Doc]:
    """Everything but the proxy's own RBAC objects."""
    return [d for d in docs if not (d.kind.startswith("ClusterRole") and component(d) == "proxy")]


def check_proxy_rbac(tag: str, v: dict[str, Any], docs: list[Doc], p: Problems) -> None:
    """The proxy gets exactly list and watch on pods, and only with search completion on."""
    roles = [d for d in docs if d.kind == "ClusterRole" and component(d) == "proxy"]
    bindings = [d for d in docs if d.kind == "ClusterRoleBinding" and component(d) == "proxy"]
    if not v["searchCompletion"]["enabled"]:
        p.check(not roles and not bindings, f"{tag} proxy RBAC present while search completion is off")
        return
    p.check(len(roles) == 1 and len(bindings) == 1, f"{tag} expected one proxy ClusterRole and one binding")
    for r in roles:
        p.check(r.obj["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
                f"{tag} proxy ClusterRole must grant list and watch on pods only, got {r.obj['rules']}")
    for b in bindings:
        p.check(b.obj["subjects"] == [{"kind": "ServiceAccount", "name": "dot-proxy", "namespace": NAMESPACE}],
                f"{tag} proxy ClusterRoleBinding must bind only the proxy ServiceAccount, got {b.obj['subjects']}")
        p.check(bool(roles) and b.obj["roleRef"]["name"] == roles[0].name, f"{tag} proxy binding names its role")


def check_rbac_doc(tag: str, v: dict[str, Any], docs: list[Doc], p: Problems) -> None:
    """docs/operator.md's RBAC table is what this variant grants: the operator's rows where
    the operator runs with its default ConfigMap names, the proxy's where search completion
    is on (tests/docs/check.py compares the same table with manifests/)."""
    subjects = set()
    if v["operator"]["enabled"] and v["operator"]["rbac"]["restrictConfigMapNames"] \
            and (v["config"]["configMapName"] or "dot-proxy-config") == "dot-proxy-config":
        subjects.add("operator")
    if v["searchCompletion"]["enabled"]:
        subjects.add("proxy")
    rendered = docs_check.rendered_rbac([d.obj for d in docs])
    for line, msg in docs_check.compare_rbac(docs_check.doc_rbac(), rendered, subjects, f"variant {tag[:-1]}"):
        p.add(f"docs/operator.md:{line or '?'}: {msg}")


def check_rbac(tag: str, v: dict[str, Any], docs: list[Doc], p: Problems) -> None:
    def rules_of(kind: str) -> list[dict[str, Any]]:
        objs = find(docs, kind)
        p.check(len(objs) == 1, f"{tag} expected one {kind}")
        return objs[0]["rules"] if objs else []

    def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
        out: dict[tuple[str, str], set[str]] = {}
        for r in rules:
            for verb in r["verbs"]:
                p.check(verb != "*", f"{tag} RBAC must not grant verb *")
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    p.check("*" not in (g, res), f"{tag} RBAC must not use wildcards")
                    out.setdefault((g, res), set()).update(r["verbs"])
        return out

    cluster = grants(rules_of("ClusterRole"))
    want_cluster = {
        ("", "pods"): {"get", "list", "watch"},
        ("", "nodes"): {"get", "list", "watch"},
        ("", "namespaces"): {"get", "list", "watch"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
    }
    p.check(cluster == want_cluster, f"{tag} ClusterRole grants {cluster}, want {want_cluster}")
    ns = grants(rules_of("Role"))
    want_ns = {
        ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
        ("dns.dot-proxy.io", "dotproxyconfigs"): {"get", "list", "watch"},
        ("dns.dot-proxy.io", "dotproxyconfigs/status"): {"get", "patch", "update"},
        ("dns.dot-proxy.io", "dotproxyconfigs/finalizers"): {"update"},
        ("coordination.k8s.io", "leases"): {"get", "create", "patch", "update"},
    }
    p.check(ns == want_ns, f"{tag} Role grants {ns}, want {want_ns}")
    for r in rules_of("Role"):
        if r["resources"] == ["leases"] and set(r["verbs"]) & {"get", "patch", "update"}:
            p.check(r.get("resourceNames") == [f"dot-proxy-operator-{RELEASE}"], f"{tag} lease updates must be limited to the release's Lease dot-proxy-operator-{RELEASE}")
        if r["resources"] == ["configmaps"] and "delete" in r["verbs"] and v["operator"]["rbac"]["restrictConfigMapNames"]:
            cm = v["config"]["configMapName"] or "dot-proxy-config"
            want = [cm] + [f"{cm}-overrides-{i}" for i in range(64)]
            p.check(r.get("resourceNames") == want, f"{tag} ConfigMap writes must be limited to {want}")
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for b in find(docs, kind):
            p.check(b["subjects"] == [{"kind": "ServiceAccount", "name": "dot-proxy-operator", "namespace": NAMESPACE}],
                    f"{tag} {kind} must bind only the operator ServiceAccount")


def check_dotproxyconfig(tag: str, v: dict[str, Any], cfg: dict[str, Any], p: Problems) -> None:
    spec = cfg["spec"]
    sc = v["searchCompletion"]
    p.check(spec.get("searchCompletion") == {"enabled": sc["enabled"], "clusterDomain": v["clusterDNS"]["domain"],
                                             "hostSearchDomains": sc["hostSearchDomains"], "types": sc["types"]},
            f"{tag} spec.searchCompletion must follow the searchCompletion values, got {spec.get('searchCompletion')}")
    p.check(cfg["apiVersion"] == "dns.dot-proxy.io/v1alpha1", f"{tag} DotProxyConfig apiVersion")
    p.check(cfg["metadata"].get("labels", {}).get("dns.dot-proxy.io/release") == RELEASE,
            f"{tag} the DotProxyConfig must carry dns.dot-proxy.io/release: {RELEASE} (only its release's operator acts on it)")
    groups = {g["name"]: g for g in spec.get("upstreamGroups", [])}
    p.check(len(groups) == len(spec.get("upstreamGroups", [])), f"{tag} upstream group names repeat")
    zones = {z["zone"]: z["group"] for z in spec.get("zones", [])}
    p.check("." in zones, f"{tag} no route for the root zone")
    for z, g in zones.items():
        p.check(g in groups, f"{tag} zone {z} routes to unknown group {g}")
    root = groups.get(zones.get("."), {})
    p.check(all(s.get("protocol", "tls") in ("tls", "https", "quic") and s.get("tlsName") for s in root.get("servers", [])),
            f"{tag} the root zone must go over TLS, HTTPS or QUIC with a tlsName")
    p.check(bool(spec.get("listen")), f"{tag} empty listen")
    t = spec.get("target", {})
    p.check(t.get("overrideShards") == v["operator"]["overrideShards"], f"{tag} target.overrideShards must equal operator.overrideShards")
    shards = min(64, max(v["operator"]["overrideShards"], v["operator"].get("maxOverrideShards") or 0))
    p.check(t.get("maxOverrideShards") == shards, f"{tag} target.maxOverrideShards must equal the shards the proxies mount ({shards})")
    p.check(spec.get("annotationGrants") == v["config"]["annotationGrants"], f"{tag} spec.annotationGrants must be config.annotationGrants")
    p.check(t.get("configMapName") == (v["config"]["configMapName"] or "dot-proxy-config"), f"{tag} target.configMapName")
    if v["clusterDNS"]["enabled"]:
        p.check(zones.get(v["clusterDNS"]["domain"]) == v["clusterDNS"]["groupName"], f"{tag} cluster domain not routed to the cluster DNS")
        cg = groups.get(v["clusterDNS"]["groupName"], {})
        p.check([s.get("protocol") for s in cg.get("servers", [])] == ["plain"], f"{tag} cluster DNS group must be plain DNS")
    if v == deep_merge(chart_defaults(), {}):
        servers = {(s["address"], s.get("tlsName")) for s in groups.get("public", {}).get("servers", [])}
        p.check(servers == {("1.1.1.1:853", "cloudflare-dns.com"), ("1.0.0.1:853", "cloudflare-dns.com"),
                            ("8.8.8.8:853", "dns.google"), ("8.8.4.4:853", "dns.google")},
                f"{tag} default upstreams must be Cloudflare and Google over TLS")
        p.check(spec["listen"] == ["169.254.20.10:53"], f"{tag} default listen must be 169.254.20.10:53")
        p.check(zones.get("10.in-addr.arpa") == "cluster" and groups["cluster"]["servers"][0]["address"] == "10.96.0.10:53",
                f"{tag} default reverse zone and cluster DNS address")


def step_invariants() -> str:
    p = Problems()
    for name, (docs, notes) in rendered.items():
        check_invariants(name, VARIANTS[name], docs, notes, p)
    p.raise_if_any()
    return f"{len(rendered)} variants keep the design invariants"


# ---------------------------------------------------------------------------- CRD

def openapi_to_jsonschema(node: Any) -> Any:
    """Turns a CRD's structural OpenAPI v3 schema into JSON Schema with the API server's
    strictness: unknown fields are errors (kubectl's strict field validation) unless
    x-kubernetes-preserve-unknown-fields, and `nullable` allows null."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(x) for k, x in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else list(out["type"]) + ["null"]
    if node.get("x-kubernetes-int-or-string"):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def validate_cr(crd: dict[str, Any], cr: dict[str, Any], where: str, p: Problems) -> None:
    import jsonschema

    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    p.check(cr["kind"] == kind, f"{where}: kind {cr['kind']} is not the CRD's {kind}")
    grp, _, ver = cr["apiVersion"].partition("/")
    p.check(grp == group, f"{where}: API group {grp} is not the CRD's {group}")
    versions = {x["name"]: x for x in spec["versions"]}
    p.check(ver in versions and versions[ver].get("served"), f"{where}: version {ver} is not served by the CRD ({sorted(versions)})")
    if spec.get("scope") == "Namespaced":
        p.check(bool(cr["metadata"].get("namespace")), f"{where}: a namespaced resource needs metadata.namespace")
    schema = versions.get(ver, {}).get("schema", {}).get("openAPIV3Schema")
    if not schema:
        p.add(f"{where}: the CRD has no openAPIV3Schema for {ver}")
        return
    js = openapi_to_jsonschema(schema)
    js.setdefault("properties", {})
    # The API server checks metadata itself; the CRD schema may leave it open.
    js["properties"]["metadata"] = {"type": "object"}
    js["properties"].setdefault("apiVersion", {"type": "string"})
    js["properties"].setdefault("kind", {"type": "string"})
    validator = jsonschema.Draft7Validator(js)
    for err in sorted(validator.iter_errors(cr), key=lambda e: list(e.path)):
        path = ".".join(str(x) for x in err.path) or "(root)"
        p.add(f"{where}: {path}: {err.message}")


def crd_or_skip() -> dict[str, Any]:
    crd = load_crd()
    if crd is None:
        raise Skip(f"{rel(CRD_FILE)} does not exist yet (the operator generates it); "
                   "the DotProxyConfig is not checked against it")
    return crd


def step_crd() -> str:
    crd = crd_or_skip()
    p = Problems()
    validate_k8s(crd, rel(CRD_FILE), p)
    spec = crd["spec"]
    p.check(spec.get("group") == "dns.dot-proxy.io" and spec["names"].get("kind") == "DotProxyConfig",
            "the CRD must define dns.dot-proxy.io DotProxyConfig")
    p.check(spec["names"].get("plural") == "dotproxyconfigs", "the Role grants dotproxyconfigs; the CRD's plural differs")
    p.check(spec.get("scope") == "Namespaced", "the operator's RBAC is a Role in the release namespace; the CRD must be Namespaced")
    n = 0
    for name, (docs, _) in rendered.items():
        for cr in find(docs, "DotProxyConfig"):
            validate_cr(crd, cr, f"{name}: DotProxyConfig/{cr['metadata']['name']}", p)
            n += 1
    example = ROOT / "operator" / "examples" / "dotproxyconfig.yaml"
    if example.exists():
        for doc in yaml.safe_load_all(example.read_text()):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                validate_cr(crd, doc, rel(example), p)
                n += 1
    p.raise_if_any()
    return f"{n} DotProxyConfig objects valid against the CRD's openAPIV3Schema"


def objects_in(files: list[Path]):
    """Every (file, object) of a list of multi-document YAML files, empty documents skipped."""
    for f in files:
        for obj in yaml.safe_load_all(f.read_text()):
            if obj:
                yield f, obj


def step_manifests() -> str:
    p = Problems()
    files = sorted(MANIFESTS.glob("*.yaml"))
    assert files, "manifests/ is empty; run tests/k8s/render.py"
    crd = load_crd()
    n = 0
    for f, obj in objects_in(files):
        n += 1
        validate_k8s(obj, rel(f), p)
        if obj["kind"] == "DotProxyConfig" and crd is not None:
            validate_cr(crd, obj, rel(f), p)
    p.raise_if_any()
    note = "" if crd is not None else f" (no CRD yet: {rel(CRD_FILE)} is missing, so no 00-crd.yaml and no CR check)"
    return f"{n} objects in {len(files)} files valid{note}"


# ------------------------------------------------------------------------ examples

EXAMPLES = ROOT / "deploy" / "examples"
CONFIG_RS = ROOT / "proxy" / "config" / "src" / "lib.rs"


def proxy_config_fields() -> set[str]:
    """Every field name of the proxy's config structs (serde keeps Rust's snake_case), in
    lib.rs and the section files beside it."""
    return {
        name
        for f in CONFIG_RS.parent.glob("*.rs")
        for name in re.findall(r"(?m)^\s*pub (\w+): ", f.read_text())
    }


def config_keys(node: Any, path: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(f"{path}{k}")
            out.extend(config_keys(v, f"{path}{k}."))
    elif isinstance(node, list):
        for v in node:
            out.extend(config_keys(v, path))
    return out


def step_examples() -> str:
    import kubernetes_validate as kv

    p = Problems()
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files, f"no examples in {rel(EXAMPLES)}"
    # The schema lives in the dot-proxy-config crate; a missing file is a broken check, not
    # a skipped one.
    assert CONFIG_RS.exists(), f"{rel(CONFIG_RS)} is missing: point CONFIG_RS at the config schema"
    fields = proxy_config_fields()
    n = 0
    for f, obj in objects_in(files):
        n += 1
        where = f"{rel(f)}: {obj['kind']}/{obj['metadata']['name']}"
        # The newest schemas must accept it; the oldest supported ones too when they
        # know the kind (MutatingAdmissionPolicy is GA only from 1.36).
        for version in (K8S_VERSIONS[-1], K8S_VERSIONS[0]):
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                p.add(f"{where} (k8s {version}): {'.'.join(str(x) for x in e.path)}: {e.message}")
            except kv.SchemaNotFoundError as e:
                if version == K8S_VERSIONS[-1]:
                    p.add(f"{where}: {e.message}")
        # A proxy config embedded in a ConfigMap: every key must be a config field.
        if obj["kind"] == "ConfigMap" and "config.yaml" in obj.get("data", {}):
            cfg = yaml.safe_load(obj["data"]["config.yaml"])
            for key in config_keys(cfg):
                p.check(key.rsplit(".", 1)[-1] in fields, f"{where}: config.yaml key {key} is not a proxy config field")
    p.raise_if_any()
    return f"{n} objects in {len(files)} example files valid (strict); embedded proxy configs use known fields"


# ------------------------------------------------------------------------- checkov

def skips_of(obj: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, val in (obj.get("metadata", {}).get("annotations") or {}).items():
        if k.startswith("checkov.io/skip"):
            cid, _, reason = val.partition("=")
            out[cid] = reason
    return out


def run_checkov(directory: Path) -> list[dict[str, Any]]:
    exe = shutil.which("checkov")
    assert exe, "checkov is not installed"
    proc = subprocess.run([exe, "-d", str(directory), "--framework", "kubernetes", "--skip-download",
                           "-o", "json"], capture_output=True, text=True,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    # checkov exits 1 when a check fails; anything else with no JSON is a crash.
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"checkov did not produce JSON (exit {proc.returncode}): {proc.stderr[-2000:]}")
    reports = data if isinstance(data, list) else [data]
    out = []
    for r in reports:
        res = r.get("results", {}) if isinstance(r, dict) else {}
        for status in ("failed_checks", "skipped_checks", "passed_checks"):
            for c in res.get(status, []):
                out.append({"status": status, "id": c["check_id"], "file": c["file_path"], "name": c["check_name"],
                            "resource": c["resource"], "reason": (c.get("check_result") or {}).get("suppress_comment", "")})
    return out


def step_checkov() -> str:
    p = Problems()
    with tempfile.TemporaryDirectory(prefix="dot-proxy-checkov-") as tmp:
        as_is, stripped = Path(tmp, "as-is"), Path(tmp, "stripped")
        skips: dict[str, dict[str, str]] = {}
        for name, (docs, _) in rendered.items():
            for i, d in enumerate(docs):
                fname = f"/{name}/{i:02d}-{d.kind}-{d.name}.yaml".lower()
                skips[fname] = skips_of(d.obj)
                for base, obj in ((as_is, d.obj), (stripped, strip_checkov(d.obj))):
                    path = base / fname.lstrip("/")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(yaml.safe_dump(obj, sort_keys=False))
        # 1. With the skip annotations, nothing may fail.
        found = run_checkov(as_is)
        failed = [c for c in found if c["status"] == "failed_checks"]
        for c in failed:
            p.add(f"checkov {c['id']} ({c['name']}) fails for {c['resource']} in {c['file']}: "
                  "fix it or add a skip with its reason to values.yaml")
        passed = sum(1 for c in found if c["status"] == "passed_checks")
        skipped = [c for c in found if c["status"] == "skipped_checks"]
        # 2. Without them, each skip must match a real finding, or it is stale.
        bare = run_checkov(stripped)
        findings: dict[str, set[str]] = {}
        for c in bare:
            if c["status"] == "failed_checks":
                findings.setdefault(c["file"], set()).add(c["id"])
        for fname, s in skips.items():
            stale = set(s) - findings.get(fname, set())
            for cid in sorted(stale):
                p.add(f"skip {cid} on {fname.split('/', 2)[2]} ({fname.split('/')[1]}) matches no checkov finding: remove it from values.yaml")
    p.raise_if_any()
    used = sorted({f"{c['id']} ({c['reason']})" for c in skipped})
    return f"{passed} checks passed, 0 failed, {len(skipped)} skipped with reasons: " + "; ".join(used)


def strip_checkov(obj: dict[str, Any]) -> dict[str, Any]:
    o = copy.deepcopy(obj)
    ann = o.get("metadata", {}).get("annotations")
    if ann:
        for k in [k for k in ann if k.startswith("checkov.io/skip")]:
            del ann[k]
        if not ann:
            del o["metadata"]["annotations"]
    return o


# ----------------------------------------------------------------- metrics & dashboard

def known_metrics() -> set[str]:
    """Metric names the proxy exports: the table of docs/observability.md ("Proxy
    metrics"), which tests/docs/check.py compares both ways, names and types, with a running
    proxy's /metrics (every part registers its own metrics beside its code, so no one source
    file lists them all). Histograms get _bucket/_sum/_count."""
    doc = OBSERVABILITY_MD.read_text()
    names = set()
    for row in re.finditer(r"(?m)^\| ((?:`dot_proxy_[a-z0-9_]+`(?:, )?)+) \| (counter|gauge|histogram) \|", doc):
        for n in re.findall(r"`(dot_proxy_[a-z0-9_]+)`", row.group(1)):
            if row.group(2) == "histogram":
                names.update({n + "_bucket", n + "_sum", n + "_count"})
            names.add(n)
    assert len(names) >= 40, f"only {len(names)} metric names in {rel(OBSERVABILITY_MD)}'s table: has its form changed?"
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD_FILE.read_text())
    out = []
    for pnl in d["panels"]:
        for t in pnl.get("targets", []):
            out.append((pnl["title"], t["expr"]))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES_FILE.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def step_metrics() -> str:
    # A moved file must break this check, not skip it.
    assert OBSERVABILITY_MD.exists(), f"{rel(OBSERVABILITY_MD)} is missing"
    names = known_metrics()
    p = Problems()
    used = set()
    for where, expr in rule_exprs() + dashboard_exprs():
        for n in re.findall(r"\bdot_proxy_[a-z0-9_]+", expr):
            used.add(n)
            p.check(n in names, f"{where}: {n} is not exported by the proxy (docs/observability.md, checked against /metrics)")
    p.raise_if_any()
    return f"{len(used)} metric names used by rules and dashboard, all among the {len(names)} the proxy exports"


EXPECTED_PANELS = {
    "query rate": [r"rate\(dot_proxy_queries_total"],
    "latency percentiles": [r"histogram_quantile\(0\.5,.*dot_proxy_query_duration_seconds_bucket",
                            r"histogram_quantile\(0\.9,.*dot_proxy_query_duration_seconds_bucket",
                            r"histogram_quantile\(0\.99,.*dot_proxy_query_duration_seconds_bucket"],
    "cache hit ratio": [r"dot_proxy_cache_hits_total.*/.*dot_proxy_cache_misses_total"],
    "upstream health": [r"dot_proxy_upstream_healthy", r"dot_proxy_group_healthy_upstreams"],
    "rate limiting": [r"rate\(dot_proxy_rate_limited_total", r"dot_proxy_rate_limit_top_client_qps",
                      r"dot_proxy_rate_limit_configured_qps"],
}


def step_dashboard() -> str:
    p = Problems()
    d = json.loads(DASHBOARD_FILE.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        p.check(key in d, f"dashboard has no {key}")
    ids = [pnl.get("id") for pnl in d.get("panels", [])]
    p.check(len(ids) == len(set(ids)) and None not in ids, "panel ids must be present and unique")
    for pnl in d.get("panels", []):
        gp = pnl.get("gridPos", {})
        p.check(all(k in gp for k in "hwxy") and gp.get("x", 0) + gp.get("w", 0) <= 24, f"panel {pnl.get('title')}: bad gridPos {gp}")
        if pnl.get("type") != "row":
            p.check(bool(pnl.get("targets")), f"panel {pnl.get('title')} has no query")
    exprs = [e for _, e in dashboard_exprs()]
    for what, patterns in EXPECTED_PANELS.items():
        for pat in patterns:
            p.check(any(re.search(pat, e) for e in exprs), f"no panel query for {what} (/{pat}/)")
    # Every query must parse: promtool checks them as recording rules, with Grafana's
    # variables replaced by values.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        rules = []
        for i, (title, e) in enumerate(dashboard_exprs()):
            q = e.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$instance", ".*")
            rules.append({"record": f"dashboard:panel_{i}", "expr": q})
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        tmp = f.name
    try:
        proc = subprocess.run(["promtool", "check", "rules", tmp], capture_output=True, text=True)
        p.check(proc.returncode == 0, "promtool rejects a panel query:\n" + proc.stdout + proc.stderr)
    finally:
        os.unlink(tmp)
    p.raise_if_any()
    return f"{len(d['panels'])} panels, {len(exprs)} queries, all parse; expected panels present"


def step_rules() -> str:
    out = []
    for f in (RULES_FILE, RULES_COPY):
        proc = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True)
        assert proc.returncode == 0, f"promtool check rules {rel(f)}:\n{proc.stdout}{proc.stderr}"
    test = ROOT / "tests" / "prometheus" / "rules_test.yaml"
    proc = subprocess.run(["promtool", "test", "rules", str(test)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"promtool test rules:\n{proc.stdout}{proc.stderr}"
    alerts = {a for a, _ in rule_exprs()}
    tested = set(re.findall(r"alertname: (\w+)", test.read_text()))
    assert alerts <= tested, f"alerts without a unit test: {sorted(alerts - tested)}"
    out.append(f"{len(alerts)} alerts, each unit-tested")
    return "promtool check rules passes for both copies; promtool test rules passes; " + ", ".join(out)


# --------------------------------------------------------------------------- main

def main() -> int:
    import helm_python as helm

    print(f"validate: Helm SDK {helm.helm_sdk_version()} (helm-c {helm.helm_c_version()}), "
          f"Kubernetes schemas {', '.join(K8S_VERSIONS)}", flush=True)
    run_step("derived", step_derived)
    run_step("values", step_values)
    run_step("lint", step_lint)
    run_step("render", step_render)
    if rendered:
        run_step("k8s-schema", step_k8s_schema)
        run_step("invariants", step_invariants)
        run_step("crd", step_crd)
        run_step("checkov", step_checkov)
    run_step("manifests", step_manifests)
    run_step("examples", step_examples)
    run_step("metrics", step_metrics)
    run_step("dashboard", step_dashboard)
    run_step("rules", step_rules)

    passed = sum(1 for _, s, _ in results if s == "PASS")
    failed = sum(1 for _, s, _ in results if s == "FAIL")
    skipped = sum(1 for _, s, _ in results if s == "SKIP")
    print(f"validate: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
