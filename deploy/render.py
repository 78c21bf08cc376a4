"""Write every manifest of deploy/k8s/ and serve/config.yaml from deploy/templates/ and deploy/values.yaml.

    python -m deploy.render                      # with deploy/values.yaml
    python -m deploy.render bucket=s3://my-bucket image=my.registry/instrumentgen:$(git rev-parse --short HEAD)
    python -m deploy.render --check              # exit 1 if a written file is stale (what the tests check)
    python -m deploy.render --entrypoint train   # print a RayJob's entrypoint (for `ray job submit`)

The bucket, the run name and the image are named once, in deploy/values.yaml (or on this command
line); the templates take them as `${bucket}`, `${run}`, `${image}`, `${role_arn}`, and derive:
`${model}` = <bucket>/runs/<run>/model.pt (what the train job exports and everything after it
reads) and `${weights}` = the config overrides of the weights `jobs.stage_weights` stages under
<bucket>/weights (`instrumentgen.pretrained.staged`). The RayService's `serveConfigV2` is the
rendered serve/config.yaml, indented (`${serve_config}`).
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import yaml

from instrumentgen import storage
from instrumentgen.config import ConfigError
from instrumentgen.pretrained.staged import staged_overrides

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "deploy" / "templates"
VALUES = REPO / "deploy" / "values.yaml"
SERVE_TEMPLATE = "serve.config.yaml"
KEYS = ("bucket", "run", "image", "role_arn")


def targets() -> dict[str, str]:
    """{template name: the file it renders to, relative to the repository}."""
    names = sorted(p.name for p in TEMPLATES.glob("*.yaml"))
    return {name: "serve/config.yaml" if name == SERVE_TEMPLATE else f"deploy/k8s/{name}" for name in names}


def read_values(overrides: list[str] = ()) -> dict[str, str]:
    """deploy/values.yaml with `key=value` overrides; `ConfigError` for an unknown key or an empty value."""
    values = yaml.safe_load(VALUES.read_text())
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key not in KEYS:
            raise ConfigError(f"argument {arg!r} is not allowed; allowed: {', '.join(k + '=' for k in KEYS)}")
        values[key] = value
    for key in KEYS:
        if not str(values.get(key) or "").strip():
            raise ConfigError(f"{key} is empty in {VALUES.name}; allowed: a non-empty value")
    return {key: str(values[key]).rstrip("/") if key == "bucket" else str(values[key]) for key in KEYS}


def render(values: dict[str, str]) -> dict[str, str]:
    """{target path: text} of every template filled with `values` (see the module docstring)."""
    fill = dict(values)
    fill["model"] = storage.join(values["bucket"], "runs", values["run"], "model.pt")
    fill["weights"] = " ".join(f"{key}={url}" for key, url in staged_overrides(values["bucket"]).items())
    serve_config = string.Template((TEMPLATES / SERVE_TEMPLATE).read_text()).substitute(fill)
    fill["serve_config"] = "\n    ".join(serve_config.rstrip("\n").splitlines()).replace("\n    \n", "\n\n")
    out = {}
    for name, target in targets().items():
        text = (
            serve_config if name == SERVE_TEMPLATE else string.Template((TEMPLATES / name).read_text()).substitute(fill)
        )
        out[target] = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    return out


def _print_entrypoint(rendered: dict[str, str], job: str) -> int:
    jobs = sorted(path.split("/")[-1].split(".")[0] for path in rendered if path.endswith(".rayjob.yaml"))
    if job not in jobs:
        raise ConfigError(f"--entrypoint {job!r} is not a RayJob; allowed: {', '.join(jobs)}")
    print(yaml.safe_load(rendered[f"deploy/k8s/{job}.rayjob.yaml"])["spec"]["entrypoint"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Write the rendered files, or with --check report the stale ones (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a file is stale")
    parser.add_argument("--entrypoint", metavar="JOB", help="print deploy/k8s/JOB.rayjob.yaml's entrypoint only")
    parser.add_argument("values", nargs="*", help="key=value overrides of deploy/values.yaml")
    args = parser.parse_args(argv)
    try:
        rendered = render(read_values(args.values))
        if args.entrypoint:
            return _print_entrypoint(rendered, args.entrypoint)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [path for path, text in rendered.items() if not (REPO / path).exists() or (REPO / path).read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python -m deploy.render", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        (REPO / path).parent.mkdir(parents=True, exist_ok=True)
        (REPO / path).write_text(rendered[path])
    print(f"wrote {len(stale)} of {len(rendered)} files: {', '.join(stale) or 'all were up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
