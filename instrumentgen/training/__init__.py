"""Training InstrumentLM on token shards: the schedule, the DeepSpeed/DDP engines, checkpoints, the loop.

Everything here runs inside one training worker and is plain PyTorch / DeepSpeed, told its rank,
world size and device. The one exception is `worker.py`, the Ray Train adapter (TorchTrainer's
per-worker function: `ray.train.get_context`, `get_dataset_shard`, `report`): nothing else under
`instrumentgen/training/` imports Ray. `jobs/train.py` builds the TorchTrainer around it.
"""
