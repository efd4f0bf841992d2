#!/usr/bin/env python3
"""Regenerates what is derived from the chart, or checks that it is up to date.

    python3 tests/k8s/render.py          # rewrite manifests/ and deploy/prometheus/
    python3 tests/k8s/render.py --check  # exit 1 if any of them is out of date

Derived files:
  manifests/00-crd.yaml            copy of charts/dot-proxy/crds/dotproxyconfigs.yaml
                                   (absent while the operator has not generated the CRD)
  manifests/10-dot-proxy.yaml      the chart rendered with default values
  deploy/prometheus/dot-proxy-rules.yaml
                                   copy of charts/dot-proxy/files/dot-proxy-rules.yaml, the
                                   one source of the alert rules (the chart embeds it with
                                   .Files.Get, which cannot read outside the chart; a
                                   symlink would not survive every packaging path)

Needs the Helm SDK (pip install helm-python-sdk); `bash tests/k8s/validate.sh --render`
runs this script with the tools set up.
"""

from __future__ import annotations

import argparse
import difflib
import sys

from chartlib import CRD_FILE, MANIFESTS, ROOT, RULES_COPY, RULES_FILE, manifests_expected


def expected_files() -> dict:
    files = {MANIFESTS / name: text for name, text in manifests_expected().items()}
    files[RULES_COPY] = RULES_FILE.read_text()
    return files


def main() -> int:
    try:
        import helm_python  # noqa: F401
    except ImportError:
        print("render: the Helm SDK is not installed here; run: bash tests/k8s/validate.sh --render", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail when a derived file is out of date")
    args = ap.parse_args()

    expected = expected_files()
    # Files in manifests/ that the chart no longer produces are stale too.
    stale = [p for p in sorted(MANIFESTS.glob("*")) if p.is_file() and p not in expected]

    if args.check:
        bad = 0
        for path, text in expected.items():
            rel = path.relative_to(ROOT)
            current = path.read_text() if path.exists() else None
            if current == text:
                continue
            bad += 1
            if current is None:
                print(f"render: {rel} is missing")
                continue
            print(f"render: {rel} is out of date:")
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "on disk", "rendered", lineterm="", n=1)
            for i, line in enumerate(diff):
                if i == 40:
                    print("  ...")
                    break
                print("  " + line)
        for p in stale:
            bad += 1
            print(f"render: {p.relative_to(ROOT)} is not produced by the chart any more")
        if not CRD_FILE.exists():
            print(f"render: note: {CRD_FILE.relative_to(ROOT)} does not exist yet, so manifests/00-crd.yaml is not expected")
        if bad:
            print(f"render: {bad} derived file(s) out of date; run: bash tests/k8s/validate.sh --render")
            return 1
        print(f"render: {len(expected)} derived files are up to date")
        return 0

    MANIFESTS.mkdir(exist_ok=True)
    RULES_COPY.parent.mkdir(parents=True, exist_ok=True)
    for path, text in expected.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"render: wrote {path.relative_to(ROOT)}")
    for p in stale:
        p.unlink()
        print(f"render: removed {p.relative_to(ROOT)}")
    if not CRD_FILE.exists():
        print(f"render: note: {CRD_FILE.relative_to(ROOT)} does not exist yet; manifests/ has no CRD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
