"""deploy/k8s: KubeRay manifests that parse, run real jobs with valid configs, and match the image and Ray."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from deploy import render
from instrumentgen.config import load_config, split_overrides

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
MANIFESTS = {path.name: list(yaml.safe_load_all(path.read_text())) for path in sorted(K8S.glob("*.yaml"))}
RESOURCES = [(name, doc) for name, docs in MANIFESTS.items() for doc in docs if doc["apiVersion"] == "ray.io/v1"]
RAY_JOBS = [(name, doc) for name, doc in RESOURCES if doc["kind"] == "RayJob"]
(RAY_SERVICE,) = [doc for _, doc in RESOURCES if doc["kind"] == "RayService"]
# The arguments each job takes besides config=<name> and config overrides.
JOB_ARGUMENTS = {
    "jobs.preprocess": set(),
    "jobs.train": set(),
    "jobs.render": {"checkpoint", "prompts", "out"},
    "jobs.evaluate": {"checkpoints", "out", "actors"},
}


def cluster_spec(resource: dict) -> dict:
    return resource["spec"]["rayClusterSpec" if resource["kind"] == "RayJob" else "rayClusterConfig"]


def containers(resource: dict) -> list[dict]:
    spec = cluster_spec(resource)
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def gpu_groups(resource: dict) -> list[dict]:
    return [
        group
        for group in cluster_spec(resource).get("workerGroupSpecs", [])
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in group["template"]["spec"]["containers"])
    ]


def test_every_manifest_is_a_known_kind():
    expected = {
        "preprocess.rayjob.yaml": "RayJob",
        "train.rayjob.yaml": "RayJob",
        "evaluate.rayjob.yaml": "RayJob",
        "render.rayjob.yaml": "RayJob",
        "serve.rayservice.yaml": "RayService",
        "serviceaccount.yaml": "ServiceAccount",
        "networkpolicy.yaml": "NetworkPolicy",
    }
    assert {name: docs[0]["kind"] for name, docs in MANIFESTS.items()} == expected
    api = {
        "RayJob": "ray.io/v1",
        "RayService": "ray.io/v1",
        "ServiceAccount": "v1",
        "NetworkPolicy": "networking.k8s.io/v1",
    }
    assert all(len(docs) == 1 and docs[0]["apiVersion"] == api[docs[0]["kind"]] for docs in MANIFESTS.values())


def test_every_pod_uses_the_service_account_and_mounts_dev_shm():
    (account,) = MANIFESTS["serviceaccount.yaml"]
    for name, resource in RESOURCES:
        spec = cluster_spec(resource)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert pod["serviceAccountName"] == account["metadata"]["name"], name
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
                assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory", name


@pytest.mark.parametrize("name,resource", RESOURCES, ids=[name for name, _ in RESOURCES])
def test_cluster_spec_under_the_right_key(name, resource):
    # RayJob names its cluster rayClusterSpec, RayService rayClusterConfig; the other key is ignored by KubeRay.
    keys = ("rayClusterSpec", "rayClusterConfig")
    right, wrong = keys if resource["kind"] == "RayJob" else keys[::-1]
    assert right in resource["spec"] and wrong not in resource["spec"]
    spec = cluster_spec(resource)
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert gpu_groups(resource), f"{name}: no worker group with nvidia.com/gpu limits"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        # KubeRay passes these to `ray start` and only takes strings.
        assert all(isinstance(value, str) for value in group["rayStartParams"].values())
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("name,resource", RESOURCES, ids=[name for name, _ in RESOURCES])
def test_images_are_the_values_image_of_the_dockerfiles_repository(name, resource):
    image = yaml.safe_load((REPO / "deploy" / "values.yaml").read_text())["image"]
    (documented,) = re.findall(r"^# image: (\S+):<git commit>$", (REPO / "Dockerfile").read_text(), re.M)
    assert {container["image"] for container in containers(resource)} == {image}
    assert image.rsplit(":", 1)[0] == documented


@pytest.mark.parametrize("name,job", RAY_JOBS, ids=[name for name, _ in RAY_JOBS])
def test_entrypoint_runs_a_real_job_with_a_valid_config(name, job):
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["python", "-m"]
    module = words[2]
    assert module in JOB_ARGUMENTS, f"{name}: {module} is not a job of jobs/"
    assert (REPO / Path(*module.split("."))).with_suffix(".py").exists()
    assert callable(importlib.import_module(module).main)
    own = {
        word.split("=", 1)[0]: word.split("=", 1)[1]
        for word in words[3:]
        if word.split("=", 1)[0] in JOB_ARGUMENTS[module]
    }
    urls = re.findall(r"\w+://[^\s,]+", job["spec"]["entrypoint"])
    assert urls and all(url.startswith("s3://") for url in urls)  # on a cluster, everything lives in storage
    config_name, overrides = split_overrides([word for word in words[3:] if word.split("=", 1)[0] not in own])
    assert config_name == "paper"
    load_config(config_name, overrides)  # a ConfigError names the bad key
    if module in ("jobs.render", "jobs.evaluate"):
        assert set(own) == JOB_ARGUMENTS[module]


def test_train_job_resumes_from_object_storage():
    (job,) = [job for name, job in RAY_JOBS if name == "train.rayjob.yaml"]
    _, overrides = split_overrides(shlex.split(job["spec"]["entrypoint"])[3:])
    cfg = load_config("paper", overrides)
    assert cfg.train.storage_path.startswith("s3://") and cfg.train.use_gpu
    (group,) = gpu_groups(job)
    gpus_per_pod = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert group["maxReplicas"] * gpus_per_pod >= cfg.train.num_workers
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["shutdownAfterJobFinishes"] is True


def test_serve_config_is_serve_config_yaml_and_nothing_is_stale():
    serve_config = yaml.safe_load(RAY_SERVICE["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    assert render.main(["--check"]) == 0


def test_api_keys_come_from_a_required_secret_in_every_serve_pod():
    for container in containers(RAY_SERVICE):
        (env,) = [e for e in container["env"] if e["name"] == "INSTRUMENTGEN_API_KEYS"]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "instrumentgen-api-keys", "key": "keys"}  # not optional
    assert RAY_SERVICE["spec"]["upgradeStrategy"]["type"] in ("NewCluster", "None")


def test_serve_config_validates_and_listens_on_the_documented_port(documented_ports):
    schema = ServeDeploySchema.model_validate(yaml.safe_load(RAY_SERVICE["spec"]["serveConfigV2"]))
    assert [app.import_path for app in schema.applications] == ["serve.app:app"]
    port = documented_ports["Serve HTTP"]
    assert schema.http_options.port == port and schema.http_options.host == "0.0.0.0"  # reachable in the pod
    head = cluster_spec(RAY_SERVICE)["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": port, "name": "serve"} in head["ports"]
