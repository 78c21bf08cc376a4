"""deploy/k8s against KubeRay's own CRDs (v1.4.2, the operator version docs/cluster.md installs, copied
from ray-project/kuberay `ray-operator/config/crd/bases/`): every RayJob and the RayService validate
with jsonschema, and name no field the CRD lacks (the API server would prune it without a word)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"


def crd_schemas() -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): openAPIV3Schema} of the CRDs in tests/deploy/crds."""
    schemas = {}
    for path in (Path(__file__).parent / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


SCHEMAS = crd_schemas()
RESOURCES = [
    (path.name, doc)
    for path in sorted(K8S.glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc["apiVersion"].startswith("ray.io/")
]


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Paths of keys in `value` that `schema` does not declare (where it declares its properties)."""
    if isinstance(value, dict) and "properties" in schema:
        if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties"):
            return []
        found = []
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def test_the_ray_resources_are_the_ones_the_crds_describe():
    kinds = sorted((name, doc["kind"]) for name, doc in RESOURCES)
    assert [kind for _, kind in kinds].count("RayJob") == 4 and [kind for _, kind in kinds].count("RayService") == 1
    assert all((doc["apiVersion"], doc["kind"]) in SCHEMAS for _, doc in RESOURCES)


@pytest.mark.parametrize("name, resource", RESOURCES, ids=[name for name, _ in RESOURCES])
def test_each_resource_validates_against_its_crd(name, resource):
    schema = SCHEMAS[(resource["apiVersion"], resource["kind"])]
    jsonschema.validate(resource, schema)
    assert unknown_fields(resource, schema) == []


def test_the_crd_check_can_fail():
    """A wrong type and a misspelt field, in a copy of the train RayJob, are both caught."""
    (train,) = [doc for name, doc in RESOURCES if name == "train.rayjob.yaml"]
    schema = SCHEMAS[(train["apiVersion"], train["kind"])]
    wrong_type = copy.deepcopy(train)
    wrong_type["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, schema)
    misspelt = copy.deepcopy(train)
    misspelt["spec"]["entrypointt"] = misspelt["spec"]["entrypoint"]
    assert unknown_fields(misspelt, schema) == [".spec.entrypointt"]
