"""The background work of an ingress replica: instruments it owns, run to the end, and work adopted from
owners that died or left.

An owner renews the lease in each of its instruments' status every `lease_s / 3`; every replica
scans `_active/` every `lease_s / 2` (and once at start) and adopts an instrument whose lease has
ended. A run, first or adopted, goes from what storage holds: the embedded cue if stored, shard
results kept, only slots that neither a result nor a live Generator claim covers dispatched, then
the Scorer (retried: finishing is idempotent). Shutdown hands instruments over (lease ended, still
`running`) instead of failing them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import time
from dataclasses import dataclass

import torch

from instrumentgen import storage
from instrumentgen.config import Config
from instrumentgen.errors import UserError
from instrumentgen.instruments.generate import InstrumentCue
from serve import shards
from serve.shards import ShardJob
from serve.store import RUNNING, StatusStore, lease_live

CUE_FILE, REFERENCE_FILE = "cue.pt", "reference.audio"
CLAIM_LEASE_S = 15.0  # a Generator's claim on a shard's slots: a dead replica's shard is re-rendered after this
log = logging.getLogger("ray.serve")


class ShardFailed(Exception):
    """A call that failed on every try; the instrument ends `failed` with this reason."""


class LostOwnership(Exception):
    """Another replica adopted the instrument (this one missed renewing its lease): stop quietly."""


@dataclass
class Job:
    """One instrument a replica runs: what its status.json says, and its progress."""

    id: str
    url: str
    seed: int
    request: dict  # normalised, JSON-serialisable (stored in status.json)
    model_id: str
    slots: list[tuple[int, int]]
    retries: int = 0  # calls tried again (a replica died): reported in status.json
    state: str = "queued"
    notes_done: int = 0
    error: str | None = None


def short(error: BaseException) -> str:
    """An exception in one line: its type and the last line of its message, cut at 300 characters."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1][:300] if text else ''}"


class Runner:
    """Runs instruments for replica `replica`: Generator / Scorer handles, status in `store`."""

    def __init__(self, cfg: Config, store: StatusStore, generator, scorer, replica: str):
        self.cfg, self.limits, self.store = cfg, cfg.serve, store
        self.generator, self.scorer, self.replica = generator, scorer, replica
        self.tasks: dict[str, asyncio.Task | None] = {}  # None: accepted, its task about to start
        self.jobs: dict[str, Job] = {}
        self._lock = asyncio.Lock()
        self._loops: list[asyncio.Task] = []

    # --- ownership -------------------------------------------------------------------------------

    def status_of(self, job: Job) -> dict:
        return {
            "id": job.id,
            "status": job.state,
            "seed": job.seed,
            "request": job.request,
            "model_id": job.model_id,
            "notes_done": job.notes_done,
            "notes_total": len(job.slots),
            "retries": job.retries,
            "updated_at": time.time(),
            "error": job.error,
            "owner": self.replica if job.state in RUNNING else None,
            "lease_until": time.time() + self.limits.stale_after_s if job.state in RUNNING else 0.0,
        }

    async def write(self, job: Job) -> None:
        """Store the job's status, after checking that this replica still owns it."""
        async with self._lock:
            current = await asyncio.to_thread(self.store.raw, job.id)
            if current and current.get("owner") not in (None, self.replica) and lease_live(current):
                raise LostOwnership(job.id)
            await asyncio.to_thread(self.store.write, self.status_of(job))

    def has_room(self) -> bool:
        return len(self.tasks) < self.limits.max_instruments_in_flight

    def reserve(self, instrument: str) -> None:
        """Take a place before the next await, so the cap holds under concurrency."""
        self.tasks[instrument] = None

    def start(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.tasks[job.id] = asyncio.create_task(self._run(job))
        self.ensure_started()

    def ensure_started(self) -> None:
        """Start the lease renewal and the adoption scan (once, in the running event loop)."""
        if not self._loops:
            self._loops = [asyncio.create_task(self._renew_loop()), asyncio.create_task(self._adopt_loop())]

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.stale_after_s / 3)
            for instrument, job in list(self.jobs.items()):
                try:
                    await self.write(job)
                except LostOwnership:
                    task = self.tasks.get(instrument)
                    if task is not None:
                        task.cancel()
                except Exception as e:  # storage hiccup: the next renewal tries again
                    log.warning("lease renewal of %s failed: %s", instrument, short(e))

    async def _adopt_loop(self) -> None:
        while True:
            try:
                await self.adopt_stale()
            except Exception as e:
                log.warning("adoption scan failed: %s", short(e))
            await asyncio.sleep(max(0.5, self.limits.stale_after_s / 2))

    async def adopt_stale(self) -> list[str]:
        """Adopt every active instrument whose owner's lease has ended (while there is room); -> their ids."""
        adopted = []
        for instrument in await asyncio.to_thread(self.store.active):
            if instrument in self.tasks or not self.has_room():
                continue
            if await asyncio.to_thread(self.store.is_done, instrument):
                await asyncio.to_thread(self.store.unmark_active, instrument)
                continue
            status = await asyncio.to_thread(self.store.raw, instrument)
            if status is None or status["status"] not in RUNNING:
                await asyncio.to_thread(self.store.unmark_active, instrument)
                continue
            if lease_live(status):
                continue
            if await self.adopt(status):
                adopted.append(instrument)
        return adopted

    async def adopt(self, status: dict) -> bool:
        """Take over the instrument of `status` (a lapsed lease or a failed run); False if another replica won."""
        job = Job(
            status["id"],
            self.store.url(status["id"]),
            status["seed"],
            status["request"],
            status["model_id"],
            shards.request_slots(status["request"]),
            retries=status.get("retries", 0),
            state="queued",
            notes_done=status.get("notes_done", 0),
        )
        self.reserve(job.id)
        try:
            await self.write(job)
            await asyncio.sleep(0.2)  # two adopters at once: the last writer owns it, the other steps back
            current = await asyncio.to_thread(self.store.raw, job.id)
            if current is None or current.get("owner") != self.replica:
                self.tasks.pop(job.id, None)
                return False
        except BaseException:
            self.tasks.pop(job.id, None)
            raise
        log.info("adopted instrument %s (%d notes done)", job.id, job.notes_done)
        self.start(job)
        return True

    # --- the work --------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        """Embed once (or load the stored cue), render the missing slots, finish; status at every step."""
        try:
            job.state = "running"
            await self.write(job)
            cue = await self._cue(job)
            request = job.request
            gen = dataclasses.replace(
                self.cfg.generate,
                seed=job.seed,
                cfg_coef=request["cfg_coef"],
                top_k=request["top_k"],
                temperature=request["temperature"],
            )
            await self._render(job, cue, gen)
            metadata = {
                "id": job.id,
                **{k: v for k, v in request.items() if k in ("prompt", "family", "source")},
                "reference_audio": request.get("reference_audio_url"),
                "seed": job.seed,
                "model_id": job.model_id,
                "request": request,
                **({"parent": request["parent"], "regenerated": request["regenerated"]} if "parent" in request else {}),
                "duration_s": self.cfg.data.note_duration_s,
            }
            await self._call(
                job,
                self.scorer,
                "finish",
                job.url,
                [list(s) for s in job.slots],
                metadata,
                request["format"],
                self.cfg.data.note_duration_s,
            )
            job.state, job.notes_done = "done", len(job.slots)
            await self.write(job)
            await asyncio.to_thread(self.store.unmark_active, job.id)
        except asyncio.CancelledError:
            if job.state != "done":  # hand over: the lease ends now, any replica adopts it at once
                await asyncio.shield(self._hand_over(job))
            raise
        except LostOwnership:
            log.info("instrument %s was adopted by another replica", job.id)
        except Exception as e:  # every failure ends the instrument `failed` with its reason, never a manifest
            log.warning("instrument %s failed: %s", job.id, short(e))
            job.state, job.error = "failed", short(e)
            try:
                state = await asyncio.to_thread(shards.progress, job.url, job.slots)
                job.notes_done = len(state.done)
                await self.write(job)
                await asyncio.to_thread(self.store.unmark_active, job.id)
            except LostOwnership:
                pass
        finally:
            self.tasks.pop(job.id, None)
            self.jobs.pop(job.id, None)

    async def _hand_over(self, job: Job) -> None:
        status = {**self.status_of(job), "status": "running", "owner": None, "lease_until": 0.0}
        await asyncio.to_thread(self.store.write, status)

    async def _cue(self, job: Job) -> InstrumentCue:
        """The embedded cue: stored after the first embedding, so an adopter needs no Generator for it."""
        url = storage.join(job.url, CUE_FILE)
        if await asyncio.to_thread(storage.exists, url):
            fields = torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)
            return InstrumentCue(**fields)
        request = job.request
        cue = {"prompt": request.get("prompt"), "family": request.get("family"), "source": request.get("source")}
        if request.get("reference_audio_url"):
            cue["reference_audio"] = await asyncio.to_thread(storage.read_bytes, storage.join(job.url, REFERENCE_FILE))
        embedded = await self._call(job, self.generator, "embed", cue)
        buffer = io.BytesIO()
        torch.save({f.name: getattr(embedded, f.name) for f in dataclasses.fields(embedded)}, buffer)
        await asyncio.to_thread(storage.write_bytes, url, buffer.getvalue())
        return embedded

    async def _render(self, job: Job, cue: InstrumentCue, gen) -> None:
        """Dispatch the slots no stored result or live claim covers, until every slot has a result."""
        size = self.limits.shard_size
        while True:
            state = await asyncio.to_thread(shards.progress, job.url, job.slots)
            if len(state.done) != job.notes_done:
                job.notes_done = len(state.done)
                await self.write(job)
            if len(state.done) == len(job.slots):
                return
            runs = shards.missing_runs(job.slots, state.done | state.claimed, size)
            if not runs:  # the rest is being rendered by calls another owner made: wait for them
                await asyncio.sleep(shards_poll_s(self.limits.stale_after_s))
                continue
            # A failed shard does not stop the others: their notes are kept for the next try.
            results = await asyncio.gather(*(self._shard(job, cue, gen, run) for run in runs), return_exceptions=True)
            failures = [result for result in results if isinstance(result, BaseException)]
            if failures:
                raise failures[0]

    async def _shard(self, job: Job, cue: InstrumentCue, gen, slots: list[tuple[int, int]]) -> None:
        shard = ShardJob(
            job.id,
            job.url,
            cue,
            gen,
            slots,
            job.request["format"],
            job.request["candidates"],
            min(self.limits.stale_after_s, CLAIM_LEASE_S),
        )
        await self._call(job, self.generator, "generate_shard", shard)
        job.notes_done += len(slots)
        await self.write(job)

    async def _call(self, job: Job, handle, method: str, *args):
        """One deployment call with bounded retries: a replica that dies (ray.kill, a lost node) is replaced
        by Serve and the call goes to another; a full queue waits without using a retry. A `UserError`
        is the request's fault and is not retried."""
        from ray.serve.exceptions import BackPressureError

        failures, waits = 0, 0
        while True:
            try:
                return await getattr(handle, method).remote(*args)
            except UserError:
                raise
            except BackPressureError:
                waits += 1
                if waits > 600:
                    raise ShardFailed(f"{method}: the queues stayed full for 10 minutes") from None
                await asyncio.sleep(1.0)
            except Exception as e:
                failures += 1
                job.retries += 1
                tries = self.limits.shard_retries + 1
                log.warning("%s failed (try %d of %d): %s", method, failures, tries, short(e))
                if failures >= tries:
                    raise ShardFailed(
                        f"{method} failed {failures} times (serve.shard_retries={self.limits.shard_retries}); "
                        f"last: {short(e)}"
                    ) from None
                await asyncio.sleep(min(2.0**failures, 10.0))

    async def shutdown(self) -> None:
        """Stop the loops and hand every instrument in flight over to the other (or the next) replica."""
        for loop in self._loops:
            loop.cancel()
        tasks = [task for task in self.tasks.values() if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*self._loops, *tasks, return_exceptions=True)


def shards_poll_s(lease_s: float) -> float:
    """How often a run waits on shards another call renders: a fraction of the lease, at most 2 s."""
    return min(2.0, max(0.2, lease_s / 6))
