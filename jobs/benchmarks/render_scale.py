"""Batch rendering at library scale: planning, the index update and Table 2 over a large library on a
loopback S3, and real one-note renders streamed through the actor pool.

The library: `LIBRARY` complete instruments on a moto S3 server in this process (127.0.0.1), put
straight into its backend (100,000 objects over HTTP would take longer than the benchmark): one
folder per instrument holding the real manifest of a rendered one-note instrument (id, prompt and
scores changed), and the index of all of them. The driver's steps run in a child process that does
what `python -m jobs.render` does: it imports `jobs.render`, joins the Ray started here, then runs
the job's own functions one step at a time (planning: the prompt file checked and read, the ids,
the index and the pending journals; the index update; Table 2); then a fresh child runs the whole
job again (`jobs.render.main`, report=true) on the complete library, which renders nothing. A
child's peak memory is `VmHWM`, the high-water mark of its own resident set (not `ru_maxrss`: after
fork and exec that starts at the parent's resident set, which here holds moto's 100,000 objects).

Rows compare the job's steps with what they were before issue 25 on a `COMPARED`-instrument
library of the same kind (the old steps at 100,000 would take minutes and ~16 GiB): a HEAD per id
to find the finished ones, the index rebuilt from every manifest, Table 2 from the manifests. The
last row renders `RENDERS` one-note instruments through `jobs.render.run` (2 actors of one torch
thread) against a serial loop of `render_isolated` in a process of its own with one torch thread,
into a bucket of their own on the same S3. One thread, not two: on this shared 2-core machine
under a load average of 8, a one-note render took 5.4-11.2 s with two torch threads against
0.27-0.29 s with one (presumably the two threads waiting on each other for contended cores), and a two-thread loop
measured 1,733 s for 300 against the job's 68 s, a ratio of that, not of the job. The loop in
the benchmark's own process (moto's server, 100,000 objects) was slow as well: 1,041 s.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

LIBRARY, COMPARED, NEW_ROWS, RENDERS = 100_000, 500, 100, 300
QUICK = {"LIBRARY": 2_000, "COMPARED": 200, "NEW_ROWS": 50, "RENDERS": 4}
GOAL_PLAN_S, GOAL_DRIVER_MIB = 60, 1024  # issue 25, at 100,000 instruments
BUCKET = "render-scale"
# The renders' own bucket: moto answers a listing by scanning every key of the bucket, and each
# instrument lists its folder, which beside 100,000 library keys would time moto, not the renders.
RENDER_BUCKET = "render-scale-renders"
ACTORS = 2


def _prompts(count: int) -> list[dict]:
    return [{"prompt": f"library prompt {i}", "keys": [60, 60], "velocities": [100]} for i in range(count)]


def _write_prompts(path: str, lines: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return path


def _populate(backend, prefix: str, ids: list[str], template: dict) -> list[dict]:
    """`ids` complete folders under s3://BUCKET/prefix (their manifests) -> their index rows."""
    from instrumentgen.instruments import library
    from instrumentgen.instruments.manifest import InstrumentManifest

    rows = []
    for number, instrument in enumerate(ids):
        manifest = copy.deepcopy(template)
        tc = 0.5 + (number % 100) / 100
        manifest.update(id=instrument, prompt=f"library prompt {number}", name=f"library prompt {number}", tc=tc)
        backend.put_object(BUCKET, f"{prefix}/{instrument}/manifest.json", json.dumps(manifest).encode())
        rows.append(library.index_row(InstrumentManifest.from_json(manifest)))
    return rows


def peak_mib() -> float:
    """This process's peak resident set so far (`VmHWM`), MiB: its own, whatever its parent held."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kib / 1024


def _step(name: str, work) -> dict:
    print(f"render_scale: {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = work()
    return {"step": name, "s": time.perf_counter() - start, "peak_mib": peak_mib(), "result": result}


def driver(checkpoint: str, prompts: str, out: str, compared_prompts: str, compared_out: str, new_rows: str) -> list:
    """The child process: the render job's driver, each step timed on its own (and its old version)."""
    from instrumentgen.config import load_config
    from instrumentgen.instruments import library
    from jobs import render as job
    from jobs.entry import start_ray

    start_ray(quiet=True)  # joins the Ray of RAY_ADDRESS, as under `ray job submit`
    steps = [{"step": "imports and Ray", "s": 0.0, "peak_mib": peak_mib(), "result": None}]
    cfg = load_config("tiny")
    added = json.loads(open(new_rows).read())
    for label, prompt_file, folder in (("", prompts, out), ("compared ", compared_prompts, compared_out)):
        planned = []

        def plan():
            job.check_inputs(cfg, checkpoint, prompt_file, folder)
            planned.extend(job.plan(cfg, checkpoint, prompt_file)[0])
            return len(library.plan_library(folder, [i for i, _ in planned]).complete)

        steps.append(_step(f"{label}plan", plan))
        steps.append(_step(f"{label}index", lambda: library.update_index(folder, added).num_rows))
        ids = [i for i, _ in planned]

        def report():
            return job.write_table2(folder, library.read_index(folder), ids, checkpoint)["instruments"]

        steps.append(_step(f"{label}table2", report))
        if label:
            steps.append(_step("old plan", lambda: len(library.complete_ids(folder, ids))))
            steps.append(_step("old index", lambda: library.rebuild_index(folder).num_rows))

            def old_report():
                manifests = library.read_manifests(folder, ids)
                rows = [library.index_row(manifests[i]) for i in ids if i in manifests]
                return library.table2(rows, "model.pt")[0]["instruments"]

            steps.append(_step("old table2", old_report))
    return steps


def rerun(checkpoint: str, prompts: str, out: str) -> dict:
    """The child process: `python -m jobs.render ... report=true` on a complete library, as a user runs it
    (imports, joining Ray, planning, nothing to render, the index, Table 2) -> its time, peak and summary."""
    start = time.perf_counter()
    from instrumentgen import storage
    from jobs import render as job

    argv = ["config=tiny", f"checkpoint={checkpoint}", f"prompts={prompts}", f"out={out}", "report=true"]
    assert job.main(argv) == 0
    seconds = time.perf_counter() - start
    return {"s": seconds, "peak_mib": peak_mib(), "summary": storage.read_json(storage.join(out, "summary.json"))}


def _render_config():
    from instrumentgen.config import load_config

    return load_config("tiny", [f"render.actors={ACTORS}", "render.num_cpus=1"])


def serial_loop(checkpoint: str, prompts: str) -> float:
    """The child process: `render_isolated` over the prompts, one after another -> seconds (models loaded and
    one instrument rendered first).

    A process of its own with one torch thread, as each actor is."""
    import torch

    from instrumentgen import storage
    from instrumentgen.instruments.prompts import read_prompts
    from instrumentgen.instruments.render import Renderer, render_isolated

    torch.set_num_threads(1)  # as an actor of render.num_cpus=1 (see the module docstring)
    renderer = Renderer(_render_config(), checkpoint)
    requests, _ = read_prompts(prompts)
    warm_up = storage.join(f"s3://{RENDER_BUCKET}/warm-up", "0" * 16)  # first-call costs, as the sample paid before
    assert render_isolated(renderer, requests[0], "0" * 16, warm_up)["status"] == "rendered"
    start = time.perf_counter()
    for number, request in enumerate(requests):
        url = storage.join(f"s3://{RENDER_BUCKET}/serial", f"{number:016x}")
        rendered = render_isolated(renderer, request, f"{number:016x}", url)
        assert rendered["status"] == "rendered", rendered
    return time.perf_counter() - start


def _renders(checkpoint: str, root: str, count: int) -> tuple[float, float]:
    """`count` one-note instruments: a serial loop of render_isolated, then jobs.render.run -> (loop s, job s)."""
    from jobs import render as job

    lines = [{"prompt": f"streamed prompt {i}", "keys": [60, 60], "velocities": [100]} for i in range(count)]
    prompts = _write_prompts(os.path.join(root, "stream.jsonl"), lines)
    loop_s = _child("serial_loop", checkpoint, prompts)
    start = time.perf_counter()
    stats = job.run(_render_config(), checkpoint, prompts, f"s3://{RENDER_BUCKET}/streamed")
    job_s = time.perf_counter() - start
    assert stats["rendered"] == count, stats
    return loop_s, job_s


def _child(function: str, *args: str):
    """`function(*args)` of this module in a child process joined to this process's Ray -> what it returned."""
    import ray

    code = f"import json, sys; from jobs.benchmarks.render_scale import {function}; "
    code += f"print(json.dumps({function}(*sys.argv[1:])))"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    print(done.stderr[-2000:], file=sys.stderr, flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    """The rows of docs/benchmarks.md's library-scale table (see the module docstring)."""
    sizes = QUICK if quick else {"LIBRARY": LIBRARY, "COMPARED": COMPARED, "NEW_ROWS": NEW_ROWS, "RENDERS": RENDERS}
    import boto3
    import torch
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    from instrumentgen import storage
    from instrumentgen.instruments import library
    from instrumentgen.instruments.render import Renderer, render_isolated
    from instrumentgen.model.lm import InstrumentLM
    from jobs import render as job
    from jobs.benchmarks import private_weights_cache, row
    from jobs.entry import local_ray
    from jobs.loopback_s3 import environment, s3_env
    from serve.local import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request would cost more than the request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with environment(s3_env(endpoint)), private_weights_cache(), tempfile.TemporaryDirectory() as root:
            for bucket in (BUCKET, RENDER_BUCKET):
                boto3.client("s3").create_bucket(Bucket=bucket)
            backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
            cfg = _render_config()
            torch.manual_seed(0)
            checkpoint = InstrumentLM(cfg.model).save(os.path.join(root, "model.pt"))
            renderer = Renderer(cfg, checkpoint)
            sample = render_isolated(
                renderer,
                job.plan(cfg, checkpoint, _write_prompts(os.path.join(root, "one.jsonl"), _prompts(1)))[0][0][1],
                "sample",
                f"s3://{BUCKET}/sample",
            )
            template = storage.read_json(f"s3://{BUCKET}/sample/manifest.json")
            assert sample["status"] == "rendered"
            print("render_scale: populating the libraries", file=sys.stderr, flush=True)
            libraries = {}
            for name, count in (("library", sizes["LIBRARY"]), ("compared", sizes["COMPARED"])):
                prompts = _write_prompts(os.path.join(root, f"{name}.jsonl"), _prompts(count))
                ids = [i for i, _ in job.plan(cfg, checkpoint, prompts)[0]]
                rows = _populate(backend, name, ids, template)
                library.write_index(f"s3://{BUCKET}/{name}", library.index_table(rows))
                libraries[name] = prompts
            new_rows = os.path.join(root, "new_rows.json")
            extra = _populate(backend, "extra", [f"{i:016x}" for i in range(sizes["NEW_ROWS"])], template)
            with open(new_rows, "w") as f:
                json.dump(extra, f)
            args = [
                checkpoint,
                libraries["library"],
                f"s3://{BUCKET}/library",
                libraries["compared"],
                f"s3://{BUCKET}/compared",
                new_rows,
            ]
            with local_ray():
                steps = {step["step"]: step for step in _child("driver", *args)}
                print("render_scale: the whole job again", file=sys.stderr, flush=True)
                again = _child("rerun", checkpoint, libraries["library"], f"s3://{BUCKET}/library")
                assert (again["summary"]["rendered"], again["summary"]["skipped"]) == (0, sizes["LIBRARY"]), again
                print("render_scale: renders", file=sys.stderr, flush=True)
                loop_s, job_s = _renders(checkpoint, root, sizes["RENDERS"])
    finally:
        server.stop()
    big, small = sizes["LIBRARY"], sizes["COMPARED"]
    steps_peak = max(steps[name]["peak_mib"] for name in ("imports and Ray", "plan", "index", "table2"))
    peak = max(steps_peak, again["peak_mib"])
    plan_s = steps["plan"]["s"]

    def at_scale(step: str) -> str:
        return f"at {big:,}: {steps[step]['s']:.2f} s"

    def mark(met: bool) -> str:
        return "✔" if met else "✘"

    return [
        row(
            f"plan: finished ids of {small:,} complete instruments on loopback S3",
            "a HEAD per id (before issue 25)",
            "the index + the journals of killed runs (library.plan_library)",
            steps["old plan"]["s"],
            steps["compared plan"]["s"],
            f"at {big:,}: plan < {GOAL_PLAN_S} s {mark(plan_s < GOAL_PLAN_S)}, "
            f"driver < 1 GiB {mark(peak < GOAL_DRIVER_MIB)}",
            f"{at_scale('plan')} (prompt file checked and read, ids computed, index read, pending/ listed: "
            f"no journal). Driver peak resident memory (VmHWM, no torch): {steps_peak:.0f} MiB over the steps "
            f"of this table at {big:,} ({steps['imports and Ray']['peak_mib']:.0f} MiB after importing "
            f"jobs.render and joining Ray); the whole job again on the complete library (python -m jobs.render "
            f"report=true, a fresh process): {again['s']:.1f} s, peak {again['peak_mib']:.0f} MiB, nothing rendered",
        ),
        row(
            f"index: {sizes['NEW_ROWS']:,} new rows into a {small:,}-instrument library",
            "index rebuilt from every manifest (before)",
            "this run's rows added to index.parquet (library.update_index)",
            steps["old index"]["s"],
            steps["compared index"]["s"],
            None,
            at_scale("index") + " (one read and one write of index.parquet)",
        ),
        row(
            f"Table 2 of {small:,} prompts",
            "from the manifests (before)",
            "from the index (results.md + .json; no figure past 200 prompts)",
            steps["old table2"]["s"],
            steps["compared table2"]["s"],
            None,
            at_scale("table2") + " (index read, results.md and results.json written)",
        ),
        row(
            f"render {sizes['RENDERS']} one-note instruments (tiny) into loopback S3",
            "serial loop of render_isolated",
            f"jobs.render ({ACTORS} actors of 1 CPU, blocks of {job.BLOCK_ROWS})",
            loop_s,
            job_s,
            None,
            f"{60 * sizes['RENDERS'] / job_s:.0f} vs {60 * sizes['RENDERS'] / loop_s:.0f} instruments/min; "
            f"the loop in a process of its own with 1 torch thread like an actor, its models loaded and one "
            f"instrument rendered before the timing; actor start-up and "
            f"model loading included in ours; {os.cpu_count()} cores",
        ),
    ]
