"""`instrumentgen` command line: small local tasks; the distributed work is in `jobs/`.

    instrumentgen config tiny model.num_layers=4     # print the resolved, validated config
    instrumentgen fixture ./nsynth-fixture --instruments 4 --bad-records
    instrumentgen generate runs/demo/model.pt --prompt "warm analog brass" --out ./brass --seed 7
    instrumentgen generate runs/demo/model.pt --family bass --source acoustic --out s3://bucket/bass generate.top_k=50

Dotted `key=value` overrides may stand anywhere on the line. A bad value, a missing file or an
unreachable storage URL is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.data.synthetic import write_fixture_nsynth
from instrumentgen.errors import exit_code
from instrumentgen.vocab import PITCHES, VELOCITIES


def _config(args: argparse.Namespace) -> None:
    print(OmegaConf.to_yaml(OmegaConf.structured(load_config(args.name, args.overrides))))


def _fixture(args: argparse.Namespace) -> None:
    pitches = list(PITCHES) if args.all_keys else None
    velocities = list(VELOCITIES) if args.all_keys else None
    urls = write_fixture_nsynth(args.root, args.instruments, pitches, velocities, tuple(args.formats), args.bad_records)
    for fmt, url in urls.items():
        print(f"{fmt}: {url}")


def _generate(args: argparse.Namespace) -> None:
    import dataclasses

    from instrumentgen.instruments.generate import InstrumentCue, generate_instrument
    from instrumentgen.pretrained.loading import load_models

    cfg = load_config(args.config, args.overrides)
    storage.check_writable(args.out)
    lm, codec, clap = load_models(cfg, args.checkpoint, clap=None if args.prompt is not None else False)
    cue = InstrumentCue(prompt=args.prompt, family=args.family, source=args.source)
    gen_cfg = cfg.generate if args.seed is None else dataclasses.replace(cfg.generate, seed=args.seed)
    instrument = generate_instrument(lm, codec, clap, cue, gen_cfg, cfg.data.note_duration_s, progress=True)
    manifest = instrument.write(args.out)
    presets = manifest.presets
    print(f"wrote {len(manifest.notes)} notes, {presets['sfz']} and {presets['dspreset']} to {args.out}")


def main(argv: list[str] | None = None) -> int:
    """The `instrumentgen` command: parse, run the subcommand, print a `UserError` as one line (exit 2)."""
    parser = argparse.ArgumentParser(
        prog="instrumentgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    p = sub.add_parser("generate", help="generate one instrument (440 notes, SFZ, DecentSampler) from a checkpoint")
    p.add_argument("checkpoint", help="path or URL of a model exported by jobs.train")
    p.add_argument("--prompt", help="text prompt (CLAP-conditioned models)")
    p.add_argument("--family", help="NSynth family name, e.g. brass")
    p.add_argument("--source", help="acoustic, electronic or synthetic")
    p.add_argument("--seed", type=int, help="instrument seed (default: generate.seed of the config)")
    p.add_argument("--out", required=True, help="output folder or fsspec URL")
    p.add_argument("--config", default="tiny", help="config for codec, CLAP and generation settings")
    p.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides, e.g. generate.cfg_coef=2")
    p.set_defaults(run=_generate)
    args, extra = parser.parse_known_args(argv)
    # argparse takes positional overrides only before the first option; a key=value after it is an override too.
    unknown = [arg for arg in extra if arg.startswith("-") or "=" not in arg]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra and not hasattr(args, "overrides"):
        parser.error(f"this command takes no key=value overrides: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return exit_code(lambda: args.run(args))  # every error of ours names the bad value and the allowed ones


if __name__ == "__main__":
    sys.exit(main())
