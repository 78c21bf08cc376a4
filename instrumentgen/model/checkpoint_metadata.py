"""An exported checkpoint's plain values (format, config, model_id) read without torch and without its weights.

`InstrumentLM.save` writes a `torch.save` zip archive: `<name>/data.pkl` (the pickled dict, tensors as
references to storages) and one member per storage. Only `data.pkl` is read here, with every torch
object replaced by None, so the render job's driver can name 100,000 instruments by the checkpoint's
`model_id` without importing torch (about 500 MiB resident) or reading the weights (240 MB at paper size).
"""

from __future__ import annotations

import collections
import pickle
import zipfile

from instrumentgen import storage

READ_BLOCK = 2**20  # ranged reads of an object store: the archive's directory and data.pkl, not the weights


def _none(*args, **kwargs) -> None:
    return None


class _WithoutTensors(pickle.Unpickler):
    """Unpickles `data.pkl` with each tensor None; any global but torch's and OrderedDict is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module.split(".", 1)[0] == "torch":
            return _none
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint")

    def persistent_load(self, pid) -> None:
        return None


def read_metadata(url: str) -> dict | None:
    """The dict `InstrumentLM.save` wrote at `url`, each tensor None; None when the file is not a
    `torch.save` zip archive of plain values and tensors (the caller then asks torch, whose error says why)."""
    with storage.storage_errors(url, "read"):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb", block_size=READ_BLOCK) as f:
            try:
                with zipfile.ZipFile(f) as archive:
                    names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
                    if len(names) != 1:
                        return None
                    with archive.open(names[0]) as data:
                        loaded = _WithoutTensors(data).load()
            except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
                return None
    return loaded if isinstance(loaded, dict) else None
