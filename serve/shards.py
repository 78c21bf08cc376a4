"""The unit of generation work and its records in storage: what a Generator is asked to render, what it
leaves behind, and which slots are taken by a render still running.

Under an instrument's folder, `shards/` holds, per rendered shard, `<key>.pt` (the `ShardResult`,
written by the Generator that rendered it, so it survives whoever asked for it) and, per render
started, `<key>.<token>.claim` (JSON: worker, slots, until), renewed while the render runs. A
dispatcher renders only the slots that neither a result nor a live claim covers, so a shard whose
caller died keeps running and is waited for, never rendered a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import torch

from instrumentgen import storage
from instrumentgen.audio import decode_audio
from instrumentgen.config import Config, GenerateConfig
from instrumentgen.instruments.generate import GenerateError, InstrumentCue
from instrumentgen.instruments.instrument import note_file
from instrumentgen.instruments.manifest import InstrumentManifest
from instrumentgen.instruments.slices import (
    ShardResult,
    candidate_url,
    embedded_cue,
    kept_note_urls,
    render_shard,
    score_shards,
    write_instrument,
)
from instrumentgen.vocab import VELOCITIES

SHARDS_DIR, RESULT, CLAIM = "shards", ".pt", ".claim"
CLAIM_POLL_S = 0.5  # how often a shard waits on another render of its slots


@dataclass
class ShardJob:
    """One Generator call: render `slots` (S (pitch, velocity) pairs, slot order) of the instrument at `url`
    with the embedded `cue` and `gen` (its seed is the instrument's), k = `candidates` per slot, notes in
    `audio_format`; a claim on the slots lasts `lease_s` and is renewed while the render runs."""

    instrument: str
    url: str
    cue: InstrumentCue
    gen: GenerateConfig
    slots: list[tuple[int, int]]
    audio_format: str
    candidates: int
    lease_s: float


async def render_once(job: ShardJob, render: Callable[[ShardJob], None], worker: str) -> dict:
    """Run `render(job)` (which writes the notes and the result) in a worker thread unless every slot of
    `job` has a stored result; wait first while another live render claims some of them; claim the
    slots while rendering, renewing the claim every `job.lease_s / 3`.
    -> {key, rendered: whether this call rendered, worker}."""
    wanted = set(job.slots)
    state = await asyncio.to_thread(progress, job.url, job.slots)
    while state.claimed & wanted and not wanted <= state.done:
        await asyncio.sleep(CLAIM_POLL_S)
        state = await asyncio.to_thread(progress, job.url, job.slots)
    key = shard_key(job.slots)
    if wanted <= state.done:
        return {"key": key, "rendered": False, "worker": worker}
    token = new_token()
    await asyncio.to_thread(write_claim, job.url, job.slots, worker, job.lease_s, token)
    # Shielded: a caller that gives up (its ingress died or shut down) leaves the render running and
    # its claim renewed until the result is stored, so nobody renders these slots a second time.
    await asyncio.shield(asyncio.ensure_future(_render_claimed(job, render, worker, token)))
    return {"key": key, "rendered": True, "worker": worker}


async def _render_claimed(job: ShardJob, render: Callable[[ShardJob], None], worker: str, token: str) -> None:
    task = asyncio.ensure_future(asyncio.to_thread(render, job))
    while not task.done():
        await asyncio.wait([task], timeout=job.lease_s / 3)
        if not task.done():
            await asyncio.to_thread(write_claim, job.url, job.slots, worker, job.lease_s, token)
    await task


def embed_request_cue(cue: dict, clap, model_cfg, max_reference_seconds: float) -> InstrumentCue:
    """{prompt | reference_audio (bytes of a recording) | family / source} -> the embedded cue every shard
    uses (CLAP run once; the recording cut at `max_reference_seconds`)."""
    reference = None
    if cue.get("reference_audio") is not None:
        audio, rate = decode_audio(cue["reference_audio"], "reference_audio_url")
        reference = (torch.from_numpy(audio[: round(max_reference_seconds * rate)]), rate)
    full = InstrumentCue(
        prompt=cue.get("prompt"), reference_audio=reference, family=cue.get("family"), source=cue.get("source")
    )
    return embedded_cue(full, clap, model_cfg)


def render_and_store(job: ShardJob, lm, codec, cfg: Config, worker: str, generator: dict) -> None:
    """`render_shard` of `job` (its notes written), then its result stored with `generator`'s info."""
    result = render_shard(
        lm=lm,
        codec=codec,
        clap=None,
        cue=job.cue,
        gen_cfg=job.gen,
        duration_s=cfg.data.note_duration_s,
        slots=job.slots,
        url=job.url,
        audio_format=job.audio_format,
        candidates=job.candidates,
        metrics_cfg=cfg.metrics,
        worker=worker,
    )
    write_result(job.url, result, generator)


def request_slots(request: dict) -> list[tuple[int, int]]:
    """The (pitch, velocity) slots of a request, pitch-major like `cues.instrument_grid`."""
    keys = range(request["keys"]["low"], request["keys"]["high"] + 1)
    return [(pitch, velocity) for pitch in keys for velocity in VELOCITIES if velocity in request["velocities"]]


def shard_key(slots: list[tuple[int, int]]) -> str:
    """The record name of a shard: its first slot and its size, e.g. `060_v050_n8`."""
    pitch, velocity = slots[0]
    return f"{pitch:03d}_v{velocity:03d}_n{len(slots)}"


def folder(url: str) -> str:
    """The shard records' folder of the instrument at `url`."""
    return storage.join(url, SHARDS_DIR)


def write_result(url: str, result: ShardResult, generator: dict) -> None:
    """Store a shard's result and the `generator` that rendered it (codec / CLAP ids, sample rate) under
    the instrument at `url` (one atomic object)."""
    buffer = io.BytesIO()
    torch.save({"result": dataclasses.asdict(result), "generator": generator}, buffer)
    storage.write_bytes(storage.join(folder(url), shard_key(result.slots) + RESULT), buffer.getvalue())


def read_result(record_url: str) -> tuple[ShardResult, dict]:
    """The `ShardResult` stored at `record_url` (slots back as tuples) and its generator's info."""
    record = torch.load(io.BytesIO(storage.read_bytes(record_url)), map_location="cpu", weights_only=True)
    fields = record["result"]
    return ShardResult(**{**fields, "slots": [tuple(slot) for slot in fields["slots"]]}), record["generator"]


def write_claim(url: str, slots: list[tuple[int, int]], worker: str, lease_s: float, token: str) -> None:
    """Claim `slots` for `lease_s` from now (a new claim, or the renewal of claim `token`)."""
    claim = {"worker": worker, "slots": [list(s) for s in slots], "until": time.time() + lease_s}
    storage.write_json(storage.join(folder(url), f"{shard_key(slots)}.{token}{CLAIM}"), claim)


def new_token() -> str:
    """A name for one render's claim."""
    return uuid.uuid4().hex[:12]


@dataclass
class Progress:
    """What storage says about an instrument's shards: result URLs (slot order of their first slot),
    the slots they cover, the slots under a live claim, and the claims ever made per shard key."""

    results: list[str]
    done: set[tuple[int, int]]
    claimed: set[tuple[int, int]]
    claims: dict[str, int]


def progress(url: str, order: list[tuple[int, int]]) -> Progress:
    """Read the shard records of the instrument at `url`; `order` is its slot list."""
    index = {slot: i for i, slot in enumerate(order)}
    results, done, claimed, claims, now = [], set(), set(), {}, time.time()
    for record in storage.list_files(folder(url)):
        name = record.rsplit("/", 1)[-1]
        if name.endswith(RESULT):
            key = name[: -len(RESULT)]
            slots = slots_of_key(key, order)
            if slots and not done.intersection(slots):
                results.append(record)
                done.update(slots)
        elif name.endswith(CLAIM):
            key = name.split(".", 1)[0]
            claims[key] = claims.get(key, 0) + 1
            try:
                claim = storage.read_json(record)
            except Exception:  # removed between the listing and the read: not live
                continue
            if claim["until"] > now:
                claimed.update(tuple(s) for s in claim["slots"])
    results.sort(key=lambda r: index[slots_of_key(r.rsplit("/", 1)[-1][: -len(RESULT)], order)[0]])
    return Progress(results, done, claimed - done, claims)


def slots_of_key(key: str, order: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The slots a shard key names within `order` ([] when it names none of them)."""
    try:
        head, count = key.rsplit("_n", 1)
        pitch, velocity = head.split("_v")
        start = order.index((int(pitch), int(velocity)))
    except ValueError:
        return []
    return order[start : start + int(count)]


def missing_runs(order: list[tuple[int, int]], taken: set[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    """The slots of `order` not in `taken`, as runs of consecutive slots of at most `size` each, so any
    mix of stored and new shards still concatenates in slot order."""
    runs, run = [], []
    for slot in order:
        if slot in taken:
            if run:
                runs.append(run)
            run = []
            continue
        run.append(slot)
        if len(run) == size:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs


def finish(url: str, order: list[tuple[int, int]], metadata: dict, audio_format: str, duration_s: float) -> dict:
    """Score and write the instrument at `url` from the shard results in storage (its slots `order`);
    -> the manifest. Idempotent: a run cut off anywhere is finished by running it again (notes a cut-off
    run already moved out of staging are staged again first)."""
    state = progress(url, order)
    if state.done != set(order):
        raise GenerateError(
            f"{len(set(order) - state.done)} of {len(order)} slots have no stored result; "
            "allowed: finishing once every shard is rendered"
        )
    records = [read_result(record) for record in state.results]
    generator = records[0][1]
    scored = score_shards([result for result, _ in records])
    files = [storage.join(url, note_file(p, v, audio_format)) for p, v in scored.slots]
    for source, kept in zip(kept_note_urls(url, scored, audio_format), files):
        if source != kept and not storage.exists(source):
            storage.write_bytes(source, storage.read_bytes(kept))
    rate = generator["sample_rate_hz"]
    metadata = {
        **metadata,
        "codec_model_id": generator["codec_model_id"],
        "clap_model_id": generator["clap_model_id"],
    }
    return write_instrument(url, scored, metadata, audio_format, rate, round(duration_s * rate))


def copy_notes(
    parent: str, child: str, order: list[tuple[int, int]], chosen: set, audio_format: str, candidates: int
) -> None:
    """Store in the instrument at `child` what the done instrument at `parent` (slot order `order`) has for
    every slot not in `chosen`: its kept note's bytes (where `render_shard` would have staged each of the
    `candidates`, so whichever is kept is the parent's note) and a shard result per run of such slots
    holding the parent's kept codes, TC features, f0 and gain (repeated per candidate). Idempotent."""
    kept = {(n.pitch, n.velocity): n.candidate for n in InstrumentManifest.read(parent).notes}
    rows, generator = {}, None
    for record in progress(parent, order).results:
        result, generator = read_result(record)
        for i, slot in enumerate(result.slots):
            c = kept[slot]
            rows[slot] = (result.codes[c, i], result.features[c, i], result.f0_hz[c, i], result.gains[c, i])
            sizes = result.feature_sizes
    missing = [slot for slot in order if slot not in chosen and slot not in rows]
    if missing:
        raise GenerateError(f"the parent has no shard result for {len(missing)} slots; allowed: a served instrument")
    for run in missing_runs(order, set(chosen), len(order)):
        for pitch, velocity in run:
            data = storage.read_bytes(storage.join(parent, note_file(pitch, velocity, audio_format)))
            for candidate in range(candidates):
                staged = candidate_url(child, candidate, candidates)
                storage.write_bytes(storage.join(staged, note_file(pitch, velocity, audio_format)), data)

        def stack(j: int, run=run) -> torch.Tensor:
            return torch.stack([rows[slot][j] for slot in run]).unsqueeze(0).repeat_interleave(candidates, 0)

        result = ShardResult(
            slots=run,
            codes=stack(0),
            features=stack(1),
            f0_hz=stack(2),
            gains=stack(3),
            feature_sizes=sizes,
            worker="parent",
        )
        write_result(child, result, generator)
