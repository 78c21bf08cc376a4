"""Where `jobs.stage_weights` puts the pretrained weights in a bucket, and the config keys that read them.

One table, used by the staging job, the deploy renderer (every RayJob and the RayService) and the
paper check, so that what is uploaded is exactly what every stage reads:

    <bucket>/weights/dac/weights_44khz_8kbps_0.0.1.pth       codec.weights
    <bucket>/weights/clap/music_audioset_epoch_15_esc_90.14.pt   clap.weights
    <bucket>/weights/roberta-base/                             clap.tokenizer (a folder)
    <bucket>/weights/vggish/vggish-10086976.pth                metrics.vggish_weights
    <bucket>/weights/manifest.json                             sha256 and size of every file, written last

Each file also has `<file>.sha256` beside it, which `weights.local_file` checks its copy against.
The names are the releases' own, so a file fetched by dac or laion_clap can be staged as it is.
"""

from __future__ import annotations

from typing import NamedTuple

from instrumentgen import storage

WEIGHTS_PREFIX = "weights"


class StagedWeight(NamedTuple):
    """One staged weight: the argument of jobs.stage_weights, its path under the prefix, the config key."""

    argument: str
    path: str
    key: str
    folder: bool = False


STAGED = (
    StagedWeight("codec", "dac/weights_44khz_8kbps_0.0.1.pth", "codec.weights"),
    StagedWeight("clap", "clap/music_audioset_epoch_15_esc_90.14.pt", "clap.weights"),
    StagedWeight("tokenizer", "roberta-base", "clap.tokenizer", folder=True),
    StagedWeight("vggish", "vggish/vggish-10086976.pth", "metrics.vggish_weights"),
)


def weights_url(bucket: str) -> str:
    """`s3://b/prefix` -> `s3://b/prefix/weights`: the folder jobs.stage_weights writes."""
    return storage.join(bucket, WEIGHTS_PREFIX)


def staged_overrides(bucket: str) -> dict[str, str]:
    """{config key: URL} of every staged weight under `bucket`, e.g. {"codec.weights": "s3://b/weights/dac/..."}."""
    return {weight.key: storage.join(weights_url(bucket), weight.path) for weight in STAGED}
