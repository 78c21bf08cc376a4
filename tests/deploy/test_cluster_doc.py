"""docs/cluster.md, walked: its steps come in order, and every file, command, key and name that its code
blocks give exists in this repository (a new command in the doc must be taught to this test)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from deploy import render
from jobs import stage_weights

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "cluster.md").read_text()
BLOCKS = re.findall(r"^```\n(.*?)^```$", DOC, re.M | re.S)
LINES = [re.sub(r"\s+#\s.*$", "", line).strip() for block in BLOCKS for line in block.splitlines()]
LINES = [line for line in LINES if line]
RENDERED = render.render(render.read_values())
MANIFESTS = {path: yaml.safe_load(text) for path, text in RENDERED.items() if path.startswith("deploy/k8s/")}
NAMES = {
    kind: {m["metadata"]["name"] for m in MANIFESTS.values() if m["kind"] == kind} for kind in ("RayJob", "RayService")
}
STEPS = ["operator", "bucket", "ServiceAccount", "Secrets", "image", "weights", "data", "jobs", "RayService"]


def lines_of(command: str) -> list[list[str]]:
    return [shlex.split(line) for line in LINES if line.split()[0] == command]


def test_the_kuberay_steps_come_in_order():
    headings = re.findall(r"^### (\d+)\. (.+)$", DOC, re.M)
    assert [int(number) for number, _ in headings] == list(range(1, len(STEPS) + 1))
    for (_, title), word in zip(headings, STEPS):
        assert word.lower() in title.lower(), (title, word)


def test_every_command_is_one_this_test_knows():
    known = {"helm", "aws", "python", "kubectl", "docker", "ray", "serve", "curl", "export", "make"}
    for line in LINES:
        head = line.split()[0]
        assert head in known or re.fullmatch(r"[A-Z_]+=\$\(git rev-parse --short HEAD\)", line), line


def test_operator_is_added_and_pinned():
    helm = [" ".join(words) for words in lines_of("helm")]
    assert helm[0].startswith("helm repo add kuberay https://")
    (install,) = [line for line in helm if " install " in line]
    assert re.search(r"--version \d+\.\d+\.\d+$", install)


def test_python_modules_exist_and_take_the_arguments_given():
    modules = re.findall(r"python -m ([\w.]+)((?: [^\s)]+)*)", "\n".join(LINES))
    assert {"deploy.render", "jobs.stage_weights"} <= {module for module, _ in modules}
    for module, args in modules:
        assert callable(importlib.import_module(module).main), module
        argv = shlex.split(args)
        if module == "jobs.stage_weights":
            stage_weights.parse(argv)  # a ConfigError names an argument the job does not take
        elif module == "deploy.render":
            if "--entrypoint" in argv:
                job = argv[argv.index("--entrypoint") + 1]
                assert f"deploy/k8s/{job}.rayjob.yaml" in RENDERED
            else:
                render.read_values([arg.replace("$TAG", "abc1234") for arg in argv])


def test_kubectl_names_files_and_resources_that_exist():
    for words in lines_of("kubectl"):
        if words[1] in ("apply", "delete") and "-f" in words:
            assert (REPO / words[words.index("-f") + 1]).exists(), words
        for kind, name in re.findall(r"\b(rayjob|job|service|rayservice)/([\w-]+)", " ".join(words)):
            if kind in ("rayjob", "job"):
                assert name in NAMES["RayJob"], name
            elif kind == "service":
                assert name in {f"{service}-serve-svc" for service in NAMES["RayService"]}, name
        if words[1:3] == ["get", "rayservice"]:
            assert words[3] in NAMES["RayService"]
        if words[1] == "wait":
            assert "--for=jsonpath={.status.jobStatus}=SUCCEEDED" in words


def test_jobs_wait_for_the_previous_one_and_the_rayservice_comes_last():
    order = [re.search(r"deploy/k8s/(\w+)\.", line)[1] for line in LINES if line.startswith("kubectl apply")]
    assert order == ["serviceaccount", "networkpolicy", "preprocess", "train", "evaluate", "render", "serve"]
    waits = [line for line in LINES if line.startswith("kubectl wait")]
    applies = [line for line in LINES if line.startswith(("kubectl apply", "kubectl wait"))]
    assert applies.index(waits[0]) == applies.index("kubectl apply -f deploy/k8s/preprocess.rayjob.yaml") + 1
    assert applies.index(waits[1]) == applies.index("kubectl apply -f deploy/k8s/train.rayjob.yaml") + 1


def test_secrets_are_the_ones_the_manifests_read():
    text = "\n".join(RENDERED.values())
    secrets = {words[4]: words[5:] for words in lines_of("kubectl") if words[1:4] == ["create", "secret", "generic"]}
    assert set(secrets) == {"instrumentgen-api-keys", "instrumentgen-storage"}
    assert "secretKeyRef: {name: instrumentgen-api-keys, key: keys}" in text
    assert secrets["instrumentgen-api-keys"][0].startswith("--from-literal=keys=")
    assert "secretRef: {name: instrumentgen-storage, optional: true}" in text


def test_image_and_data_paths_are_the_manifests():
    image_repo = render.read_values()["image"].rsplit(":", 1)[0]
    for words in lines_of("docker"):
        assert words[-1] == "." if words[1] == "build" else True
        assert any(word.startswith(f"{image_repo}:$TAG") for word in words), words
    bucket = "s3://my-instrumentgen"
    rendered = "\n".join(render.render(render.read_values([f"bucket={bucket}"])).values())
    copies = [words for words in lines_of("aws") if words[1:3] == ["s3", "cp"]]
    assert copies
    for words in copies:
        assert words[-1].startswith(f"{bucket}/") and words[-1] in rendered, words[-1]


@pytest.mark.parametrize("command", ["ray", "serve"])
def test_launcher_commands_name_files_that_exist(command):
    for words in lines_of(command):
        files = [word for word in words[2:] if word.endswith((".yaml", ".yml"))]
        for file in files:
            assert (REPO / file).exists(), words


def test_make_targets_and_http_routes_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in re.findall(r"`make ([\w-]+)`", DOC):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
    routes = (REPO / "serve" / "api.py").read_text()  # the app's routes (serve.api's route groups)
    for words in lines_of("curl"):
        (url,) = [word for word in words if word.startswith("http://")]
        assert f'"{url.split("8000", 1)[1]}"' in routes, url
