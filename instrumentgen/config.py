"""Configuration: OmegaConf YAML files validated against the dataclass schema below.

`load_config("tiny", ["model.num_layers=4"])` merges `configs/base.yaml`, the named file
(or a path / URL to a YAML file) and dotlist overrides, checks every key and value against
the schema, and returns a typed `Config`. Any mistake raises `ConfigError` with one line
naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import fsspec
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from instrumentgen.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(UserError):
    """A config key or value is not allowed; the message names the key and the allowed values."""


def choice(default: Any, *allowed: Any) -> Any:
    return field(default=default, metadata={"choices": allowed})


def bounded(default: Any, low: float | None = None, high: float | None = None) -> Any:
    return field(default=default, metadata={"low": low, "high": high})


@dataclass
class DataConfig:
    source: str = ""  # NSynth split: json/wav folder or TFRecord file, local path or fsspec URL
    format: str = choice("auto", "auto", "jsonwav", "tfrecord")
    note_duration_s: float = bounded(4.0, 0.05, 4.0)  # notes are cropped to this length
    sample_rate_hz: int = choice(44100, 44100)  # the codec's rate; NSynth's 16 kHz is resampled
    shards: str = ""  # token shards (Parquet) written by jobs.preprocess, read by jobs.train
    holdout_instruments: float = bounded(0.0, 0.0, 0.9)  # fraction of instruments held out
    splits: dict[str, str] = field(default_factory=dict)  # {train|valid|test: url}; empty = {train: source}
    notes_per_shard: int = bounded(1000, 1)  # input records per shard: the unit of resume
    encode_batch_size: int = bounded(32, 1)  # notes per DAC/CLAP call
    encoder_actors: int = bounded(1, 1)  # DAC/CLAP actors (a fixed pool: each loads the models once)
    encoder_num_gpus: float = bounded(0.0, 0.0)  # GPUs per encoder actor (0: CPU)
    encoder_num_cpus: float = bounded(1.0, 0.0)  # CPUs per encoder actor
    reader_num_cpus: float = bounded(0.25, 0.01)  # CPUs per read + resample task (mostly I/O)


@dataclass
class CodecConfig:
    weights: str = "44khz"  # "44khz" (DAC release), "tiny" (random init), a path or a URL
    n_codebooks: int = choice(4, 1, 2, 3, 4)  # the most significant codebooks kept
    device: str = "cpu"


@dataclass
class ClapConfig:
    weights: str = "music"  # "music" (music_audioset_epoch_15_esc_90.14.pt), "tiny", path or URL
    amodel: str = "HTSAT-base"
    tmodel: str = choice("roberta", "roberta", "transformer", "bert", "bart")
    tokenizer: str = ""  # folder with the RoBERTa tokenizer files (offline machines)
    device: str = "cpu"


@dataclass
class ModelConfig:
    """InstrumentLM (model/lm.py): the paper's transformer, its conditioners and the CLAP quantizer.

    The rvq_* defaults are audiocraft's CLAP conditioner (see the comments below); the tiny
    config keeps 2 codebooks x 64 bins, which its few fixture instruments can fill.
    """

    dim: int = bounded(512, 8)
    num_heads: int = bounded(16, 1)
    num_layers: int = bounded(12, 1)
    ffn_mult: int = bounded(4, 1)
    card: int = bounded(1024, 2)  # codebook size; the delay pattern's special token is `card`
    n_q: int = choice(4, 1, 2, 3, 4)  # codebooks modelled
    # Longest note in codec frames that training accepts and generation produces (positions are
    # sinusoidal: no table; it bounds the KV cache a generation preallocates and rejects longer codes)
    max_frames: int = bounded(512, 8)
    dropout: float = bounded(0.1, 0.0, 0.9)
    conditioning: str = choice("clap", "clap", "metadata")
    clap_dim: int = 512
    # The CLAP residual vector quantizer (model/quantizer.py), audiocraft's CLAP conditioner: 12 codebooks
    # x 1024 bins and 50 k-means iterations (config/conditioner/clapemb2music.yaml: n_q, bins, kmeans_iters),
    # EMA decay 0.99 and dead-code threshold 2 (the defaults of audiocraft/quantization/vq.py
    # ResidualVectorQuantizer, which that config keeps; kmeans_init=True there too).
    rvq_codebooks: int = bounded(12, 1)
    rvq_bins: int = bounded(1024, 2)
    rvq_decay: float = bounded(0.99, 0.0, 1.0)  # EMA decay of the codebook statistics
    rvq_kmeans_iters: int = bounded(50, 0)  # Lloyd iterations of the k-means init on the first training batch
    # An entry whose EMA usage (assignments per step, global batch) falls below this is re-seeded
    # from the current batch; 0 never re-seeds. With a global batch below bins x threshold (32 rows,
    # 1024 x 2 in the paper config) most entries are below it, and are re-seeded every step.
    rvq_dead_code_threshold: float = bounded(2.0, 0.0)
    family_dropout: float = bounded(0.7, 0.0, 1.0)
    source_dropout: float = bounded(0.7, 0.0, 1.0)
    cfg_dropout: float = bounded(0.1, 0.0, 1.0)  # whole-condition dropout for classifier-free guidance


@dataclass
class GenerateConfig:
    batch_size: int = bounded(88, 1)  # notes generated together
    cfg_coef: float = bounded(3.0, 0.0)
    top_k: int = bounded(250, 0)
    temperature: float = bounded(1.0, 0.0)
    seed: int = 0


@dataclass
class TrainConfig:
    """Training (jobs/train.py, instrumentgen/training/): workers, engine, optimizer, schedule, checkpoints."""

    strategy: str = choice("deepspeed", "deepspeed", "ddp")
    num_workers: int = bounded(2, 1)
    use_gpu: bool = False
    cpus_per_worker: float = bounded(1.0, 0.1)  # below 1 leaves cores to Ray Data on a small machine
    zero_stage: int = choice(1, 0, 1, 2, 3)
    precision: str = choice("fp32", "fp32", "bf16", "fp16")
    batch_size: int = bounded(32, 1)  # global batch, split across workers
    grad_accum: int = bounded(1, 1)
    grad_clip: float = bounded(1.0, 0.0)
    lr: float = bounded(1e-3, 0.0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = bounded(0.1, 0.0)
    warmup_steps: int = bounded(4000, 0)
    max_steps: int = bounded(1_000_000, 1)
    eval_every: int = bounded(5000, 1)
    checkpoint_every: int = bounded(5000, 1)
    keep_checkpoints: int = bounded(3, 1)
    log_every: int = bounded(100, 1)  # steps between metric reports (Ray Train, metrics.csv, console)
    shuffle_buffer: int = bounded(2000, 0)  # rows of each worker's local shuffle buffer (0: data order)
    materialize: bool = False  # hold the token shards in the object store (small sets: no re-read per epoch)
    export_dtype: str = choice("fp32", "fp32", "bf16")  # of the consolidated inference checkpoint
    max_failures: int = bounded(3, -1)
    storage_path: str = "runs"  # local path or fsspec URL (s3://...)
    run_name: str = "instrumentgen"


@dataclass
class MetricsConfig:
    tc_n_fft: list[int] = field(default_factory=lambda: [2048])  # one entry per scale S
    tc_hop: list[int] = field(default_factory=lambda: [512])
    tc_mels: list[int] = field(default_factory=lambda: [80])
    tc_mfccs: list[int] = field(default_factory=lambda: [13])
    tc_power: float = 1.0
    pitch_estimator: str = choice("yin", "yin")  # torchcrepe: see metrics/pitch.py
    fad_embedder: str = choice("vggish", "vggish", "clap")
    vggish_weights: str = "vggish"  # name, path or URL of the VGGish state dict


@dataclass
class Config:
    name: str = "base"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    clap: ClapConfig = field(default_factory=ClapConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def _check_values(node: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_values(value, key + ".")
            continue
        allowed = f.metadata.get("choices")
        if allowed and value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if low is not None and value < low or high is not None and value > high:
            span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ConfigError(f"{key}={value!r} is out of range; allowed: {span}")


def _read_yaml(name_or_path: str) -> Any:
    path = CONFIG_DIR / f"{name_or_path}.yaml"
    if path.exists():
        return OmegaConf.load(path)
    if name_or_path.endswith((".yaml", ".yml")):
        with fsspec.open(name_or_path, "r") as f:
            return OmegaConf.create(f.read())
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config={name_or_path!r} not found; allowed: {', '.join(known)} or a path/URL to a .yaml file")


def load_config(name_or_path: str = "base", overrides: Sequence[str] = ()) -> Config:
    """Merge base.yaml, the named config and `key=value` overrides into a validated `Config`."""
    try:
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, _read_yaml("base"), _read_yaml(name_or_path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {reason}") from None
    _check_values(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Config | dict) -> str:
    """A short stable hash of a config (or a sub-dict of it) for manifests and cache keys."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def split_overrides(argv: Sequence[str]) -> tuple[str, list[str]]:
    """`["config=tiny", "model.num_layers=2"]` -> `("tiny", ["model.num_layers=2"])` for job CLIs."""
    name, rest = "base", []
    for arg in argv:
        if arg.startswith("config="):
            name = arg.split("=", 1)[1]
        elif "=" in arg:
            rest.append(arg)
        else:
            raise ConfigError(f"argument {arg!r} is not key=value; use config=<name> and dotted keys like model.num_layers=4")
    return name, rest
