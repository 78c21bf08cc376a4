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
    """A dataclass field whose value must be one of `allowed` (checked by `load_config`)."""
    return field(default=default, metadata={"choices": allowed})


def bounded(default: Any, low: float | None = None, high: float | None = None) -> Any:
    """A dataclass field whose value must lie in [low, high] (None: unbounded on that side)."""
    return field(default=default, metadata={"low": low, "high": high})


@dataclass
class DataConfig:
    """`data.*`: the NSynth source, note length and rate, and the token shards of jobs.preprocess."""

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
    """The DAC codec: which weights, how many codebooks, which device."""

    weights: str = "44khz"  # "44khz" (DAC release), "tiny" (random init), a path or a URL
    n_codebooks: int = choice(4, 1, 2, 3, 4)  # the most significant codebooks kept
    device: str = "cpu"


@dataclass
class ClapConfig:
    """The CLAP model: weights, audio and text towers, the RoBERTa tokenizer folder, device."""

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
    # x 1024 bins and 50 k-means iterations (config/conditioner/clapemb2music.yaml: n_q, bins, kmeans_iters).
    # audiocraft's EMA decay 0.99 and dead-code threshold 2 are per step, whatever the batch; at a global
    # batch of 32 rows for 1024 entries they re-seed nearly every entry every step (jobs/benchmarks/
    # quantizer.py). Here both are per `bins` rows of the global batch, so they mean the same at any batch.
    rvq_codebooks: int = bounded(12, 1)
    rvq_bins: int = bounded(1024, 2)
    # EMA decay of the codebooks per `rvq_bins` rows (a step of B rows decays by rvq_decay ** (B / rvq_bins)):
    # at 0.99999 an entry's statistics average ~100k of its rows, whatever the batch. CLAP is frozen and the
    # training set fixed, so the k-means of the sample is already the estimate; the EMA only refines it,
    # slowly enough that the deep codebooks' codes stay put (at 0.999 a twelfth codebook's codes of
    # fixed probes changed by 25% per 1000 steps: docs/training.md)
    rvq_decay: float = bounded(0.99999, 0.0, 1.0)
    # EMA decay per `rvq_bins` rows of each entry's usage, the window over which an entry counts as unused
    # (rvq_dead_code_threshold): at 0.999 about 1000 windows of `rvq_bins` rows (32k steps at 32 rows)
    rvq_usage_decay: float = bounded(0.999, 0.0, 1.0)
    rvq_kmeans_iters: int = bounded(50, 0)  # Lloyd iterations of each codebook's k-means initialisation
    # CLAP embeddings of the training set that the codebooks' k-means starts from, drawn from the train
    # shards before the first step (training/clap_sample.py), the same on every worker
    rvq_init_samples: int = bounded(32768, 1)
    # An entry whose EMA usage falls below this share of an even share (1 = it takes 1/rvq_bins of the
    # rows) is re-seeded from the current batch; 0 never re-seeds. 0.05 at usage decay 0.999: fewer than
    # ~50 rows of the ~1000 that an even share gets over the window
    rvq_dead_code_threshold: float = bounded(0.05, 0.0)
    family_dropout: float = bounded(0.7, 0.0, 1.0)
    source_dropout: float = bounded(0.7, 0.0, 1.0)
    cfg_dropout: float = bounded(0.1, 0.0, 1.0)  # whole-condition dropout for classifier-free guidance


@dataclass
class GenerateConfig:
    """Sampling of an instrument: notes per forward, guidance, top-k, temperature, the instrument seed."""

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
    """`metrics.*`: TC scales, the pitch estimator, the FAD embedder and the cue of jobs.evaluate."""

    tc_n_fft: list[int] = field(default_factory=lambda: [2048])  # one entry per scale S
    tc_hop: list[int] = field(default_factory=lambda: [512])
    tc_mels: list[int] = field(default_factory=lambda: [80])
    tc_mfccs: list[int] = field(default_factory=lambda: [13])
    tc_power: float = 1.0
    pitch_estimator: str = choice("yin", "yin")  # torchcrepe: see metrics/pitch.py
    fad_embedder: str = choice("vggish", "vggish", "clap")
    vggish_weights: str = "vggish"  # name, path or URL of the VGGish state dict
    # jobs.evaluate: a test instrument's CLAP cue (and CLAP score reference): its reference note's
    # embedding (nearest MIDI 60, loudest velocity), or the normalised mean of its notes' embeddings
    eval_cue: str = choice("reference_note", "reference_note", "mean_embedding")


@dataclass
class RenderConfig:
    """jobs.render: the actor pool, the quality gate and the limits on a prompt line (docs/batch.md)."""

    actors: int = bounded(2, 1)  # render actors: each keeps the LM, codec and CLAP loaded
    num_gpus: float = bounded(0.0, 0.0)  # GPUs per render actor (0: CPU)
    num_cpus: float = bounded(1.0, 0.1)  # CPUs per render actor; a CPU actor uses this many torch threads
    max_tc: float = bounded(0.0, 0.0)  # quality gate on TC (normalised); 0: no gate
    max_mad_pitch: float = bounded(0.0, 0.0)  # quality gate on MAD_pitch (semitones); 0: no gate
    retries: int = bounded(2, 0)  # new seeds for an instrument that fails the gate
    on_fail: str = choice("keep", "keep", "drop")  # after the retries: keep it flagged, or write nothing
    max_candidates: int = bounded(8, 1)  # the largest `candidates` a prompt line may ask for
    max_variations: int = bounded(16, 1)  # the largest `variations` a prompt line may ask for
    audio_format: str = choice("wav24", "wav24", "wav16", "flac")


@dataclass
class ServeConfig:
    """The HTTP application (serve/): model, storage, replicas, queues and request limits."""

    checkpoint: str = "runs/instrumentgen/model.pt"  # InstrumentLM.save file: path or fsspec URL
    storage: str = "instruments"  # root of the served instruments: local folder or fsspec URL (s3://...)
    shard_size: int = bounded(88, 1)  # slots per Generator call: the unit of fan-out and of retry
    min_replicas: int = bounded(1, 0)  # Generator autoscaling
    max_replicas: int = bounded(4, 1)
    target_ongoing_requests: float = bounded(1.0, 0.1)
    max_ongoing_requests: int = bounded(1, 1)  # shards one Generator replica works on at once
    max_queued_requests: int = bounded(256, 1)  # shards waiting for a Generator; then the shard backs off
    ingress_replicas: int = bounded(1, 1)
    ingress_num_cpus: float = bounded(0.5, 0.0)
    scorer_num_cpus: float = bounded(0.5, 0.0)
    max_instruments_in_flight: int = bounded(8, 1)  # per ingress replica; past it POST answers 503
    num_gpus: float = bounded(0.0, 0.0)  # per Generator replica
    num_cpus: float = bounded(1.0, 0.0)  # per Generator replica; also its torch threads (at least 1)
    max_candidates: int = bounded(4, 1)  # cap of the request's `candidates` (consistency selection)
    max_prompt_chars: int = bounded(500, 1)
    max_reference_bytes: int = bounded(20_000_000, 1)
    max_reference_seconds: float = bounded(30.0, 0.1)
    max_body_bytes: int = bounded(65_536, 1024)  # larger request bodies get 413
    shard_retries: int = bounded(2, 0)  # extra tries of a shard whose Generator replica died
    stale_after_s: float = bounded(30.0, 1.0)  # an ingress's lease on its instruments; lapsed, another adopts them
    api_keys: list[str] = field(default_factory=list)  # empty: no key needed; also INSTRUMENTGEN_API_KEYS
    host: str = "127.0.0.1"
    port: int = bounded(8000, 1, 65535)
    library: str = ""  # a batch library (jobs.render's out) listed at GET /v1/library; empty: none (404)
    max_upload_bytes: int = bounded(20_000_000, 1)  # an uploaded reference recording (multipart POST)
    max_upload_seconds: float = bounded(30.0, 0.1)


@dataclass
class Config:
    """The whole configuration: one section per part of the system (see each section's class)."""

    name: str = "base"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    clap: ClapConfig = field(default_factory=ClapConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


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


def _config_chain(name_or_path: str) -> list[Any]:
    """The named YAML after the configs it `extends` (a config name), outermost first."""
    chain, seen = [], set()
    while name_or_path is not None:
        if name_or_path in seen:
            raise ConfigError(f"config={name_or_path!r} extends itself; allowed: a chain of distinct configs")
        seen.add(name_or_path)
        node = _read_yaml(name_or_path)
        name_or_path = node.pop("extends", None)
        chain.insert(0, node)
    return chain


def load_config(name_or_path: str = "base", overrides: Sequence[str] = ()) -> Config:
    """Merge base.yaml, the named config and `key=value` overrides into a validated `Config`."""
    try:
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, _read_yaml("base"), *_config_chain(name_or_path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {reason}") from None
    _check_values(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as nested plain dicts (for JSON manifests and hashes)."""
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
            raise ConfigError(
                f"argument {arg!r} is not key=value; use config=<name> and dotted keys like model.num_layers=4"
            )
    return name, rest
