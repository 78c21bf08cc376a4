"""Training InstrumentLM on token shards: the schedule, the DeepSpeed/DDP engines, the per-worker loop.

`jobs/train.py` is the Ray edge (TorchTrainer, datasets, run storage, export); everything here
runs inside one training worker and is plain PyTorch / DeepSpeed.
"""
