import subprocess
import sys

import pytest

from instrumentgen.faults import Fault, InjectedFault, fault_point


def test_an_armed_fault_fires_once_at_its_point_count_and_rank(tmp_path):
    fault = Fault("render.instrument", at=2, marker=str(tmp_path / "fired"), action="raise", rank=1)
    fault_point(None, "render.instrument", 2, 1)
    for point, count, rank in (("render.other", 2, 1), ("render.instrument", 1, 1), ("render.instrument", 2, 0)):
        fault_point(fault, point, count, rank)
    assert not (tmp_path / "fired").exists()
    with pytest.raises(InjectedFault, match=r"render.instrument=2 \(rank 1\)"):
        fault_point(fault, "render.instrument", 2, 1)
    assert (tmp_path / "fired").read_text() == "render.instrument=2"
    fault_point(fault, "render.instrument", 2, 1)  # a restarted run passes the point again


def test_kill_ends_the_process_with_sigkill(tmp_path):
    code = (
        "from instrumentgen.faults import Fault, fault_point; "
        f"fault_point(Fault('train.step', 3, {str(tmp_path / 'm')!r}), 'train.step', 3); print('survived')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == -9 and "survived" not in done.stdout


def test_an_unknown_action_is_named():
    with pytest.raises(ValueError, match="action='hang' is not allowed; allowed: kill, raise"):
        Fault("train.step", 1, "m", action="hang")
