"""`instrumentgen` command line: small local tasks; the distributed work is in `jobs/`.

    instrumentgen config tiny model.num_layers=4     # print the resolved, validated config
    instrumentgen fixture ./nsynth-fixture --instruments 4 --bad-records
"""
from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from instrumentgen.config import ConfigError, load_config
from instrumentgen.testing import write_fixture_nsynth
from instrumentgen.vocab import PITCHES, VELOCITIES


def _config(args: argparse.Namespace) -> None:
    print(OmegaConf.to_yaml(OmegaConf.structured(load_config(args.name, args.overrides))))


def _fixture(args: argparse.Namespace) -> None:
    pitches = list(PITCHES) if args.all_keys else None
    velocities = list(VELOCITIES) if args.all_keys else None
    urls = write_fixture_nsynth(args.root, args.instruments, pitches, velocities, tuple(args.formats), args.bad_records)
    for fmt, url in urls.items():
        print(f"{fmt}: {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="instrumentgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("config", help="print a resolved config")
    p.add_argument("name", nargs="?", default="base")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(run=_config)
    p = sub.add_parser("fixture", help="write a small NSynth-format data set (json/wav and TFRecord)")
    p.add_argument("root", help="output folder or fsspec URL")
    p.add_argument("--instruments", type=int, default=3)
    p.add_argument("--all-keys", action="store_true", help="all 88 keys x 5 velocities (else 5 pitches x 2)")
    p.add_argument("--formats", nargs="+", default=["jsonwav", "tfrecord"], choices=["jsonwav", "tfrecord"])
    p.add_argument("--bad-records", action="store_true", help="mix in four invalid records")
    p.set_defaults(run=_fixture)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
