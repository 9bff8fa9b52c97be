"""The packages import one way, downwards (STYLE.md §6), checked on every import statement,
including those inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Higher floors may import lower ones and their own; never upwards or sideways across a floor.
FLOORS = {
    "app": 6,
    "kafka": 5, "training": 5, "search": 5, "report": 5,
    "compute": 4,
    "stream": 3,
    "ingest": 2, "output": 2, "operators": 2,
    "core": 1, "observe": 1,
}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "operators":
        return "operators"
    if parts[0] == "pipeline" and len(parts) > 1:
        return parts[1]
    return None


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            if node.module == "pipeline":  # from pipeline import observe
                found += [f"pipeline.{alias.name}" for alias in node.names]
    return found


def _modules(package: str):
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts), path


def test_every_pipeline_module_lives_in_a_stage_package():
    loose = [p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    packages = sorted(p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").exists())
    assert set(packages) <= set(FLOORS), f"a new package needs a floor here: {set(packages) - set(FLOORS)}"
    for package in packages:
        doc = ast.get_docstring(ast.parse((ROOT / "pipeline" / package / "__init__.py").read_text()))
        assert doc and "import" in doc, f"pipeline/{package}/__init__.py must say its job and what it may import"


def test_operators_import_nothing_from_pipeline():
    offenders = [f"{module} imports {name}" for module, path in _modules("operators")
                 for name in _imports(path) if name.split(".")[0] == "pipeline"]
    assert offenders == []


def test_imports_run_downwards_only():
    offenders = []
    for root in ("pipeline", "operators"):
        for module, path in _modules(root):
            source = _package(module)
            if source is None:
                continue
            for name in _imports(path):
                target = _package(name)
                if target is None or target == source:
                    continue
                if FLOORS[target] >= FLOORS[source]:
                    offenders.append(f"{module} ({source}, floor {FLOORS[source]}) imports {name} "
                                     f"({target}, floor {FLOORS[target]})")
    assert offenders == []


def test_stream_logic_loads_without_pyav_ray_kafka_or_torch():
    # Per-stream logic is pure: it must load (and so run) where no decoder or cluster client is,
    # and without torch, which only the shared operators need.
    code = ("import importlib, pkgutil, sys, pipeline.stream as s\n"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(s.__path__, 'pipeline.stream.')]\n"
            "print(sorted(k for k in ('av', 'ray', 'kafka', 'torch', 'torchvision') if k in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    for module, path in _modules("pipeline.stream"):
        assert not {name.split(".")[0] for name in _imports(path)} & {"av", "ray", "kafka", "torch"}, module


@pytest.mark.parametrize("module", ["pipeline.compute.stream_actor", "pipeline.app.cli", "pipeline.kafka.service"])
def test_stream_actors_and_the_driver_load_without_torch(module):
    # Only the shared operators need torch (0.7 GiB of RSS and 2.4 s of import per process
    # with the CUDA build): a stream actor decodes and runs stream logic, the driver runs sinks.
    code = (f"import sys, {module}\n"
            "print(sorted(k for k in ('torch', 'torchvision', 'torchaudio') if k in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
