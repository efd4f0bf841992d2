#!/usr/bin/env python3
"""A CycloneDX 1.5 SBOM (JSON) of one image: the Rust crates compiled into its binary and
the Debian packages of its root filesystem. Run by images/build.sh.

`cargo tree -e normal` lists the crates linked into the binary on this platform, with the
features of the real build (no dev-dependencies; proc-macros and build scripts, which run
only at build time, are left out); the Debian packages come from the image's
/var/lib/dpkg/status.d, one control file per package (images/rootfs.sh writes them, as
distroless images do, so scanners such as Trivy or Syft find the same list). The output
passes cyclonedx-python-lib's strict 1.5 JSON validator.

Why not `cargo cyclonedx` (0.5.9, tried): it has to be compiled on every fresh CI machine
(about 1.5 min here), it lists the proc-macros and what they depend on as well (295
components for dot-proxy, against the 251 crates linked in), and it knows nothing of the
Debian packages, which would still need merging in.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote


# The packages `make release` (and the Dockerfiles, and images/build.sh) builds together: cargo
# unifies their dependencies' features, so one binary can link crates that only the other's
# features pull in. The tree is asked for both at once, and the binary's own part is kept.
BUILT_TOGETHER = ["dot-proxy", "dot-proxy-operator"]


def crates(cargo: str, package: str) -> list[dict]:
    cmd = shlex.split(cargo) + ["tree", "--locked", "--no-dedupe", "-e", "normal", "--prefix", "depth",
                                "--format", "{p}|{l}"]
    for p in BUILT_TOGETHER:
        cmd += ["-p", p]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    seen: dict[tuple[str, str], dict] = {}
    root = None
    for line in out.splitlines():
        if not line.strip():
            continue
        depth_digits = len(line) - len(line.lstrip("0123456789"))
        depth, line = int(line[:depth_digits]), line[depth_digits:]
        if depth == 0:
            root = line.split()[0]
        if root != package:
            continue
        spec, _, lic = line.partition("|")
        spec = spec.replace(" (*)", "")
        if "(proc-macro)" in spec:
            continue
        name, version = spec.split()[:2]
        version = version.lstrip("v")
        if name == package:
            continue
        comp = {
            "type": "library",
            "bom-ref": f"pkg:cargo/{name}@{version}",
            "name": name,
            "version": version,
            "purl": f"pkg:cargo/{name}@{version}",
        }
        if "(/" in spec:  # a crate of this workspace, not from a registry: no purl
            comp["bom-ref"] = f"workspace:{name}@{version}"
            del comp["purl"]
        if lic.strip():
            comp["licenses"] = [{"expression": lic.strip()}]
        seen[(name, version)] = comp
    return [seen[k] for k in sorted(seen)]


def debs(status_dir: Path) -> list[dict]:
    comps = []
    for f in sorted(status_dir.iterdir()):
        fields: dict[str, str] = {}
        for line in f.read_text().splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        name, version, arch = fields["Package"], fields["Version"], fields["Architecture"]
        purl = f"pkg:deb/debian/{name}@{quote(version, safe='')}?arch={arch}&distro=debian-12"
        comp = {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}
        if "Source" in fields:
            comp["properties"] = [{"name": "debian:source", "value": fields["Source"]}]
        comps.append(comp)
    return comps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True, help="the binary's cargo package, also the image name")
    ap.add_argument("--version", required=True)
    ap.add_argument("--revision", default="unknown")
    ap.add_argument("--status-dir", type=Path, required=True)
    ap.add_argument("--cargo", default="cargo")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rust = crates(a.cargo, a.name)
    deb = debs(a.status_dir)
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "images/sbom.py"}]},
            "component": {
                "type": "container",
                "bom-ref": a.name,
                "name": a.name,
                "version": a.version,
                "properties": [{"name": "org.opencontainers.image.revision", "value": a.revision}],
            },
        },
        "components": rust + deb,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(bom, indent=2) + "\n")
    print(f"sbom.py: {a.out}: {len(rust)} crates, {len(deb)} Debian packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
