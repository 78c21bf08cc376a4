"""Copy serve/config.yaml into the RayService manifest's `serveConfigV2`, so that one file configures Serve.

    python deploy/k8s/render_rayservice.py           # rewrite deploy/k8s/serve.rayservice.yaml
    python deploy/k8s/render_rayservice.py --check   # exit 1 if the manifest is stale (what the test checks)

The copy is textual (comments kept), indented under `serveConfigV2: |`; the rest of the manifest
is left as written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "serve" / "config.yaml"
MANIFEST = Path(__file__).with_name("serve.rayservice.yaml")
KEY = "  serveConfigV2: |"
INDENT = " " * 4


def with_serve_config(manifest: str, serve_config: str) -> str:
    """`manifest` with the block under `serveConfigV2: |` replaced by `serve_config`, indented."""
    lines = manifest.splitlines()
    start = lines.index(KEY) + 1
    end = start
    while end < len(lines) and (lines[end].startswith(INDENT) or not lines[end].strip()):
        end += 1
    block = [INDENT + line if line.strip() else "" for line in serve_config.rstrip("\n").splitlines()]
    return "\n".join([*lines[:start], *block, *lines[end:]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the manifest, or with --check report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if the manifest is stale")
    args = parser.parse_args(argv)
    current = MANIFEST.read_text()
    rendered = with_serve_config(current, SERVE_CONFIG.read_text())
    if args.check:
        if rendered != current:
            print(f"{MANIFEST} is stale: run python {Path(__file__).relative_to(REPO)}", file=sys.stderr)
            return 1
        return 0
    MANIFEST.write_text(rendered)
    print(f"wrote {MANIFEST.relative_to(REPO)} from {SERVE_CONFIG.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
