"""A checkpoint's model_id without torch or its weights: the same id InstrumentLM has, any other file refused."""

import os
import pickle
import zipfile

import pytest
import torch

from instrumentgen.config import load_config
from instrumentgen.instruments.naming import checkpoint_id
from instrumentgen.model.checkpoint_metadata import read_metadata
from instrumentgen.model.lm import InstrumentLM, LMError


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_saved_dict_is_read_without_its_tensors(tmp_path, dtype):
    torch.manual_seed(0)
    lm = InstrumentLM(load_config("tiny").model)
    url = lm.save(str(tmp_path / "model.pt"), dtype)
    metadata = read_metadata(url)
    assert metadata["model_id"] == lm.model_id == checkpoint_id(url)
    assert metadata["config"] == torch.load(url, weights_only=True)["config"]
    assert set(metadata["state_dict"]) == set(lm.state_dict())
    assert all(value is None for value in metadata["state_dict"].values())


class Executes:
    def __reduce__(self):
        return (os.system, ("touch executed",))


def test_anything_else_is_left_to_torch_and_its_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert read_metadata(str(junk)) is None
    with pytest.raises(LMError, match="is not an InstrumentLM checkpoint"):
        checkpoint_id(str(junk))
    foreign = tmp_path / "foreign.pt"
    with zipfile.ZipFile(foreign, "w") as archive:  # the layout of torch.save, a global no checkpoint holds
        archive.writestr("archive/data.pkl", pickle.dumps({"model_id": "x", "payload": Executes()}))
    assert read_metadata(str(foreign)) is None
    assert not (tmp_path / "executed").exists()
    with pytest.raises(LMError, match="does not exist"):
        checkpoint_id(str(tmp_path / "missing.pt"))


def test_an_object_store_checkpoint_gives_the_same_id(s3_bucket):
    torch.manual_seed(0)
    lm = InstrumentLM(load_config("tiny").model)
    assert checkpoint_id(lm.save(f"{s3_bucket}/runs/x/model.pt")) == lm.model_id
