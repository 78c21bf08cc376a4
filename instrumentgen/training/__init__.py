"""Training InstrumentLM on token shards: the schedule, the DeepSpeed/DDP engines, checkpoints, the loop.

Everything here runs inside one training worker and is plain PyTorch / DeepSpeed, told its rank,
world size and device: nothing here imports Ray. The Ray Train adapter (TorchTrainer's per-worker
function: `ray.train.get_context`, `get_dataset_shard`, `report`) is `jobs/train_worker.py`, and
`jobs/train.py` builds the TorchTrainer around it.
"""
