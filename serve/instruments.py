"""The instruments an ingress replica accepts: request normalisation, ids, reference recordings, submit.

Status lives in storage (`serve.store`), the work in `serve.runner`; this module turns a validated
request into an instrument id and either answers from storage or starts (or restarts) the work.

Ids: sha256 of the normalised request (defaults filled in, velocities sorted, the reference
recording by the sha256 of its bytes), the seed and the model id; never raw text in a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from typing import Awaitable, Callable

import fsspec
from pydantic import BaseModel

from instrumentgen import storage
from instrumentgen.audio import decode_audio
from instrumentgen.config import Config
from instrumentgen.errors import UserError
from instrumentgen.model.lm import InstrumentLM
from serve.runner import CUE_FILE, REFERENCE_FILE, Job, Runner
from serve.schema import SEED_MAX, RegenerateRequest, RequestError
from serve.shards import copy_notes, request_slots
from serve.store import RUNNING, StatusStore, lease_live

REFERENCE_TIMEOUT_S = 20
REFERENCE_RATES_HZ = (8000, 192000)  # CLAP resamples to 48 kHz; below 8 kHz no timbre is left
UPLOAD_FIELD = "reference_audio"  # the multipart file field of POST /v1/instruments


class NotFound(RequestError):
    """An unknown instrument: answered 404."""


class NotReady(RequestError):
    """An instrument that cannot be used for this yet (not done): answered 409."""


class Busy(Exception):
    """More instruments in flight than `serve.max_instruments_in_flight`: answered 503 with Retry-After."""

    def __init__(self, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


def read_reference(url: str, max_bytes: int) -> bytes:
    """The bytes at `url` (http, https, s3), at most `max_bytes`; `RequestError` naming the field otherwise."""
    options = {"client_kwargs": {"timeout": _http_timeout()}} if url.startswith("http") else {}
    try:
        with fsspec.open(url, "rb", **options) as f:
            data = f.read(max_bytes + 1)
    except Exception as e:  # any reason a URL cannot be read is the client's: say which
        raise RequestError(
            "reference_audio_url",
            f"{url!r} is not reachable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); "
            "allowed: a readable http(s):// or s3:// URL",
        ) from None
    if len(data) > max_bytes:
        raise RequestError(
            "reference_audio_url",
            f"the recording is larger than {max_bytes} bytes; "
            f"allowed: at most {max_bytes} bytes (serve.max_reference_bytes)",
        )
    return data


def _http_timeout():
    import aiohttp

    return aiohttp.ClientTimeout(total=REFERENCE_TIMEOUT_S)


def check_reference(
    data: bytes, max_seconds: float, field: str = "reference_audio_url", setting: str = "serve.max_reference_seconds"
) -> None:
    """`RequestError` naming `field` unless `data` is decodable audio (WAV/FLAC/OGG, by soundfile) at a
    rate in `REFERENCE_RATES_HZ`, no longer than `max_seconds` (the config `setting`)."""
    if not data:
        raise RequestError(field, "the recording is empty (0 bytes); allowed: a WAV, FLAC or OGG file")
    try:
        audio, rate = decode_audio(data, field)
    except UserError as e:
        raise RequestError(field, str(e)) from None
    low, high = REFERENCE_RATES_HZ
    if not low <= rate <= high:
        raise RequestError(field, f"the recording's sample rate is {rate} Hz; allowed: {low} .. {high} Hz")
    if len(audio) > max_seconds * rate:
        raise RequestError(
            field, f"the recording lasts {len(audio) / rate:.1f} s; allowed: at most {max_seconds} s ({setting})"
        )


def instrument_id(request: dict, seed: int, model_id: str) -> str:
    """32 hex digits of sha256 over the normalised request, the seed and the model id."""
    text = json.dumps({"request": request, "seed": seed, "model_id": model_id}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


ReadReference = Callable[[str, int], bytes]


def model_identity(checkpoint: str) -> dict:
    """{model_id, conditioning} of the checkpoint the Generators load, computed as they compute it
    (`InstrumentLM.model_id`), so an ingress never asks a Generator (whose queue holds shards)."""
    lm = InstrumentLM.load(checkpoint)
    return {"model_id": lm.model_id, "conditioning": lm.cfg.conditioning}


class Instruments:
    """POST logic of one ingress replica: answer from storage, or start the work on its `Runner`.
    `identity` gives {model_id, conditioning}; `read` fetches a reference recording (url, max bytes)."""

    def __init__(
        self,
        cfg: Config,
        store: StatusStore,
        runner: Runner,
        identity: Callable[[], Awaitable[dict]],
        read: ReadReference | None = None,
        uploaded: Callable[[bytes], bytes] | None = None,
    ):
        self.cfg, self.limits, self.store, self.runner = cfg, cfg.serve, store, runner
        self.identity, self.read = identity, read or read_reference
        self.uploaded = uploaded or (lambda data: data)  # tests of the schema alone: a stub recording

    async def submit(self, body: BaseModel, upload: bytes | None = None) -> tuple[int, dict]:
        """A validated request -> (HTTP status, {id, status_url, seed, status}); starts the work if new,
        and again for a failed or stale instrument (only what storage lacks is rendered). `upload`: the
        bytes of an uploaded reference recording, the cue (`body` has none); the same recording uploaded
        or at a URL is the same instrument (its sha256 is in the request)."""
        info = await self.identity()
        request = body.model_dump(exclude={"seed"})
        if info["conditioning"] != "clap" and (body.prompt or body.reference_audio_url or upload is not None):
            field = "prompt" if body.prompt else "reference_audio_url" if upload is None else UPLOAD_FIELD
            raise RequestError(
                field, "this deployment's model is conditioned on metadata only; allowed cue: family and/or source"
            )
        data = None
        if upload is not None:
            data = await asyncio.to_thread(self.uploaded, upload)
            await asyncio.to_thread(
                check_reference, data, self.limits.max_upload_seconds, UPLOAD_FIELD, "serve.max_upload_seconds"
            )
            request["reference_audio_url"] = "sha256:" + hashlib.sha256(data).hexdigest()
        elif body.reference_audio_url is not None:
            data = await asyncio.to_thread(self.read, body.reference_audio_url, self.limits.max_reference_bytes)
            await asyncio.to_thread(check_reference, data, self.limits.max_reference_seconds)
            request["reference_audio_url"] = "sha256:" + hashlib.sha256(data).hexdigest()
        seed = body.seed if body.seed is not None else secrets.randbelow(SEED_MAX + 1)
        return await self._start(request, seed, info, data)

    async def regenerate(self, parent: str, body: RegenerateRequest) -> tuple[int, dict]:
        """A new instrument from done instrument `parent`: the slots `body` names rendered again (its
        seed), every other note, its codes and its TC features copied from the parent byte for byte;
        the child's request names the parent and the slots, so the same seeded body is the same child."""
        status = await asyncio.to_thread(self.store.raw, parent)
        if status is None and not await asyncio.to_thread(self.store.is_done, parent):
            raise NotFound("id", f"no instrument {parent}; allowed: an id from POST /v1/instruments")
        if status is None or not await asyncio.to_thread(self.store.is_done, parent):
            raise NotReady(
                "id",
                f"instrument {parent} is {status['status'] if status else 'not served here'}; "
                "allowed: a done instrument of POST /v1/instruments",
            )
        info = await self.identity()
        if status["model_id"] != info["model_id"]:
            raise NotReady(
                "id", f"instrument {parent} was made by {status['model_id']}; allowed: one of {info['model_id']}"
            )
        parent_request = {k: v for k, v in status["request"].items() if k not in ("parent", "regenerated")}
        slots = request_slots(parent_request)
        keys = body.keys if body.keys is not None else sorted({p for p, _ in slots})
        layers = body.velocities if body.velocities is not None else parent_request["velocities"]
        for field, asked, has in (
            ("keys", body.keys or [], sorted({p for p, _ in slots})),
            ("velocities", body.velocities or [], parent_request["velocities"]),
        ):
            missing = [value for value in asked if value not in has]
            if missing:
                raise RequestError(field, f"{missing} are not {field} of instrument {parent}; allowed: {has}")
        chosen = [(p, v) for p, v in slots if p in keys and v in layers]
        request = {**parent_request, "parent": parent, "regenerated": [list(s) for s in chosen]}
        seed = body.seed if body.seed is not None else secrets.randbelow(SEED_MAX + 1)
        parent_url = self.store.url(parent)

        def prepare(url: str) -> None:
            for name in (CUE_FILE, REFERENCE_FILE):
                source = storage.join(parent_url, name)
                if storage.exists(source):
                    storage.write_bytes(storage.join(url, name), storage.read_bytes(source))
            copy_notes(parent_url, url, slots, set(chosen), parent_request["format"], parent_request["candidates"])

        return await self._start(request, seed, info, None, prepare)

    async def _start(self, request: dict, seed: int, info: dict, data: bytes | None, prepare=None) -> tuple[int, dict]:
        """Answer from storage or start the instrument of the normalised `request` and `seed`; `data`: its
        reference recording, `prepare(url)`: stores what it starts from (a regenerate's copied notes)."""
        instrument = instrument_id(request, seed, info["model_id"])
        answer = {"id": instrument, "status_url": f"/v1/instruments/{instrument}", "seed": seed}
        if instrument in self.runner.tasks:
            return 202, {**answer, "status": "running"}
        if await asyncio.to_thread(self.store.is_done, instrument):
            return 200, {**answer, "status": "done"}
        existing = await asyncio.to_thread(self.store.raw, instrument)
        if existing is not None and existing["status"] in RUNNING and lease_live(existing):
            return 202, {**answer, "status": existing["status"]}  # another replica runs it
        if not self.runner.has_room():
            raise Busy(
                f"{len(self.runner.tasks)} instruments are in flight on this replica "
                f"(serve.max_instruments_in_flight={self.limits.max_instruments_in_flight}); retry later",
                retry_after_s=10,
            )
        url = self.store.url(instrument)
        job = Job(instrument, url, seed, request, info["model_id"], request_slots(request))
        self.runner.reserve(instrument)
        try:
            if data is not None:
                await asyncio.to_thread(storage.write_bytes, storage.join(url, REFERENCE_FILE), data)
            if prepare is not None:
                await asyncio.to_thread(prepare, url)
            await self.runner.write(job)
            await asyncio.to_thread(self.store.mark_active, instrument)
        except BaseException:
            self.runner.tasks.pop(instrument, None)
            raise
        self.runner.start(job)
        return 202, {**answer, "status": "queued"}
