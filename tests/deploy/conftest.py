"""What the deployment tests share: the repository root and the port table of docs/cluster.md."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def documented_ports() -> dict[str, int]:
    """The `| what | port |` rows of docs/cluster.md's port table."""
    text = (REPO / "docs" / "cluster.md").read_text()
    return {what.strip(): int(port) for what, port in re.findall(r"^\| ([^|]+) \| (\d+) \|", text, re.M)}
