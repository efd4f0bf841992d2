#!/usr/bin/env python3
"""Checks that the docs say what the code does. Run through tests/docs/check.sh (`make
docs-check`), which finds the binaries; needs only python3 and PyYAML. Exits 1 on any
disagreement, each printed as `FILE:LINE: what the doc says, what the code does`.

Checks:
  yaml        every ```yaml block of README.md and docs/*.md:
                - a proxy config: `dot-proxy check-config` accepts it;
                - a Kubernetes object (apiVersion and kind): a DotProxyConfig renders with
                  `dot-proxy-operator render`, and when the text just before the block says
                  "This is `PATH`", it equals that file (parsed, compared as data);
                - marked as a fragment (below): it only has to parse as YAML.
  metrics     the table of docs/observability.md ("Proxy metrics") against a live proxy's
              /metrics, both ways: names and types. The proxy runs with a config that turns
              on every optional part (dnstap to a socket nobody listens on, policy, rate
              limiting, the pod watch and search completion against a closed local port).
              The same for docs/operator.md's table and `dot-proxy-operator run` (no leader
              election, the API server a closed local port). Both must then exit 0 on
              SIGTERM, as README.md and docs/operator.md say.
  flags       README.md's flag table against `dot-proxy --help`, and docs/operator.md's
              against `dot-proxy-operator run --help`: the same flags, environment
              variables and (where the table has them) defaults.
  alerts      the alert table of docs/observability.md against the rules file
              (charts/dot-proxy/files/dot-proxy-rules.yaml): names, `for` and severity.
  rbac        the RBAC table of docs/operator.md (after `<!-- rbac-table -->`) against the
              Roles and ClusterRoles of manifests/ (the chart rendered with default values;
              tests/k8s/validate.py checks manifests/ against the chart, and this table
              against every chart variant, the proxy's search-completion role included).
  sizes       docs/operator.md's `config.yaml` size for the example resource against
              `dot-proxy-operator render`.
  exits       README.md's exit codes: a bad config or flag, a listener already bound,
              check-config of a bad config.

Markers (an HTML comment on the line just before a ```yaml fence):
  <!-- fragment -->           not a whole proxy config or Kubernetes object (a section of
  <!-- fragment: REASON -->   one, a pod spec excerpt, a Prometheus config): parsed only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
OBSERVABILITY = ROOT / "docs" / "observability.md"
OPERATOR_DOC = ROOT / "docs" / "operator.md"
RULES_FILE = ROOT / "charts" / "dot-proxy" / "files" / "dot-proxy-rules.yaml"
MANIFESTS = ROOT / "manifests"
EXAMPLE_RESOURCE = ROOT / "operator" / "examples" / "dotproxyconfig.yaml"

FRAGMENT = re.compile(r"^\s*<!--\s*fragment(:.*)?\s*-->\s*$")
RBAC_MARKER = "<!-- rbac-table"

# Documented metrics that /metrics may lack at start: a labelled family with no series has
# no HELP/TYPE lines either, and these get their first series only from traffic the check
# cannot make. Each is still type-checked when it is exported.
METRICS_ABSENT_UNTIL_SEEN = {
    "dot_proxy_search_completions_total":
        "a series per `result` appears with the first completion, which needs pods from an API server",
}

OPERATOR_METRICS_ABSENT_UNTIL_SEEN = {
    "dot_proxy_operator_reconciles_total": "a series per `result` appears with the first reconcile, which needs an API server",
    "dot_proxy_operator_writes_total": "a series per `kind` appears with the first write, which needs an API server",
}

# Flags of `dot-proxy --help` that the README's table leaves out on purpose.
HELP_ONLY_FLAGS = {"--help", "--version"}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: Path, line: int | None, msg: str) -> None:
        where = os.path.relpath(path, ROOT) + (f":{line}" if line else "")
        self.items.append(f"{where}: {msg}")


def rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


# ------------------------------------------------------------------ markdown helpers

@dataclass
class Block:
    path: Path
    line: int          # line of the opening fence, 1-based
    lang: str
    text: str
    marker: str        # the line just before the fence
    before: str        # a few lines of prose before the fence


def code_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        marker = lines[start - 1] if start > 0 else ""
        yield Block(path, start + 1, m.group(1), "\n".join(lines[start + 1:j]) + "\n", marker,
                    "\n".join(lines[max(0, start - 6):start]))
        i = j + 1


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def tables(path: Path, after: str | None = None) -> Iterator[tuple[int, list[str], list[tuple[int, list[str]]]]]:
    """Markdown tables (header, rows with line numbers), optionally only after a line that
    contains `after`. Pipes inside backticks are escaped as \\| in the docs."""
    lines = path.read_text().replace("\\|", "\u2502").splitlines()
    start = 0
    if after is not None:
        start = next((n for n, l in enumerate(lines) if after in l), len(lines))
    n = start
    while n < len(lines):
        if lines[n].startswith("|") and n + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[n + 1]):
            header = cells(lines[n])
            rows = []
            k = n + 2
            while k < len(lines) and lines[k].startswith("|"):
                rows.append((k + 1, cells(lines[k])))
                k += 1
            yield n + 1, header, rows
            n = k
        else:
            n += 1


def ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


# ------------------------------------------------------------------ a: YAML blocks

def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def check_yaml_blocks(p: Problems, proxy: str, operator: str, tmp: Path) -> str:
    checked = {"proxy config": 0, "DotProxyConfig": 0, "fragment": 0, "other Kubernetes object": 0}
    pods = tmp / "pods.json"
    pods.write_text('{"items": []}')
    for path in [README, *DOCS]:
        for b in code_blocks(path):
            if b.lang != "yaml":
                continue
            try:
                objs = [o for o in yaml.safe_load_all(b.text) if o is not None]
            except yaml.YAMLError as e:
                p.add(path, b.line, f"```yaml block does not parse: {str(e).splitlines()[0]}")
                continue
            if FRAGMENT.match(b.marker):
                checked["fragment"] += 1
                continue
            f = tmp / f"block-{path.stem}-{b.line}.yaml"
            f.write_text(b.text)
            k8s = [o for o in objs if isinstance(o, dict) and "apiVersion" in o and "kind" in o]
            if k8s:
                for o in k8s:
                    if o["kind"] != "DotProxyConfig":
                        checked["other Kubernetes object"] += 1
                        continue
                    checked["DotProxyConfig"] += 1
                    r = run([operator, "render", "--resource", str(f), "--pods", str(pods)])
                    if r.returncode != 0:
                        p.add(path, b.line, f"DotProxyConfig block does not render (dot-proxy-operator render, exit {r.returncode}): {r.stderr.strip()[:400]}")
                m = re.search(r"This is `([^`]+)`", b.before)
                if m:
                    shipped = ROOT / m.group(1)
                    if not shipped.exists():
                        p.add(path, b.line, f"the text says the block is `{m.group(1)}`, which does not exist")
                    else:
                        want = [o for o in yaml.safe_load_all(shipped.read_text()) if o is not None]
                        if want != objs:
                            p.add(path, b.line, f"the block differs from `{m.group(1)}`, which the text says it is: {first_difference(objs, want)}")
                continue
            checked["proxy config"] += 1
            # As the chart runs the proxy: the node name from the environment.
            r = run([proxy, "check-config", str(f)], env={**os.environ, "DOT_PROXY_NODE_NAME": "docs-check-node"})
            if r.returncode != 0:
                msg = (r.stderr.strip() or r.stdout.strip()).replace(str(f), "<block>")
                p.add(path, b.line, f"proxy config block refused by `DOT_PROXY_NODE_NAME=docs-check-node dot-proxy check-config` (exit {r.returncode}): {msg[:400]} "
                      "(mark it with <!-- fragment --> on the line before the fence if it is not a whole config)")
    return ", ".join(f"{v} {k}" for k, v in checked.items())


def first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                return f"{path}.{k} missing in the doc"
            if k not in b:
                return f"{path}.{k} only in the doc"
            if a[k] != b[k]:
                return first_difference(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path or '.'}: {len(a)} items in the doc, {len(b)} in the file"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return f"{path or '.'}: doc has {a!r}, file has {b!r}"


# ------------------------------------------------------------------ b: metrics

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_config(tmp: Path, dns_port: int, admin_port: int) -> Path:
    """A config that turns on every optional part whose metrics exist only when it is on."""
    closed = free_port()
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{closed}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {}}],
    }))
    cfg = {
        "listen": [f"127.0.0.1:{dns_port}"],
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "upstream_groups": [
            {"name": "default", "servers": [{"address": "127.0.0.1:1", "tls_name": "x.test"}]},
            {"name": "plain", "servers": [{"address": "127.0.0.1:2", "protocol": "plain"}]},
        ],
        "zones": [{"zone": ".", "group": "default"}, {"zone": "cluster.local", "group": "plain"}],
        "rate_limit": {"enabled": True},
        "policy": {"static_answers": [{"name": "a.example", "a": ["10.0.0.1"]}],
                   "blocklists": [{"name": "b", "names": ["blocked.example"]}],
                   "rewrites": [{"from": "old.example", "to": "new.example"}]},
        "dnstap": {"enabled": True, "socket": str(tmp / "dnstap.sock")},
        "kubernetes": {"enabled": True, "node_name": "node-1", "kubeconfig": str(kubeconfig)},
        "search_completion": {"enabled": True},
        "filter_aaaa": {"zones": ["."]},
    }
    f = tmp / "metrics-config.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


# How long a process may take to exit after SIGTERM, here with nothing in flight (the proxy's
# shutdown_grace is 5 s at most with queries in flight).
STOP_WITHIN = 8.0


@dataclass
class Scraped:
    types: dict[str, str]
    exit_after_sigterm: int | None     # None: still running STOP_WITHIN s after SIGTERM


def scrape(cmd: list[str], admin_port: int, tmp: Path, env: dict[str, str] | None = None) -> Scraped:
    """Starts `cmd`, returns {family: type} from its /metrics once it answers, then sends
    SIGTERM and records how it exited."""
    log = open(tmp / f"{Path(cmd[0]).name}.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 20
        body = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        if body is None:
            log.seek(0)
            raise RuntimeError(f"no /metrics from {Path(cmd[0]).name} (exit {proc.poll()}): {log.read()[-800:]}")
        types = {}
        for line in body.splitlines():
            m = re.match(r"^# TYPE (\S+) (\S+)$", line)
            if m:
                types[m.group(1)] = m.group(2)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code: int | None = proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            code = None
        return Scraped(types, code)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def scrape_proxy(proxy: str, tmp: Path) -> Scraped:
    dns_port, admin_port = free_port(), free_port()
    cfg = metrics_config(tmp, dns_port, admin_port)
    check = run([proxy, "check-config", str(cfg)])
    if check.returncode != 0:
        raise RuntimeError(f"the metrics config is refused: {check.stderr.strip()}")
    return scrape([proxy, "--config", str(cfg), "--log-level", "warn"], admin_port, tmp)


def scrape_operator(operator: str, tmp: Path) -> Scraped:
    """The operator without leader election, against a kubeconfig whose API server is a
    closed local port: it serves /metrics while its watches retry."""
    admin_port = free_port()
    metrics_config(tmp, free_port(), free_port())   # writes tmp/kubeconfig
    return scrape([operator, "run", "--leader-election", "false", "--namespace", "docs-check",
                   "--metrics-addr", f"127.0.0.1:{admin_port}"], admin_port, tmp,
                  env={"KUBECONFIG": str(tmp / "kubeconfig")})


def exported_name(family: str, kind: str) -> str:
    """The name the docs use: a counter's samples end in _total (OpenMetrics names the
    family without it, the Prometheus text format with it)."""
    return family + "_total" if kind == "counter" and not family.endswith("_total") else family


def documented_metrics(p: Problems, doc: Path, after: str) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for _, header, rows in tables(doc, after=after):
        if header[:2] != ["metric", "type"]:
            continue
        for line, row in rows:
            kind = row[1].strip()
            for name in ticks(row[0]):
                if name in out:
                    p.add(doc, line, f"metric {name} is listed twice")
                out[name] = (kind, line)
        break
    else:
        p.add(doc, None, f"no `| metric | type |` table after `{after}`")
    return out


def compare_metrics(p: Problems, doc_path: Path, after: str, scraper: Any, absent_ok: dict[str, str],
                    sigterm_claim: tuple[Path, str]) -> str:
    doc = documented_metrics(p, doc_path, after)
    try:
        scraped = scraper()
    except RuntimeError as e:
        p.add(doc_path, None, f"cannot compare the metrics table: {e}")
        return "not compared"
    # The docs say SIGTERM stops the process, exit status 0.
    claim_doc, claim = sigterm_claim
    text = claim_doc.read_text()
    claim_line = text[:text.index(claim)].count("\n") + 1 if claim in text else None
    if scraped.exit_after_sigterm is None:
        p.add(claim_doc, claim_line, f"\"{claim}\": it was still running {STOP_WITHIN:.0f} s after SIGTERM (idle; started by the metrics check)")
    elif scraped.exit_after_sigterm != 0:
        p.add(claim_doc, claim_line, f"\"{claim}\": it exited {scraped.exit_after_sigterm} after SIGTERM, not 0")
    families = scraped.types
    exported = {exported_name(f, k): k for f, k in families.items()}
    for name, (kind, line) in sorted(doc.items()):
        if name not in exported:
            if name not in absent_ok:
                p.add(doc_path, line, f"metric {name} is documented but /metrics does not export it")
        elif kind != exported[name]:
            p.add(doc_path, line, f"metric {name} is documented as {kind or '(no type)'!s}, exported as {exported[name]}")
    for name in absent_ok:
        if name not in doc:
            p.add(doc_path, None, f"metric {name} is a listed exception in tests/docs/check.py but not in the table")
    for name, kind in sorted(exported.items()):
        if name not in doc:
            p.add(doc_path, None, f"metric {name} ({kind}) is exported by /metrics but not in the table")
    return f"{len(doc)} documented, {len(exported)} exported"


def check_metrics(p: Problems, proxy: str, operator: str, tmp: Path) -> str:
    a = compare_metrics(p, OBSERVABILITY, "## Proxy metrics", lambda: scrape_proxy(proxy, tmp), METRICS_ABSENT_UNTIL_SEEN,
                        (README, "On SIGTERM the proxy stops accepting"))
    b = compare_metrics(p, OPERATOR_DOC, "### Health and metrics", lambda: scrape_operator(operator, tmp),
                        OPERATOR_METRICS_ABSENT_UNTIL_SEEN, (OPERATOR_DOC, "On SIGTERM the leader stops"))
    return f"proxy: {a}; operator: {b}"


# ------------------------------------------------------------------ c: flags

def help_flags(cmd: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """--flag -> (environment variable, default) from a clap `--help`."""
    out = run(cmd).stdout
    flags: dict[str, tuple[str | None, str | None]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^\s+(?:-\w, )?(--[\w-]+)", line)
        if m:
            current = m.group(1)
            flags[current] = (None, None)
        if current:
            env, default = flags[current]
            e = re.search(r"\[env: (\w+)=", line)
            d = re.search(r"\[default: ([^\]]*)\]", line)
            flags[current] = (e.group(1) if e else env, d.group(1) if d else default)
    return flags


def check_flag_table(p: Problems, doc: Path, cmd: list[str], after: str | None) -> int:
    """The first `| flag | environment | ...` table (after `after`) against `cmd --help`:
    the same flags, environment variables, and defaults where the table has a default
    column and --help states one."""
    shown = "`" + " ".join([Path(cmd[0]).name, *cmd[1:-1]])
    helped = help_flags(cmd)
    documented: dict[str, tuple[str | None, str | None, int]] = {}
    for _, header, rows in tables(doc, after=after):
        if header[:2] != ["flag", "environment"]:
            continue
        dcol = header.index("default") if "default" in header else None
        for line, row in rows:
            m = re.search(r"(--[\w-]+)", row[0])
            if not m:
                p.add(doc, line, f"flag table row without a --flag: {row[0]}")
                continue
            env = ticks(row[1])
            default = ticks(row[dcol]) if dcol is not None else []
            documented[m.group(1)] = (env[0] if env else None, default[0] if default else None, line)
        break
    else:
        p.add(doc, None, "no `| flag | environment |` table")
    for flag, (env, default, line) in documented.items():
        if flag not in helped:
            p.add(doc, line, f"flag {flag} is in the table but not in {shown} --help`")
            continue
        henv, hdefault = helped[flag]
        if env != henv:
            p.add(doc, line, f"flag {flag}: the table says environment {env}, {shown} --help` says {henv}")
        if hdefault is not None and default is not None and default != hdefault:
            p.add(doc, line, f"flag {flag}: the table says default {default}, {shown} --help` says {hdefault}")
    for flag, (env, _) in helped.items():
        if flag not in documented and flag not in HELP_ONLY_FLAGS:
            p.add(doc, None, f"flag {flag} (env {env}) is in {shown} --help` but not in the flag table")
    return len(documented)


def check_flags(p: Problems, proxy: str, operator: str) -> str:
    n = check_flag_table(p, README, [proxy, "--help"], None)
    m = check_flag_table(p, OPERATOR_DOC, [operator, "run", "--help"], "## Running it")
    return f"{n} proxy flags (README.md), {m} operator flags (docs/operator.md)"


# ------------------------------------------------------------------ d: alerts

def check_alerts(p: Problems) -> str:
    rules = {}
    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        for r in group["rules"]:
            if "alert" in r:
                rules[r["alert"]] = r
    documented = {}
    for _, header, rows in tables(OBSERVABILITY, after="## Alert rules"):
        if header[0] != "alert":
            continue
        col = {h: i for i, h in enumerate(header)}
        for line, row in rows:
            name = ticks(row[0])[0] if ticks(row[0]) else row[0]
            documented[name] = line
            r = rules.get(name)
            if r is None:
                p.add(OBSERVABILITY, line, f"alert {name} is documented but not in {rel(RULES_FILE)}")
                continue
            if "for" in col and row[col["for"]] != str(r.get("for", "")):
                p.add(OBSERVABILITY, line, f"alert {name}: documented `for` {row[col['for']]}, the rule has {r.get('for')}")
            sev = r.get("labels", {}).get("severity")
            if "severity" in col and row[col["severity"]] != sev:
                p.add(OBSERVABILITY, line, f"alert {name}: documented severity {row[col['severity']]}, the rule has {sev}")
        break
    else:
        p.add(OBSERVABILITY, None, "no `| alert |` table after `## Alert rules`")
    for name in sorted(set(rules) - set(documented)):
        p.add(OBSERVABILITY, None, f"alert {name} is in {rel(RULES_FILE)} but not in the alert table")
    return f"{len(documented)} alerts"


# ------------------------------------------------------------------ e: RBAC

def names_cell(resource_names: list[str] | None) -> str:
    """How the RBAC table writes a rule's resourceNames."""
    if not resource_names:
        return "any"
    if len(resource_names) > 3:
        return f"`{resource_names[0]}`, `{resource_names[1]}` … `{resource_names[-1]}`"
    return ", ".join(f"`{n}`" for n in resource_names)


Grant = tuple[str, str, str, str, str]   # subject, kind, group, resource, names


def doc_rbac(p: Problems | None = None) -> dict[Grant, tuple[set[str], int]]:
    """The RBAC table of docs/operator.md: grant -> (verbs, line)."""
    out: dict[Grant, tuple[set[str], int]] = {}
    for _, header, rows in tables(OPERATOR_DOC, after=RBAC_MARKER):
        col = {h: i for i, h in enumerate(header)}
        for line, row in rows:
            group = ticks(row[col["API group"]])
            group_name = (group[0] if group else row[col["API group"]]).strip('"')   # `""`: the core group
            key = (row[col["subject"]], row[col["kind"]], group_name,
                   ticks(row[col["resource"]])[0], row[col["names"]])
            if key in out and p is not None:
                p.add(OPERATOR_DOC, line, f"RBAC row {key} appears twice")
            out[key] = (set(ticks(row[col["verbs"]])), line)
        break
    else:
        if p is not None:
            p.add(OPERATOR_DOC, None, f"no table after {RBAC_MARKER} -->")
    return out


def rendered_rbac(objects: list[dict[str, Any]]) -> dict[Grant, set[str]]:
    """Grants of rendered Roles and ClusterRoles, keyed as the doc's table is. The subject is
    the object's app.kubernetes.io/component label."""
    out: dict[Grant, set[str]] = {}
    for o in objects:
        if not o or o.get("kind") not in ("Role", "ClusterRole"):
            continue
        subject = o.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component", "?")
        for r in o.get("rules", []):
            for g in r.get("apiGroups", []):
                for res in r.get("resources", []):
                    key = (subject, o["kind"], g, res, names_cell(r.get("resourceNames")))
                    out.setdefault(key, set()).update(r.get("verbs", []))
    return out


def compare_rbac(doc: dict[Grant, tuple[set[str], int]], rendered: dict[Grant, set[str]],
                 subjects: set[str], where: str) -> list[tuple[int | None, str]]:
    """Disagreements between the doc's rows for `subjects` and what is rendered."""
    out: list[tuple[int | None, str]] = []
    doc = {k: v for k, v in doc.items() if k[0] in subjects}
    for key, (verbs, line) in sorted(doc.items()):
        got = rendered.get(key)
        if got is None:
            out.append((line, f"RBAC row {fmt_grant(key)} is not granted by {where}"))
        elif got != verbs:
            out.append((line, f"RBAC row {fmt_grant(key)}: the doc says {sorted(verbs)}, {where} grants {sorted(got)}"))
    for key, verbs in sorted(rendered.items()):
        if key[0] in subjects and key not in doc:
            out.append((None, f"{where} grants {fmt_grant(key)} {sorted(verbs)}, which the RBAC table does not list"))
    return out


def fmt_grant(k: Grant) -> str:
    subject, kind, group, res, names = k
    return f"{subject} {kind} {group or 'core'}/{res} (names: {names})"


def check_rbac(p: Problems) -> str:
    objects = []
    for f in sorted(MANIFESTS.glob("*.yaml")):
        objects += [o for o in yaml.safe_load_all(f.read_text()) if o]
    doc = doc_rbac(p)
    rendered = rendered_rbac(objects)
    # manifests/ is the default render: search completion (the proxy's role) is off there;
    # tests/k8s/validate.py compares the proxy's rows with the search-completion variant.
    for line, msg in compare_rbac(doc, rendered, {"operator"}, "manifests/ (the chart's default render)"):
        p.add(OPERATOR_DOC, line, msg)
    return f"{len(doc)} rows"


# ------------------------------------------------------------------ f: sizes

def check_sizes(p: Problems, operator: str) -> str:
    text = OPERATOR_DOC.read_text()
    m = re.search(r"^\| `config\.yaml` \| ([\d,]+) bytes", text, re.M)
    if not m:
        p.add(OPERATOR_DOC, None, "no `| config.yaml | N bytes` row in the scale figures")
        return "not compared"
    line = text[:m.start()].count("\n") + 1
    r = run([operator, "render", "--resource", str(EXAMPLE_RESOURCE)])
    if r.returncode != 0:
        p.add(OPERATOR_DOC, line, f"cannot render {rel(EXAMPLE_RESOURCE)}: {r.stderr.strip()[:300]}")
        return "not compared"
    sizes = [len(d["data"]["config.yaml"].encode()) for d in yaml.safe_load_all(r.stdout)
             if d and "config.yaml" in d.get("data", {})]
    documented = int(m.group(1).replace(",", ""))
    if sizes != [documented]:
        p.add(OPERATOR_DOC, line, f"config.yaml of the example is documented as {documented} bytes; "
              f"`dot-proxy-operator render` writes {sizes[0] if sizes else 'none'}: write {sizes[0]:,}" if sizes else "")
    return f"config.yaml {documented} bytes"


# ------------------------------------------------------------------ g: exit codes

def check_exit_codes(p: Problems, proxy: str, tmp: Path) -> str:
    """README.md: "Exit codes: 0 after a clean shutdown (the metrics check), 64 for a bad
    config or flag at start, 71 when a listener cannot be bound"; check-config: 0 or 1."""
    text = README.read_text()
    m = re.search(r"Exit codes: 0 after a clean shutdown, (\d+) for a bad config or flag at start, (\d+) when a\s+listener cannot be bound", text)
    if not m:
        p.add(README, None, "the sentence \"Exit codes: 0 after a clean shutdown, N for a bad config or flag at start, N when a listener cannot be bound\" is gone; update tests/docs/check.py")
        return "not compared"
    line = text[:m.start()].count("\n") + 1
    bad_config, bind_failure = int(m.group(1)), int(m.group(2))
    bad = tmp / "bad-config.yaml"
    bad.write_text("listen: 5\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t.bind(("127.0.0.1", port))
        t.listen()
        cases = [
            ("a bad config", [proxy, "--config", str(bad)], bad_config),
            ("a bad flag", [proxy, "--listen", "not-an-address", "--admin-listen", "off"], bad_config),
            ("a listener that cannot be bound", [proxy, "--listen", f"127.0.0.1:{port}", "--upstream",
                                                 "tls://127.0.0.1:1#x.test", "--admin-listen", "off"], bind_failure),
            ("check-config of a bad config", [proxy, "check-config", str(bad)], 1),
        ]
        for what, cmd, want in cases:
            r = run(cmd)
            if r.returncode != want:
                p.add(README, line, f"exit code for {what}: documented {want}, `{' '.join([Path(cmd[0]).name, *cmd[1:]])}` exits {r.returncode}")
    return f"{len(cases)} cases"


# ------------------------------------------------------------------ main

def main() -> int:
    proxy = os.environ.get("DOT_PROXY_BIN", str(ROOT / "target" / "release" / "dot-proxy"))
    operator = os.environ.get("DOT_PROXY_OPERATOR_BIN", str(ROOT / "target" / "release" / "dot-proxy-operator"))
    for b in (proxy, operator):
        if not os.access(b, os.X_OK):
            print(f"docs-check: {b} is not an executable (set DOT_PROXY_BIN / DOT_PROXY_OPERATOR_BIN)", file=sys.stderr)
            return 2
    p = Problems()
    with tempfile.TemporaryDirectory(prefix="docs-check-") as t:
        tmp = Path(t)
        steps = [
            ("yaml", lambda: check_yaml_blocks(p, proxy, operator, tmp)),
            ("metrics", lambda: check_metrics(p, proxy, operator, tmp)),
            ("flags", lambda: check_flags(p, proxy, operator)),
            ("alerts", lambda: check_alerts(p)),
            ("rbac", lambda: check_rbac(p)),
            ("sizes", lambda: check_sizes(p, operator)),
            ("exits", lambda: check_exit_codes(p, proxy, tmp)),
        ]
        for name, fn in steps:
            before = len(p.items)
            summary = fn()
            status = "ok" if len(p.items) == before else f"{len(p.items) - before} disagreement(s)"
            print(f"docs-check: {name:8} {status} ({summary})")
    for item in p.items:
        print(f"  {item}")
    if p.items:
        print(f"docs-check: FAILED, {len(p.items)} disagreement(s) between the docs and the code")
        return 1
    print("docs-check: the docs agree with the code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
