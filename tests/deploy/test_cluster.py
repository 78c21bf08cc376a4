"""cluster.yaml: Ray's own schema, plus what the schema cannot know about this repo and AWS."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
# Options of the commands in setup_commands whose value is a path inside the repo.
FILE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable"}
# vCPUs and GPUs of the AWS instance types a node type may use (from the AWS instance pages).
INSTANCES = {
    "m6i.2xlarge": (8, 0),
    "m6i.4xlarge": (16, 0),
    "m6i.8xlarge": (32, 0),
    "m6i.16xlarge": (64, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.12xlarge": (48, 4),
    "p4d.24xlarge": (96, 8),
    "p5.48xlarge": (192, 8),
}


def values_of(commands: list[str], options: set[str]) -> list[str]:
    """The word after each of `options` in the commands (quoted strings are one word)."""
    words = [word for command in commands for word in shlex.split(command)]
    return [value for option, value in zip(words, words[1:]) if option in options]


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)


def test_cluster_yaml_schema_check_can_fail():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    broken = {**CLUSTER, "available_node_types": {"head": {"node_config": {}, "resources": {"GPU": "eight"}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_head_node_type_is_a_node_type():
    assert CLUSTER["head_node_type"] in CLUSTER["available_node_types"]


def test_setup_commands_name_files_of_this_repo():
    commands = CLUSTER["setup_commands"]
    paths = values_of(commands, FILE_OPTIONS)
    assert "constraints.txt" in paths  # the nodes install the versions CI tested
    for path in paths:
        assert (REPO / path).exists(), f"setup_commands name {path!r}, which is not in the repo"
    home = f"/home/{CLUSTER['auth']['ssh_user']}"
    mounted = {target.replace(home, "~"): source for target, source in CLUSTER["file_mounts"].items()}
    for folder in values_of(commands, {"cd"}):
        assert mounted.get(folder) == ".", f"setup_commands cd into {folder}, which is not the repo's mount"


def test_ports_are_the_documented_ones(documented_ports):
    ports = documented_ports
    head = " ".join(CLUSTER["head_start_ray_commands"])
    assert f"--dashboard-port={ports['Ray dashboard and job API']}" in head
    assert f"--port={ports['Ray GCS (workers join the head)']}" in head
    assert f":{ports['Ray GCS (workers join the head)']}" in " ".join(CLUSTER["worker_start_ray_commands"])
    open_ports = [(rule["FromPort"], rule["ToPort"]) for rule in CLUSTER["provider"]["security_group"]["IpPermissions"]]
    assert open_ports == [(ports["Serve HTTP"], ports["Serve HTTP"])]  # the dashboard is never opened


@pytest.mark.parametrize("name", sorted(CLUSTER["available_node_types"]))
def test_node_resources_match_the_instance_type(name):
    node = CLUSTER["available_node_types"][name]
    instance = node["node_config"]["InstanceType"]
    assert instance in INSTANCES, f"{name}: add {instance}'s vCPUs and GPUs to INSTANCES"
    cpus, gpus = INSTANCES[instance]
    assert node["resources"].get("CPU") == cpus
    assert node["resources"].get("GPU", 0) == gpus


def test_gpu_workers_exist():
    assert any(node["resources"].get("GPU", 0) for node in CLUSTER["available_node_types"].values())


def test_every_node_type_has_the_same_instance_profile():
    profiles = {
        name: node["node_config"].get("IamInstanceProfile", {}).get("Arn")
        for name, node in CLUSTER["available_node_types"].items()
    }
    assert None not in profiles.values(), profiles  # workers need the bucket as much as the head
    assert len(set(profiles.values())) == 1


def test_python_311_venv_outside_the_synced_folder_and_local_state_not_synced():
    commands = CLUSTER["setup_commands"]
    assert any("apt-get install" in c and "python3.11-venv" in c for c in commands)
    (make_venv,) = [c for c in commands if "-m venv" in c]
    assert "python3.11 -m venv ~/venv" in make_venv
    (synced,) = CLUSTER["file_mounts"]
    assert not any(" .venv" in c or "/.venv" in c for c in commands)
    assert not synced.rstrip("/").endswith("/venv") and "~/venv" not in synced
    assert {".venv", ".cache", "runs", ".git"} <= set(CLUSTER["rsync_exclude"])
    assert CLUSTER["rsync_filter"] == [".gitignore"]


def test_torch_is_installed_for_the_dockerfiles_cuda():
    base = re.search(r"^FROM \S+-(cu\d+)$", (REPO / "Dockerfile").read_text(), re.M)[1]
    installs = [c for c in CLUSTER["setup_commands"] if "torch torchaudio torchvision" in c]
    assert installs and f"https://download.pytorch.org/whl/{base}" in installs[0]
