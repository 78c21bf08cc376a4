"""The real path at paper size on this CPU: released-format weights staged in a loopback S3 bucket,
then the cluster's own job arguments, each stage reading what the one before wrote.

    python -m jobs.paper_check                 # paper size (~10 min on 2 cores, ~6 GB): make paper-check
    python -m jobs.paper_check size=tiny       # the same chain with the tiny models (the slow test)

1. weights: random-init models of the released sizes, saved in the released files' own formats:
   the 44.1 kHz DAC (`DAC.save`: {"metadata": {"kwargs"}, "state_dict"}, read by `DAC.load`),
   CLAP HTSAT-base + RoBERTa ("music": a DistributedDataParallel checkpoint, `module.` prefixed
   keys with `text_branch.embeddings.position_ids`, read by `CLAP_Module.load_ckpt`), a small
   tokenizer folder in the layout transformers reads (byte-level vocab.json, merges.txt and
   roberta-base's config.json), and VGGish (its release state dict).
2. stage_weights: `jobs.stage_weights` copies them to s3://<bucket>/weights on a moto server on
   127.0.0.1, with their sha256 sums.
3. preprocess, train, evaluate: `python -m jobs.<job>` with the arguments of the RayJobs that
   `deploy.render` writes for that bucket, plus only what scales them to this machine (`LOCAL`:
   CPU instead of GPU, 2 training steps on 2 workers in fp32, one evaluation actor).
   8 notes of 4 s -> shards -> 2 DeepSpeed steps of the 56M model -> <bucket>/runs/<run>/model.pt.
4. serve: the Serve app with the RayService's own INSTRUMENTGEN_OVERRIDES (its model and weights),
   one instrument's first 4 notes (2 keys x 2 velocities) at full length, with CFG, over HTTP.
5. evaluate: the evaluation RayJob's arguments on a 4-note test instrument.

Each stage prints its time and the peak resident memory of this process and its children (Ray's
workers; the S3 server excluded); at paper size the table replaces the paper_check block of
docs/benchmarks.template.md and docs/benchmarks.md is rendered again (`write=0`: print only).
A failure is the stage's own one-line error (exit 2) or a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil
import requests
import torch
import yaml

from deploy import render
from instrumentgen import storage
from instrumentgen.config import ClapConfig, ConfigError, load_config
from instrumentgen.data.synthetic import FixtureInstrument, default_instruments, write_fixture_nsynth
from instrumentgen.errors import exit_code
from instrumentgen.vocab import VELOCITIES
from jobs import stage_weights
from jobs.entry import local_ray
from jobs.loopback_s3 import environment, moto_server, s3_env

SIZES = ("paper", "tiny")
S3_OPTIONS = {"config_kwargs": {"read_timeout": 900}}  # see loopback_s3
BUCKET = "paper-check"
# What scales each RayJob of deploy/k8s to this machine; every other argument is the manifest's.
LOCAL = {
    "jobs.preprocess": [
        "data.encoder_actors=1",
        "data.encoder_num_gpus=0",
        "data.encoder_num_cpus=1",
        "data.encode_batch_size=4",
        "codec.device=cpu",
    ],
    "jobs.train": [
        "train.num_workers=2",
        "train.use_gpu=false",
        "train.cpus_per_worker=0.5",
        "train.precision=fp32",  # bf16 is the GPU path; DeepSpeed on CPU workers runs fp32
        "train.max_steps=2",
        "train.batch_size=2",
        "train.warmup_steps=1",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.shuffle_buffer=0",
    ],
    "jobs.evaluate": ["actors=1", "max_instruments=1", "codec.device=cpu"],
}
SERVE_LOCAL = [
    "serve.num_gpus=0",
    "serve.num_cpus=1",
    "serve.min_replicas=1",
    "serve.max_replicas=1",
    "serve.ingress_num_cpus=0.25",
    "serve.scorer_num_cpus=0.25",
]
REQUEST = {
    "prompt": "warm analog brass",
    "seed": 0,
    "keys": {"low": 21, "high": 22},
    "velocities": list(VELOCITIES[:2]),
}
# roberta-base's config.json: the text tower of the CLAP "music" release has this size.
ROBERTA_BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


def write_tokenizer(folder: Path, roberta: dict) -> Path:
    """A RoBERTa tokenizer folder transformers reads: byte-level vocab.json, merges.txt, config.json."""
    from clap_module.tokenizer import bytes_to_unicode
    from transformers import RobertaConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *bytes_to_unicode().values()]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    RobertaConfig(**roberta).save_pretrained(folder)
    return folder


def write_release_files(folder: Path) -> dict[str, str]:
    """Random-init DAC 44 kHz, CLAP HTSAT-base + RoBERTa and VGGish of the released sizes, in the
    released formats, and a tokenizer folder; returns the `jobs.stage_weights` arguments."""
    import dac

    from instrumentgen.metrics.vggish import VGGish
    from instrumentgen.pretrained.clap import random_init, save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    files = {
        "codec": folder / "weights_44khz_8kbps_0.0.1.pth",
        "clap": folder / "music_audioset_epoch_15_esc_90.14.pt",
        "vggish": folder / "vggish-10086976.pth",
    }
    tokenizer = write_tokenizer(folder / "roberta-base", ROBERTA_BASE)
    if not files["codec"].exists():
        with storage.atomic_path(files["codec"]) as tmp:
            dac.DAC().save(str(tmp), package=False)  # the release's architecture: DAC()'s defaults
    if not files["clap"].exists():
        module = random_init(ClapConfig(amodel="HTSAT-base", tmodel="roberta", tokenizer=str(tokenizer)))
        with storage.atomic_path(files["clap"]) as tmp:
            save_checkpoint(module, tmp, prefix="module.", epoch=15)
    if not files["vggish"].exists():
        with storage.atomic_path(files["vggish"]) as tmp:
            torch.save(VGGish().state_dict(), tmp)
    return {**{key: str(path) for key, path in files.items()}, "tokenizer": str(tokenizer)}


def write_tiny_files(folder: Path) -> dict[str, str]:
    """The tiny config's weight files (written once to the weights cache, which may also hold the files
    of earlier tiny recipes) and a tokenizer folder, as staging sources."""
    from instrumentgen.metrics import vggish as vggish_weights
    from instrumentgen.pretrained import clap as clap_weights
    from instrumentgen.pretrained import codec as codec_weights

    codec, clap = codec_weights.tiny_file(), clap_weights.tiny_file(load_config("tiny").clap)
    vggish = vggish_weights.tiny_file()
    small = {**ROBERTA_BASE, "num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": 300}
    tokenizer = write_tokenizer(folder / "roberta-base", small)
    return {"codec": str(codec), "clap": str(clap), "vggish": str(vggish), "tokenizer": str(tokenizer)}


def write_notes(bucket: str, scratch: Path) -> None:
    """8 train notes of 4 s (2 instruments x 2 pitches x 2 velocities) and a 4-note test instrument, as
    the TFRecords the preprocess and evaluation RayJobs read."""
    splits = {"train": default_instruments(2), "test": [FixtureInstrument("brass", "acoustic", 7)]}
    for split, instruments in splits.items():
        local = write_fixture_nsynth(str(scratch / split), instruments, [60, 64], [50, 100], ("tfrecord",))
        storage.write_bytes(f"{bucket}/nsynth/nsynth-{split}.tfrecord", storage.read_bytes(local["tfrecord"]))


@contextlib.contextmanager
def loopback_s3(log: Path) -> Iterator[tuple[str, int]]:
    """A moto S3 server on 127.0.0.1 and the AWS variables pointing at it; yields (endpoint, pid).

    moto joins the parts of a large upload in Python: completing the 800 MB CLAP file takes over a
    minute, past botocore's 60 s read timeout, whose retry then fails. Here (and in Ray's workers,
    through `FSSPEC_S3`) s3fs waits up to 15 minutes instead; a real bucket needs no such setting.
    """
    import fsspec.config

    old_conf = dict(fsspec.config.conf.get("s3", {}))
    try:
        with moto_server(log) as (endpoint, pid):
            fsspec.config.conf.setdefault("s3", {}).update(S3_OPTIONS)
            with environment({**s3_env(endpoint), "FSSPEC_S3": json.dumps(S3_OPTIONS)}):
                yield endpoint, pid
    finally:
        fsspec.config.conf["s3"] = old_conf


class Stages:
    """Times each stage and samples the summed RSS of this process and its children (except `exclude`)."""

    def __init__(self, exclude: set[int]):
        self.rows: list[dict] = []
        self.exclude = exclude

    def _rss(self) -> int:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            if proc.pid not in self.exclude:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
        return total

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        """Run a block as stage `name`; its row (seconds, peak GiB) is added and printed when it ends."""
        print(f"\n== {name}: {what}", flush=True)
        peak, done = [self._rss()], threading.Event()

        def sample():
            while not done.wait(0.25):
                peak.append(self._rss())

        thread = threading.Thread(target=sample, daemon=True)
        start = time.perf_counter()
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            row = {"stage": name, "what": what, "seconds": time.perf_counter() - start, "peak_gib": max(peak) / 2**30}
            self.rows.append(row)
            print(f"== {name}: {row['seconds']:.1f} s, peak {row['peak_gib']:.2f} GiB", flush=True)

    def table(self) -> str:
        """The rows as a markdown table."""
        lines = ["| stage | what | seconds | peak memory (GiB) |", "|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['what']} | {r['seconds']:.1f} | {r['peak_gib']:.2f} |" for r in self.rows]
        return "\n".join(lines)


def job_arguments(rendered: dict[str, str]) -> dict[str, list[str]]:
    """{job module: its arguments} of the rendered RayJobs' entrypoints."""
    jobs = {}
    for path, text in rendered.items():
        resource = yaml.safe_load(text)
        if path.startswith("deploy/k8s/") and resource["kind"] == "RayJob":
            words = shlex.split(resource["spec"]["entrypoint"])
            jobs[words[2]] = words[3:]
    return jobs


def run_job(module: str, manifest: list[str], local: list[str]) -> None:
    """`python -m <module>` with the manifest's arguments, `local` replacing those of the same key, in
    this process (the running Ray); a non-zero exit is an error."""
    argv = list({arg.split("=", 1)[0]: arg for arg in [*manifest, *local]}.values())
    code = importlib.import_module(module).main(argv)
    if code:
        raise SystemExit(f"{module} exited {code}")


def serve_instrument(serve_config: str, size: str, storage_url: str) -> dict:
    """The RayService's application config on this machine: POST `REQUEST`, wait; the finished status."""
    from serve.local import serving, wait_done

    (app,) = yaml.safe_load(serve_config)["applications"]
    env = app["runtime_env"]["env_vars"]
    overrides = [*shlex.split(env["INSTRUMENTGEN_OVERRIDES"]), *SERVE_LOCAL]
    cfg = load_config("tiny" if size == "tiny" else env["INSTRUMENTGEN_CONFIG"], overrides)
    assert cfg.serve.storage == storage_url and cfg.generate.cfg_coef > 0
    with serving(cfg) as base:
        answer = requests.post(f"{base}/v1/instruments", json=REQUEST, timeout=120).json()
        status = wait_done(base, answer["id"], timeout_s=3600, poll_s=1.0)
    if status["status"] != "done" or status["notes_total"] != 4:
        raise RuntimeError(f"the served instrument did not finish with 4 notes: {status}")
    return status


def written(url: str) -> str:
    """`url`, after checking that the stage before wrote it (`RuntimeError` naming it if not)."""
    if not storage.exists(url):
        raise RuntimeError(f"{url} was not written: the next stage would not find it")
    print(f"   wrote {url}", flush=True)
    return url


def run(size: str, out: Path, endpoint: str | None = None) -> Stages:
    """The whole chain at `size` in `out`; returns the stages' rows.

    endpoint: an S3 server on loopback that this process and the running Ray's workers already use (the
    tests' session server, for the tiny chain); by default a moto server of its own is started."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="paper-check-", dir=out))
    size_args = ["config=tiny"] if size == "tiny" else []
    server = contextlib.nullcontext((endpoint, None)) if endpoint else loopback_s3(out / "moto.log")
    with server as (endpoint, moto_pid):
        stages = Stages(exclude={moto_pid} - {None})
        bucket = f"s3://{BUCKET}"
        storage.filesystem(bucket)[0].mkdir(BUCKET)
        values = {**render.read_values(), "bucket": bucket, "run": "paper-check"}
        rendered = render.render(values)
        jobs = job_arguments(rendered)
        what = "DAC 44 kHz, CLAP HTSAT-base + RoBERTa, VGGish, tokenizer" if size == "paper" else "tiny models"
        with stages.stage("weights", f"random init, released formats: {what}"):
            sources = write_release_files(out / "weights") if size == "paper" else write_tiny_files(scratch)
        with stages.stage("stage_weights", f"copy + sha256 to {bucket}/weights"):
            stage_weights.stage(bucket, sources)
            written(f"{bucket}/weights/{storage.MANIFEST}")
            write_notes(bucket, scratch)
        with local_ray(num_cpus=2):
            with stages.stage("preprocess", "8 notes of 4 s -> DAC codes + CLAP embeddings"):
                run_job("jobs.preprocess", jobs["jobs.preprocess"], [*size_args, *LOCAL["jobs.preprocess"]])
                written(f"{bucket}/shards/{storage.MANIFEST}")
            with stages.stage("train", "2 DeepSpeed steps, 2 CPU workers, export"):
                run_job("jobs.train", jobs["jobs.train"], [*size_args, *LOCAL["jobs.train"]])
                written(f"{bucket}/runs/{values['run']}/model.pt")
            with stages.stage("serve", "4 notes at full length, CFG, over HTTP"):
                status = serve_instrument(rendered["serve/config.yaml"], size, f"{bucket}/instruments")
                written(f"{bucket}/instruments/{status['id']}/{storage.MANIFEST}")
            with stages.stage("evaluate", "1 test instrument (4 notes): generate + score"):
                run_job("jobs.evaluate", jobs["jobs.evaluate"], [*size_args, *LOCAL["jobs.evaluate"]])
                written(f"{bucket}/evaluation/{values['run']}/results.json")
    return stages


def main(argv: list[str] | None = None) -> int:
    """`size=paper|tiny out=<folder> write=1|0`: run the chain, print the per-stage table (and record it)."""
    argv = sys.argv[1:] if argv is None else argv

    def check() -> None:
        args = dict(arg.split("=", 1) for arg in argv if "=" in arg)
        unknown = [arg for arg in argv if "=" not in arg or arg.split("=", 1)[0] not in ("size", "out", "write")]
        if unknown:
            allowed = "size=paper|tiny, out=<folder>, write=1|0"
            raise ConfigError(f"argument {unknown[0]!r} is not allowed; allowed: {allowed}")
        size, write = args.get("size", "paper"), args.get("write", "1")
        if size not in SIZES:
            raise ConfigError(f"size={size!r} is not allowed; allowed: {', '.join(SIZES)}")
        if write not in ("0", "1"):
            raise ConfigError(f"write={write!r} is not allowed; allowed: 1 (record the table in docs/), 0")
        stages = run(size, Path(args.get("out", ".cache/paper-check")))
        print(f"\npaper check ({size}) passed\n\n{stages.table()}", flush=True)
        if size == "paper" and write == "1":
            record(stages)

    return exit_code(check)


def record(stages: Stages) -> None:
    """The table, command and machine into the paper_check block of the benchmarks page."""
    from jobs.benchmark import describe_machine, this_machine
    from jobs.benchmark import main as benchmark_main
    from jobs.gpu_check import TEMPLATE, write_block

    total = sum(row["seconds"] for row in stages.rows)
    block = (
        f"```\npython -m jobs.paper_check\n```\n\nMachine: {describe_machine(this_machine())}. "
        f"Total {total / 60:.1f} min.\n\n{stages.table()}\n"
    )
    write_block(TEMPLATE, "paper_check", block)
    benchmark_main(["--render"])


if __name__ == "__main__":
    sys.exit(main())
