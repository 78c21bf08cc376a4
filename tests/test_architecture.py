"""The package's layout is its data flow: a folder per stage, imports only run down the stages,
and nothing under instrumentgen/ imports Ray (Ray lives in jobs/ and serve/)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "instrumentgen"
# Lowest first. A module may import its own folder and any lower stage, never a stage at its level or above.
STAGES = {
    "ground": 0,  # config, errors, storage, audio, vocab, faults: modules at the package root
    "model": 1,
    "pretrained": 2,
    "data": 3,
    "training": 4,
    "metrics": 4,
    "instruments": 5,
    "evaluation": 6,
    "cli": 7,  # the command line: the top, like a job
}


def stage_of(module: str) -> str:
    """'instrumentgen.data.shards' -> 'data'; a module at the root is 'ground' (but the CLI)."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in STAGES:
        return parts[1]
    return "cli" if parts[1:] == ["cli"] else "ground"


def imports_of(path: Path) -> list[str]:
    """Every module an import statement in `path` names (from-imports as 'pkg.name' too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def upward_imports(modules: dict[str, Path], stages: dict[str, int]) -> list[str]:
    """'importer -> imported' for each import of a stage at the importer's level or above, but its own."""
    wrong = []
    for module, path in modules.items():
        if module == "instrumentgen":
            continue
        mine = stage_of(module)
        for name in imports_of(path):
            if name not in modules or name == "instrumentgen":
                continue
            theirs = stage_of(name)
            if theirs != mine and stages[theirs] >= stages[mine]:
                wrong.append(f"{module} -> {name}")
    return wrong


def test_every_stage_is_a_folder_a_newcomer_finds():
    for stage in STAGES.keys() - {"ground", "cli"}:
        assert (PACKAGE / stage / "__init__.py").exists(), stage
        assert ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text())), stage


def test_no_module_in_the_package_imports_ray():
    found = [f"{m}: {n}" for m, p in package_modules().items() for n in imports_of(p) if n.split(".")[0] == "ray"]
    assert found == []


def test_imports_only_run_down_the_stages():
    assert upward_imports(package_modules(), STAGES) == []


def test_the_layering_check_can_fail():
    """With 'metrics' put below 'pretrained' (vggish loads its weights through pretrained.weights)
    the same check reports that import: the rule is live, not vacuous."""
    reordered = {**STAGES, "metrics": 1}
    assert "instrumentgen.metrics.vggish -> instrumentgen.pretrained.weights" in upward_imports(
        package_modules(), reordered
    )


@pytest.mark.parametrize("folder", ["data", "pretrained", "model", "instruments", "metrics", "training", "evaluation"])
def test_tests_mirror_the_package(folder):
    assert (Path(__file__).parent / folder).is_dir(), f"tests/{folder} is missing"
