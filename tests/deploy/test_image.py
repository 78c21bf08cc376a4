"""The Dockerfile builds the environment CI tests: same constraints, Python and Ray (CI does not build it)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
IMAGE_LINE = re.compile(r"^# image: (.+)$", re.M)


def pinned(package: str) -> str:
    text = (REPO / "constraints.txt").read_text()
    return re.search(rf"^{re.escape(package)}==(\S+)$", text, re.M)[1]


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name} (.+)$", DOCKERFILE, re.M)


def test_base_image_has_the_pinned_ray_and_python():
    (base,) = instructions("FROM")
    found = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cu\d+", base)
    assert found, f"FROM {base}: expected a CUDA image rayproject/ray:<ray>-py<python>-cu<cuda>"
    assert found[1] == pinned("ray") == ray.__version__
    assert (int(found[2]), int(found[3])) == sys.version_info[:2] == (3, 11)
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == ">=3.11,<3.12"


def test_installs_torch_for_the_base_images_cuda_then_the_repo_with_the_constraints_file():
    (base,) = instructions("FROM")
    cuda = base.rsplit("-", 1)[1]
    run = re.search(r"^RUN (pip install .*?)$", DOCKERFILE.replace("\\\n", " "), re.M)[1]
    torch_install, repo_install = [part.strip() for part in run.split("&&")[:2]]
    assert f"--index-url https://download.pytorch.org/whl/{cuda} " in torch_install
    assert "-c constraints.txt" in torch_install and "torch torchaudio torchvision" in torch_install
    assert "-c constraints.txt" in repo_install and re.search(r"-e \.(\s|$)", repo_install)
    assert "driver >= 570 (CUDA 12.8)" in DOCKERFILE and cuda == "cu128"
    copied = " ".join(instructions("COPY"))
    assert "constraints.txt" in copied and "pyproject.toml" in copied
    assert any(copy.split()[-2:] == [".", "."] for copy in instructions("COPY"))  # the code, serve/static included


def test_context_leaves_out_local_state():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".cache", "runs", "demo-output"} <= ignored
    assert "serve" not in ignored and "jobs" not in ignored and "instrumentgen" not in ignored


def test_image_is_tagged_with_the_git_commit():
    (name,) = IMAGE_LINE.findall(DOCKERFILE)
    assert name.endswith("/instrumentgen:<git commit>")
    assert "git rev-parse --short HEAD" in (REPO / "docs" / "cluster.md").read_text()


def test_exposes_the_documented_ports(documented_ports):
    ports = documented_ports
    (exposed,) = instructions("EXPOSE")
    assert sorted(map(int, exposed.split())) == sorted([ports["Serve HTTP"], ports["Ray dashboard and job API"]])
