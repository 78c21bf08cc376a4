"""CLAP wrapper: load a laion_clap checkpoint by name, path or URL; embed text and audio [B, 512].

`Clap.load(cfg.clap)` builds laion_clap's `CLAP_Module` for `cfg.clap.amodel` / `cfg.clap.tmodel`
and reads the weights with its `load_ckpt`:

- `weights: music` is `music_audioset_epoch_15_esc_90.14.pt` (HTSAT-base + RoBERTa), downloaded
  as upstream does when online. RoBERTa's architecture and tokenizer are read from the folder in
  `clap.tokenizer` when given (a local folder, or a URL such as the one `jobs.stage_weights`
  uploads; its weights come from the CLAP checkpoint), else from the Hugging Face cache / hub.
- `weights: tiny` is a seeded random init of the configured classes (the `tiny` config below
  registers a small HTSAT and the BPE `transformer` text tower, which needs no download),
  written once in the checkpoint format `load_ckpt` reads and always loaded back through it.
- any other value is a local path or fsspec URL of a checkpoint.

Missing files raise `WeightsError` naming the file and the config key, quickly, instead of a
hub call that hangs or a silent random init.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from pathlib import Path
from typing import Callable, Iterator

# Importing laion_clap imports transformers, and loading it builds RoBERTa from the hub: on a
# machine without internet that can hang for minutes. Offline unless the user says otherwise
# (HF_HUB_OFFLINE=0 to let names download).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import laion_clap  # noqa: E402  (after the environment above)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from clap_module import htsat as laion_htsat  # noqa: E402  (laion_clap puts clap_module on sys.path)
from clap_module import model as laion_model  # noqa: E402
from clap_module import tokenizer as laion_bpe  # noqa: E402
from clap_module.factory import add_model_config, list_models  # noqa: E402
from laion_clap import hook as laion_hook  # noqa: E402
from laion_clap.training.data import get_audio_features  # noqa: E402
from transformers import RobertaConfig, RobertaModel, RobertaTokenizer  # noqa: E402

from instrumentgen.audio import resample  # noqa: E402
from instrumentgen.config import ClapConfig  # noqa: E402
from instrumentgen.errors import UserError
from instrumentgen.pretrained import weights as weight_files  # noqa: E402
from instrumentgen.pretrained.weights import WeightsError  # noqa: E402

__all__ = ["Clap", "ClapError", "WeightsError", "random_init", "save_checkpoint"]

SAMPLE_RATE_HZ = 48000  # every laion_clap audio branch works at 48 kHz
RELEASES = {"music": "https://huggingface.co/lukewys/laion_clap/resolve/main/music_audioset_epoch_15_esc_90.14.pt"}
ROBERTA_HELP = (
    "a folder with roberta-base's config.json, vocab.json and merges.txt "
    "(from https://huggingface.co/FacebookAI/roberta-base)"
)
TINY_HTSAT_NAME = "instrumentgen-tiny"  # audio_cfg.model_name in clap_configs/tiny.json
# Same HTSAT class and input (64 mel bins, 256x256 spectrogram image), 16 wide and 1 block per
# stage instead of 96 and [2, 2, 6, 2]: a few notes embed in a fraction of a second on a CPU.
# Its window (clip_samples in clap_configs/tiny.json) is 1 s instead of 10 s: the tiny config's
# 0.5 s notes are repeated twice instead of twenty times, a tenth of the spectrogram work that
# was most of a tiny embedding's time.
TINY_HTSAT = dict(
    spec_size=256,
    patch_size=4,
    patch_stride=(4, 4),
    embed_dim=16,
    depths=[1, 1, 1, 1],
    num_heads=[1, 1, 2, 4],
    window_size=8,
)
TINY_SEED = 0

CONFIG_DIR = Path(__file__).parent / "clap_configs"
add_model_config(CONFIG_DIR)


class ClapError(UserError):
    """Bad input to CLAP: the message names the value and what is allowed."""


class _Source:
    """Stands in for a transformers class whose `from_pretrained('roberta-base')` laion_clap calls."""

    def __init__(self, make: Callable[[], object]):
        self.make = make

    def from_pretrained(self, *args, **kwargs):
        return self.make()


def _create_htsat(audio_cfg, enable_fusion=False, fusion_type="None"):
    """laion_clap's `create_htsat_model` plus one more size, `TINY_HTSAT_NAME`."""
    if audio_cfg.model_name != TINY_HTSAT_NAME:
        return laion_htsat.create_htsat_model(audio_cfg, enable_fusion, fusion_type)
    return laion_htsat.HTSAT_Swin_Transformer(
        num_classes=audio_cfg.class_num,
        config=audio_cfg,
        enable_fusion=enable_fusion,
        fusion_type=fusion_type,
        **TINY_HTSAT,
    )


def _bpe_tokenize(texts, **kwargs) -> torch.Tensor:
    """The `transformer` tower's own BPE tokenizer (shipped with laion_clap): texts -> [B, 77] long."""
    return laion_bpe.tokenize(texts)


@contextlib.contextmanager
def _laion_sources(tmodel: str, tokenizer_dir: str) -> Iterator[None]:
    """While laion_clap builds a model: its tokenizer and RoBERTa come from local files when we have them.

    `CLAP_Module.__init__` always loads the RoBERTa tokenizer from the hub, and `CLAP.__init__`
    loads pretrained RoBERTa weights for `tmodel=roberta` that the CLAP checkpoint overwrites.
    Patched here, for the duration of the construction only: the tokenizer (the BPE one for the
    `transformer` tower, the folder's for RoBERTa), RoBERTa built from the folder's config (its
    weights come from the checkpoint; `load_ckpt` loads strictly, so none stays random), and the
    HTSAT factory (one more size). With no folder, RoBERTa comes from the hub as upstream.
    """
    patches = [(laion_model, "create_htsat_model", _create_htsat)]
    if tmodel == "transformer":
        patches.append((laion_hook, "RobertaTokenizer", _Source(lambda: _bpe_tokenize)))
    elif tokenizer_dir:
        tokenizer = _Source(lambda: RobertaTokenizer.from_pretrained(tokenizer_dir))
        roberta = _Source(lambda: RobertaModel(RobertaConfig.from_pretrained(tokenizer_dir)))
        patches += [(laion_hook, "RobertaTokenizer", tokenizer), (laion_model, "RobertaModel", roberta)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _check_roberta_folder(folder: str) -> None:
    # transformers builds an empty tokenizer and a default config from a folder without files,
    # silently: check for them here.
    found = {p.name for p in Path(folder).iterdir()} if Path(folder).is_dir() else set()
    missing = [name for name in ("config.json", "vocab.json", "merges.txt") if name not in found]
    if "tokenizer.json" in found:
        missing = [name for name in missing if name == "config.json"]
    if missing:
        raise WeightsError(
            f"clap.tokenizer={folder!r} lacks {', '.join(missing)}; set clap.tokenizer to {ROBERTA_HELP}"
        )


def _build(cfg: ClapConfig) -> laion_clap.CLAP_Module:
    """A random-init `CLAP_Module` of `cfg.amodel` / `cfg.tmodel` on `cfg.device`."""
    if cfg.amodel not in list_models():
        raise ClapError(f"clap.amodel={cfg.amodel!r} is not allowed; allowed: {', '.join(list_models())}")
    if cfg.tokenizer and cfg.tmodel != "transformer":
        _check_roberta_folder(cfg.tokenizer)
    try:
        with _laion_sources(cfg.tmodel, cfg.tokenizer):
            return laion_clap.CLAP_Module(enable_fusion=False, device=cfg.device, amodel=cfg.amodel, tmodel=cfg.tmodel)
    except OSError as e:  # transformers' "not found / offline" for roberta-base or the folder's files
        where = (
            f"clap.tokenizer={cfg.tokenizer!r} is unreadable"
            if cfg.tokenizer
            else "roberta-base is not cached and the hub is offline"
        )
        raise WeightsError(
            f"CLAP text tower {cfg.tmodel!r}: {where} ({str(e).splitlines()[0]}); set clap.tokenizer to {ROBERTA_HELP}"
        ) from None


def random_init(cfg: ClapConfig) -> laion_clap.CLAP_Module:
    """A random-init `CLAP_Module` of `cfg.amodel` / `cfg.tmodel` on the CPU, to be saved as weights."""
    return _build(dataclasses.replace(cfg, device="cpu"))


def save_checkpoint(module: laion_clap.CLAP_Module, path: str | Path, prefix: str = "", **extra) -> None:
    """Write `module.model` in the training-checkpoint format `CLAP_Module.load_ckpt` reads.

    laion_clap's reader deletes `text_branch.embeddings.position_ids` unconditionally (released
    checkpoints carry it from transformers < 4.31), so the file must have it too. The releases
    were saved from DistributedDataParallel: `prefix="module."` and `extra` (epoch, ...) write a
    file of their layout, whose prefix the reader strips.
    """
    state_dict = dict(module.model.state_dict())
    state_dict.setdefault("text_branch.embeddings.position_ids", torch.arange(module.model.context_length)[None])
    torch.save({**extra, "state_dict": {prefix + k: v for k, v in state_dict.items()}}, str(path))


def tiny_file(cfg: ClapConfig) -> Path:
    """The tiny CLAP checkpoint of `cfg` in the weights cache (written once)."""
    roberta_config = Path(cfg.tokenizer or ".", "config.json")  # its RoBERTa's size is part of the model
    uses_roberta_config = cfg.tmodel != "transformer" and cfg.tokenizer and roberta_config.is_file()
    roberta = roberta_config.read_text() if uses_roberta_config else ""
    ours = CONFIG_DIR / f"{cfg.amodel}.json"  # a config of ours may change; laion_clap's are pinned
    ours_text = ours.read_text() if ours.is_file() else ""
    recipe = [cfg.amodel, cfg.tmodel, ours_text, roberta, TINY_HTSAT]
    return weight_files.seeded_file(
        "clap",
        f"clap-tiny-{cfg.amodel}-{cfg.tmodel}.pt",
        recipe,
        TINY_SEED,
        lambda path: save_checkpoint(random_init(cfg), path),
    )


def _checkpoint_file(cfg: ClapConfig) -> tuple[Path, str]:
    """cfg.clap.weights -> (local checkpoint file, model id for manifests)."""
    if cfg.weights == "tiny":
        path = tiny_file(cfg)
        return path, f"clap-tiny-{weight_files.file_digest(path)}"
    if cfg.weights in RELEASES:
        url = RELEASES[cfg.weights]
        dest = weight_files.cache_dir("clap") / url.rsplit("/", 1)[1]
        return weight_files.download(url, dest, f"CLAP {cfg.weights!r}", "clap.weights"), f"clap-{cfg.weights}"
    path = weight_files.local_file(cfg.weights, "clap", "clap.weights")
    return path, f"clap-{weight_files.file_digest(path)}"


class Clap:
    """A loaded laion_clap model: text and audio -> unit-norm joint embeddings [B, 512]."""

    def __init__(self, module: laion_clap.CLAP_Module, model_id: str):
        self.module = module.eval()
        self.model_id = model_id

    @classmethod
    def load(cls, cfg: ClapConfig) -> "Clap":
        if "://" in cfg.tokenizer:  # a folder staged in a bucket (jobs.stage_weights): copied once
            local = weight_files.local_folder(cfg.tokenizer, "tokenizer", "clap.tokenizer")
            cfg = dataclasses.replace(cfg, tokenizer=str(local))
        path, model_id = _checkpoint_file(cfg)  # before building: a missing file fails fast
        module = _build(cfg)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # load_ckpt prints progress lines
                module.load_ckpt(str(path), verbose=False)
        except (RuntimeError, KeyError, EOFError, OSError) as e:  # torch.load / strict load_state_dict
            raise WeightsError(
                f"clap.weights={cfg.weights!r}: {path} is not a CLAP checkpoint for "
                f"amodel={cfg.amodel!r}, tmodel={cfg.tmodel!r} ({str(e).splitlines()[0]})"
            ) from e
        return cls(module, model_id)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """B prompts -> [B, 512] float, unit L2 norm, on the model's device."""
        if isinstance(texts, str) or not texts:
            raise ClapError(f"texts={texts!r} is not allowed; give a non-empty list of prompts")
        blank = [i for i, text in enumerate(texts) if not text.strip()]
        if blank:
            raise ClapError(f"prompts at {blank} are empty; every prompt needs words")
        tokens = self.module.tokenizer(list(texts))
        # CLAP.get_text_embedding loops over a dict of tensors and so breaks on the `transformer`
        # tower's plain token tensor; encode_text moves either form to the device itself.
        return F.normalize(self.module.model.encode_text(tokens, self.device), dim=-1)

    @torch.no_grad()
    def embed_audio(self, audio: torch.Tensor, sample_rate_hz: int, chunk: int = 32) -> torch.Tensor:
        """[B, L] float at `sample_rate_hz` (any device) -> [B, 512] float, unit L2 norm.

        Audio is resampled to 48 kHz and cut to its first `clip_samples` (CLAP's window, 10 s for
        the released models; laion_clap crops longer audio at random, we crop deterministically).
        Shorter notes are repeated to fill it, by laion_clap's own `repeatpad`, `chunk` notes per
        forward to bound memory.
        """
        if audio.dim() != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
            raise ClapError(f"audio shape {tuple(audio.shape)} is not allowed; expected [B, L] mono, B, L > 0")
        audio_cfg, clip = self.module.model_cfg["audio_cfg"], self.clip_samples
        embeddings = []
        for part in audio.split(chunk):
            part = resample(part.to(self.device, torch.float32), sample_rate_hz, SAMPLE_RATE_HZ)
            # `get_audio_embedding_from_data` without its fixed 480000: the window is the model's own
            notes = part[:, :clip]
            windows = [get_audio_features({}, note, clip, "rand_trunc", "repeatpad", audio_cfg) for note in notes]
            embeddings.append(self.module.model.get_audio_embedding(windows))
        return torch.cat(embeddings)

    @property
    def clip_samples(self) -> int:
        """Samples at 48 kHz of the audio window the model embeds (`audio_cfg.clip_samples`)."""
        return self.module.model_cfg["audio_cfg"]["clip_samples"]
