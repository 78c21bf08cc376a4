"""Ray Train on the tiny config with 2 CPU workers (gloo): DeepSpeed ZeRO 1/2 and DDP, checkpoints,
a killed worker, resumption, S3 storage, the exported checkpoint, and the CLAP quantizer's
codebooks identical on every worker."""

import csv
import dataclasses
import os
import re
import subprocess
import sys

import pytest
import ray.train
import torch

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.data.shards import collate
from instrumentgen.data.synthetic import write_fixture_nsynth
from instrumentgen.faults import Fault
from instrumentgen.model.cues import make_cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.training.engines import make_engine
from jobs import preprocess, train

pytestmark = pytest.mark.slow
PITCHES = [36, 43, 48, 55, 60, 67, 72, 79, 84]


@pytest.fixture(scope="module")
def shards_url(tmp_path_factory, ray_local, cache):
    """Token shards of 4 fixture instruments (72 notes) for train and 1 more for validation."""
    root = tmp_path_factory.mktemp("train-data")
    train_set = write_fixture_nsynth(str(root / "train"), 4, PITCHES, [50, 100], ("jsonwav",))["jsonwav"]
    valid_set = write_fixture_nsynth(str(root / "valid"), 1, PITCHES, [50, 100], ("jsonwav",))["jsonwav"]
    out = str(root / "shards")
    preprocess.run(
        load_config("tiny", [f"data.splits.train={train_set}", f"data.splits.valid={valid_set}", f"data.shards={out}"])
    )
    return out


def train_config(shards_url, storage_path, run_name, *extra):
    return load_config(
        "tiny",
        [
            f"data.shards={shards_url}",
            f"train.storage_path={storage_path}",
            f"train.run_name={run_name}",
            "train.log_every=5",
            "train.eval_every=10",
            "train.checkpoint_every=10",
            *extra,
        ],
    )


def metrics_rows(cfg):
    text = storage.read_bytes(storage.join(cfg.train.storage_path, cfg.train.run_name, "metrics.csv")).decode()
    return list(csv.DictReader(text.splitlines()))


def state_dict(url):
    return InstrumentLM.load(url).state_dict()


def test_loss_falls_with_ddp(shards_url, tmp_path):
    # DeepSpeed ZeRO-1 trains in the demo (its loss to under half, tests/jobs/test_demo.py) and in the
    # codebook test below, ZeRO-2 in `straight_zero2`: each strategy runs, one Ray Train start each.
    cfg = train_config(shards_url, str(tmp_path), "run", "train.max_steps=30", "train.strategy=ddp")
    exported = train.run(cfg)
    rows = metrics_rows(cfg)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.85 * losses[0], losses
    valid = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    assert len(valid) == 3 and valid[-1] < valid[0]
    assert all(float(r["grad_norm"]) > 0 and float(r["tokens_per_s"]) > 0 for r in rows)
    assert all(float(r["valid_loss_with_metadata"]) > 0 for r in rows if r["valid_loss"])
    assert all(2 <= float(r["rvq_live_min"]) <= 64 and float(r["rvq_perplexity_min"]) > 1 for r in rows)
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)  # the cosine ends at zero
    assert exported == str(tmp_path / "run" / "model.pt")
    # checkpoints kept: the last 3 (train.keep_checkpoints), named by step
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_0*")) == [
        "checkpoint_000000010",
        "checkpoint_000000020",
        "checkpoint_000000030",
    ]


@pytest.fixture(scope="module")
def straight_zero2(shards_url, tmp_path_factory):
    cfg = train_config(
        shards_url, str(tmp_path_factory.mktemp("runs")), "straight", "train.zero_stage=2", "train.max_steps=20"
    )
    return cfg, train.run(cfg)


def test_loss_falls_with_zero_stage_2(straight_zero2):
    cfg, _ = straight_zero2
    rows = metrics_rows(cfg)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.85 * losses[0], losses
    valid = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    assert len(valid) == 2 and valid[-1] < valid[0]


def test_a_killed_worker_resumes_to_the_weights_of_a_straight_run_on_s3(
    straight_zero2, shards_url, s3_bucket, tmp_path
):
    cfg, straight = straight_zero2
    killed = train_config(
        shards_url, f"{s3_bucket}/runs", "killed", "train.zero_stage=2", "train.max_steps=20", "train.max_failures=1"
    )
    marker = str(tmp_path / "killed-once")
    exported = train.run(killed, Fault("train.step", at=15, marker=marker, rank=1))
    assert storage.exists(marker)  # the worker really died after step 15 (its checkpoint: step 10)
    assert exported == f"{s3_bucket}/runs/killed/model.pt"
    ours, reference = state_dict(exported), state_dict(straight)
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    steps = [int(r["step"]) for r in metrics_rows(killed)]
    assert steps == [5, 10, 15, 20]  # the history of the restored checkpoint, then steps 15 and 20 again
    assert [float(r["loss"]) for r in metrics_rows(killed)] == pytest.approx(
        [float(r["loss"]) for r in metrics_rows(cfg)], rel=1e-5
    )


def test_resubmitting_a_stopped_run_continues_from_its_checkpoint(straight_zero2, shards_url, tmp_path):
    cfg, straight = straight_zero2
    stopped = train_config(
        shards_url, str(tmp_path), "stopped", "train.zero_stage=2", "train.max_steps=20", "train.max_failures=0"
    )
    failure = Fault("train.step", at=12, marker=str(tmp_path / "failed-once"), action="raise", rank=0)
    # the worker group fails and no restart is allowed
    with pytest.raises(ray.train.WorkerGroupError, match=re.escape("injected failure at train.step=12 (rank 0)")):
        train.run(stopped, failure)
    before = metrics_rows(stopped)
    assert [int(r["step"]) for r in before] == [5, 10]
    exported = train.run(stopped)
    after = metrics_rows(stopped)
    assert [int(r["step"]) for r in after] == [5, 10, 15, 20]
    assert after[:2] == before  # restored from the step-10 checkpoint (timings included), not retrained
    ours, reference = state_dict(exported), state_dict(straight)
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_resubmitting_a_finished_run_exports_it_without_starting_workers(straight_zero2, monkeypatch):
    cfg, straight = straight_zero2
    reference = state_dict(straight)
    monkeypatch.setattr(train, "build_trainer", lambda *a: pytest.fail("a finished run started a worker group"))
    assert train.run(cfg) == straight
    for name, tensor in reference.items():
        torch.testing.assert_close(state_dict(straight)[name], tensor, rtol=0, atol=0, msg=name)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=30))
    with pytest.raises(pytest.fail.Exception, match="started a worker group"):
        train.run(longer)  # more steps asked for: it trains on


GENERATE = """
import sys, torch
from instrumentgen.model.cues import make_cues
from instrumentgen.model.lm import InstrumentLM
lm = InstrumentLM.load(sys.argv[1])
cues = make_cues([40, 60, 80], [50, 100, 127], family="brass", source="acoustic", clap_embedding=torch.ones(512))
torch.save(lm.generate(cues, 12, top_k=20, seeds=torch.tensor([1, 2, 3])), sys.argv[2])
"""


def test_the_export_generates_the_same_tokens_in_a_fresh_process(straight_zero2, tmp_path):
    _, exported = straight_zero2
    lm = InstrumentLM.load(exported)
    cues = make_cues([40, 60, 80], [50, 100, 127], family="brass", source="acoustic", clap_embedding=torch.ones(512))
    here = lm.generate(cues, 12, top_k=20, seeds=torch.tensor([1, 2, 3]))
    subprocess.run([sys.executable, "-c", GENERATE, exported, str(tmp_path / "codes.pt")], check=True, timeout=300)
    assert torch.equal(torch.load(tmp_path / "codes.pt"), here)
    assert here.shape == (3, 4, 12)


CODEBOOK_STRATEGIES = [
    "train.strategy=ddp",
    "train.strategy=deepspeed train.zero_stage=1",
    "train.strategy=deepspeed train.zero_stage=3",
]


@pytest.fixture(scope="module")
def codebooks_per_strategy(shards_url, tmp_path_factory):
    """One worker group trains 4 steps under each strategy in turn (ZeRO-3 last: it hooks its model's
    parameters), each worker its own rows; returns {strategy: folder of rank0.pt, rank1.pt, consolidated.pt}."""
    root = tmp_path_factory.mktemp("codebooks")
    folders = {strategy: root / f"strategy{index}" for index, strategy in enumerate(CODEBOOK_STRATEGIES)}
    configs = {
        str(folder): train_config(shards_url, str(folder), "codebooks", *strategy.split())
        for strategy, folder in folders.items()
    }

    def train_a_few_steps(configs):
        """Per-worker function (nested: workers cannot import this module): the real engine, each
        worker its own rows, then its quantizer buffers to a file."""
        from instrumentgen.data.shards import read_table, shard_files

        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        for folder, cfg in configs.items():
            os.makedirs(folder, exist_ok=True)
            torch.manual_seed(0)
            engine = make_engine(InstrumentLM(cfg.model), cfg.train, 8, rank, world_size, ray.train.torch.get_device())
            torch.manual_seed(rank + 1)
            table = read_table(shard_files(cfg.data.shards, "train")[0]).to_pandas()
            engine.module.train()
            for step in range(4):
                rows = table.iloc[(rank * 4 + step) * 8 % 64 :][:8]
                codes, cues = collate({name: rows[name].to_numpy() for name in rows.columns})
                out = engine.forward(codes, cues)
                engine.backward(out.loss)
                engine.step()
            rvq = engine.module.conditioners.clap.rvq
            buffers = {name: b.detach().cpu().clone() for name, b in rvq.state_dict().items()}
            torch.save(buffers, os.path.join(folder, f"rank{rank}.pt"))
            consolidated = engine.consolidated_state_dict()  # a collective under ZeRO-3
            if rank == 0:
                torch.save(consolidated, os.path.join(folder, "consolidated.pt"))

    ray.train.torch.TorchTrainer(
        train_a_few_steps,
        train_loop_config=configs,
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(root / "ray")),
    ).fit()
    return folders


@pytest.mark.parametrize("strategy", CODEBOOK_STRATEGIES)
def test_every_worker_ends_with_the_same_codebooks(codebooks_per_strategy, strategy):
    folder = codebooks_per_strategy[strategy]
    rank0, rank1 = (torch.load(folder / f"rank{r}.pt") for r in (0, 1))
    consolidated = torch.load(folder / "consolidated.pt")
    assert rank0["initialized"].all()
    for name in ("codebooks", "cluster_sizes", "embedding_sums", "initialized"):
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(
            consolidated[f"conditioners.clap.rvq.{name}"],
            rank0[name].to(consolidated[f"conditioners.clap.rvq.{name}"].dtype),
        ), name
    assert (rank0["cluster_sizes"].sum(-1) >= 16 - 1e-3).all()  # the EMA of the global batch: 16 rows a step


def test_cli_fails_in_one_line_without_shards(capsys, tmp_path):
    assert train.main(["config=tiny", f"data.shards={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "has no manifest.json" in err and err.count("\n") == 1
    assert train.main(["config=tiny", "data.shards=x", "train.batch_size=15"]) == 2
    assert "train.batch_size=15 does not split into 2 workers" in capsys.readouterr().err
