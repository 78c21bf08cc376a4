"""The instruments an ingress replica accepts: ids, status in storage, the background fan-out to Generators.

Status lives in storage, never only in a replica's memory: `<serve.storage>/<id>/status.json`
(queued / running with notes done / failed with a reason), written atomically at every change,
and `manifest.json`, written last by the Scorer, which alone marks an instrument done. So any
ingress replica answers a GET, a restarted one still knows, and a failed or interrupted
instrument never has a manifest.

Ids: sha256 of the normalised request (defaults filled in, velocities sorted, the reference
recording by the sha256 of its bytes), the seed and the model id; never raw text in a path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

import fsspec
from pydantic import BaseModel

from instrumentgen import storage
from instrumentgen.audio import decode_audio
from instrumentgen.config import Config
from instrumentgen.errors import UserError
from instrumentgen.instruments.instrument import DSPRESET_FILE, SFZ_FILE
from instrumentgen.instruments.slices import BUNDLE_FILE, CODES_FILE
from instrumentgen.vocab import VELOCITIES
from serve.schema import SEED_MAX, RequestError

STATUS = "status.json"
ID_PATTERN = r"^[0-9a-f]{32}$"
# The only paths served from an instrument's folder: its notes, presets, bundle, codes and records.
FILE_PATTERN = re.compile(
    r"^(notes/\d{3}_v\d{3}\.(wav|flac)|instrument\.(sfz|dspreset|zip)|codes\.npy|"
    r"manifest\.json|status\.json)$"
)
REFERENCE_TIMEOUT_S = 20
log = logging.getLogger("ray.serve")


class Busy(Exception):
    """More instruments in flight than `serve.max_instruments_in_flight`: answered 503 with Retry-After."""

    def __init__(self, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class ShardFailed(Exception):
    """A shard that failed on every try; the instrument ends `failed` with this reason."""


@dataclass
class Job:
    """One accepted instrument: what the background task needs."""

    id: str
    url: str
    seed: int
    request: dict  # normalised, JSON-serialisable (stored in status.json)
    cue: dict  # for Generator.embed: prompt / reference_audio (bytes) / family / source
    slots: list[tuple[int, int]]
    retries: int = 0  # Generator calls tried again (a replica died): reported in status.json


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


def check_reference(data: bytes, max_seconds: float) -> None:
    """`RequestError` unless `data` is decodable audio no longer than `max_seconds`."""
    try:
        audio, rate = decode_audio(data, "reference_audio_url")
    except UserError as e:
        raise RequestError("reference_audio_url", str(e)) from None
    if len(audio) > max_seconds * rate:
        raise RequestError(
            "reference_audio_url",
            f"the recording lasts {len(audio) / rate:.1f} s; "
            f"allowed: at most {max_seconds} s (serve.max_reference_seconds)",
        )


def instrument_id(request: dict, seed: int, model_id: str) -> str:
    """32 hex digits of sha256 over the normalised request, the seed and the model id."""
    text = json.dumps({"request": request, "seed": seed, "model_id": model_id}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def request_slots(request: dict) -> list[tuple[int, int]]:
    """The (pitch, velocity) slots of a request, pitch-major like `cues.instrument_grid`."""
    keys = range(request["keys"]["low"], request["keys"]["high"] + 1)
    return [(pitch, velocity) for pitch in keys for velocity in VELOCITIES if velocity in request["velocities"]]


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1][:300] if text else ''}"


class InstrumentService:
    """POST/GET logic of one ingress replica; the HTTP routes in `serve.ingress` call it."""

    def __init__(self, cfg: Config, generator, scorer):
        self.cfg, self.limits = cfg, cfg.serve
        self.generator, self.scorer = generator, scorer
        self.tasks: dict[str, asyncio.Task | None] = {}  # None: accepted, its task about to start
        self._info: dict | None = None
        self._status_lock = asyncio.Lock()

    def url(self, instrument: str) -> str:
        """The storage folder of an instrument."""
        return storage.join(self.limits.storage, instrument)

    async def model_info(self) -> dict:
        """The Generator's model id and conditioning (asked once per ingress replica)."""
        if self._info is None:
            self._info = await self.generator.info.remote()
        return self._info

    async def submit(self, body: BaseModel) -> tuple[int, dict]:
        """A validated request -> (HTTP status, {id, status_url, seed, status}); starts the work if new."""
        info = await self.model_info()
        request = body.model_dump(exclude={"seed"})
        if info["conditioning"] != "clap" and (body.prompt or body.reference_audio_url):
            field = "prompt" if body.prompt else "reference_audio_url"
            raise RequestError(
                field, "this deployment's model is conditioned on metadata only; allowed cue: family and/or source"
            )
        cue = {"prompt": body.prompt, "family": body.family, "source": body.source}
        if body.reference_audio_url is not None:
            data = await asyncio.to_thread(read_reference, body.reference_audio_url, self.limits.max_reference_bytes)
            await asyncio.to_thread(check_reference, data, self.limits.max_reference_seconds)
            request["reference_audio_url"] = "sha256:" + hashlib.sha256(data).hexdigest()
            cue["reference_audio"] = data
        seed = body.seed if body.seed is not None else secrets.randbelow(SEED_MAX + 1)
        instrument = instrument_id(request, seed, info["model_id"])
        answer = {"id": instrument, "status_url": f"/v1/instruments/{instrument}", "seed": seed}
        if instrument in self.tasks:
            return 202, {**answer, "status": "running"}
        existing = await asyncio.to_thread(self.status, instrument)
        if existing is not None and not self._restartable(existing):
            return (200 if existing["status"] == "done" else 202), {**answer, "status": existing["status"]}
        if len(self.tasks) >= self.limits.max_instruments_in_flight:
            raise Busy(
                f"{len(self.tasks)} instruments are in flight on this replica "
                f"(serve.max_instruments_in_flight={self.limits.max_instruments_in_flight}); retry later",
                retry_after_s=10,
            )
        job = Job(instrument, self.url(instrument), seed, request, cue, request_slots(request))
        self.tasks[instrument] = None  # the place is taken before the next await: the cap holds under concurrency
        try:
            await self._write_status(job, "queued", 0)
        except BaseException:
            self.tasks.pop(instrument, None)
            raise
        self.tasks[instrument] = asyncio.create_task(self._run(job))
        return 202, {**answer, "status": "queued"}

    def _restartable(self, status: dict) -> bool:
        """A failed instrument, or a running one nobody has advanced for `serve.stale_after_s` (its
        ingress replica died), starts again on a new POST; the same seed gives the same notes."""
        if status["status"] == "failed":
            return True
        idle_s = time.time() - status["updated_at"]
        return status["status"] in ("queued", "running") and idle_s > self.limits.stale_after_s

    def status(self, instrument: str) -> dict | None:
        """The stored status of an instrument (None if unknown), with the manifest's results once done."""
        url = self.url(instrument)
        manifest_url = storage.join(url, storage.MANIFEST)
        status_url = storage.join(url, STATUS)
        if storage.exists(manifest_url):
            manifest = storage.read_json(manifest_url)
            status = storage.read_json(status_url) if storage.exists(status_url) else {}
            return {**status, **self._results(instrument, manifest), "status": "done"}
        return storage.read_json(status_url) if storage.exists(status_url) else None

    def _results(self, instrument: str, manifest: dict) -> dict:
        files = f"/v1/instruments/{instrument}/files"
        return {
            "id": instrument,
            "seed": manifest["seed"],
            "model_id": manifest["model_id"],
            "notes_done": len(manifest["notes"]),
            "notes_total": len(manifest["notes"]),
            "tc": manifest["tc"],
            "tc_without_selection": manifest["tc_without_selection"],
            "mad_pitch": manifest["mad_pitch"],
            "unvoiced": manifest["unvoiced"],
            "candidates": manifest["candidates"],
            "workers": manifest["workers"],
            "format": manifest["format"],
            "sfz": f"{files}/{SFZ_FILE}",
            "dspreset": f"{files}/{DSPRESET_FILE}",
            "bundle": f"{files}/{BUNDLE_FILE}",
            "codes": f"{files}/{CODES_FILE}",
            "manifest": f"{files}/{storage.MANIFEST}",
            "notes": [
                {
                    "pitch": n["pitch"],
                    "velocity": n["velocity"],
                    "url": f"{files}/{n['file']}",
                    "gain": n["gain"],
                    "f0_hz": n["f0_hz"],
                    "pitch_error_semitones": n["pitch_error_semitones"],
                }
                for n in manifest["notes"]
            ],
        }

    def file_url(self, instrument: str, path: str) -> str | None:
        """The storage URL of an instrument's file, or None for any path outside the instrument's
        own files (`..`, absolute paths, encoded variants, temporary or candidate objects)."""
        if not re.match(ID_PATTERN, instrument) or not FILE_PATTERN.match(path):
            return None
        url = storage.join(self.url(instrument), path)
        return url if storage.exists(url) else None

    async def _write_status(self, job: Job, state: str, notes_done: int, error: str | None = None) -> None:
        status = {
            "id": job.id,
            "status": state,
            "seed": job.seed,
            "request": job.request,
            "notes_done": notes_done,
            "notes_total": len(job.slots),
            "retries": job.retries,
            "updated_at": time.time(),
            "error": error,
        }
        async with self._status_lock:
            await asyncio.to_thread(storage.write_json, storage.join(job.url, STATUS), status)

    async def _run(self, job: Job) -> None:
        """The background work of one instrument: embed once, fan shards out, gather in slot order, finish."""
        try:
            await self._write_status(job, "running", 0)
            cue = await self._call(job, "embed", job.cue)
            request = job.request
            gen = dataclasses.replace(
                self.cfg.generate,
                seed=job.seed,
                cfg_coef=request["cfg_coef"],
                top_k=request["top_k"],
                temperature=request["temperature"],
            )
            size = self.limits.shard_size
            shards = [job.slots[i : i + size] for i in range(0, len(job.slots), size)]
            done = 0

            async def shard(slots: list[tuple[int, int]]):
                nonlocal done
                result = await self._call(
                    job,
                    "generate_shard",
                    {
                        "cue": cue,
                        "gen": gen,
                        "slots": slots,
                        "url": job.url,
                        "format": request["format"],
                        "candidates": request["candidates"],
                    },
                )
                done += len(slots)
                await self._write_status(job, "running", done)
                return result

            tasks = [asyncio.ensure_future(shard(slots)) for slots in shards]
            try:
                results = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise
            info = await self.model_info()
            metadata = {
                "id": job.id,
                **{k: v for k, v in request.items() if k in ("prompt", "family", "source")},
                "reference_audio": request.get("reference_audio_url"),
                "seed": job.seed,
                "model_id": info["model_id"],
                "codec_model_id": info["codec_model_id"],
                "clap_model_id": info["clap_model_id"],
                "request": request,
                "duration_s": self.cfg.data.note_duration_s,
            }
            num_samples = round(self.cfg.data.note_duration_s * info["sample_rate_hz"])
            await self.scorer.finish.remote(
                job.url, results, metadata, request["format"], info["sample_rate_hz"], num_samples
            )
            await self._write_status(job, "done", len(job.slots))
        except asyncio.CancelledError:
            await asyncio.shield(
                self._write_status(
                    job, "failed", 0, "interrupted: the server shut down; POST the same request to start it again"
                )
            )
            raise
        except Exception as e:  # every failure ends the instrument `failed` with its reason, never a manifest
            log.warning("instrument %s failed: %s", job.id, _short(e))
            await self._write_status(job, "failed", 0, _short(e))
        finally:
            self.tasks.pop(job.id, None)

    async def _call(self, job: Job, method: str, payload: dict):
        """One Generator call with bounded retries: a replica that dies (ray.kill, a lost node) is
        replaced by Serve and the call goes to another; a full queue waits without using a retry.
        A `UserError` is the request's fault and is not retried."""
        from ray.serve.exceptions import BackPressureError

        failures, waits = 0, 0
        while True:
            try:
                return await getattr(self.generator, method).remote(payload)
            except UserError:
                raise
            except BackPressureError:
                waits += 1
                if waits > 600:
                    raise ShardFailed("the Generators' queues stayed full for 10 minutes") from None
                await asyncio.sleep(1.0)
            except Exception as e:
                failures += 1
                job.retries += 1
                log.warning(
                    "Generator.%s failed (try %d of %d): %s", method, failures, self.limits.shard_retries + 1, _short(e)
                )
                if failures > self.limits.shard_retries:
                    raise ShardFailed(
                        f"Generator.{method} failed {failures} times "
                        f"(serve.shard_retries={self.limits.shard_retries}); last: {_short(e)}"
                    ) from None
                await asyncio.sleep(min(2.0**failures, 10.0))

    async def shutdown(self) -> None:
        """Cancel in-flight instruments (each ends `failed`, 'interrupted'); their manifests were never written."""
        tasks = [task for task in self.tasks.values() if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
