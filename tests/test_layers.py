"""The package's layers (pyproject [tool.importlinter]): each imports only the layers below it,
and core/prepare/evaluation import no Paddle. Checked by import-linter on the real source, and on a
copy with one upward import put back, which must break the contract."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def source_copy(tmp_path):
    shutil.copytree(ROOT / "paddle_lane", tmp_path / "paddle_lane", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_every_layer_imports_only_those_below_it():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("paddle_lane/engine/trainer.py", "paddle_lane.deploy.export"),       # training below deployment
    ("paddle_lane/inference/predictor.py", "paddle_lane.engine.trainer"),  # inference below training
    ("paddle_lane/models/builder.py", "paddle_lane.config"),               # the config names the models
    ("paddle_lane/core/labels.py", "paddle_lane.prepare.scan"),            # core at the bottom
])
def test_one_upward_import_breaks_the_layers(source_copy, module, upward):
    path = source_copy / module
    path.write_text(path.read_text() + f"\nimport {upward}  # put back for the test\n")
    result = lint(source_copy)
    assert result.returncode == 1, result.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {upward}" in result.stdout


def test_paddle_in_core_breaks_the_no_paddle_contract(source_copy):
    path = source_copy / "paddle_lane/core/metrics.py"
    path.write_text(path.read_text() + "\nimport paddle  # put back for the test\n")
    result = lint(source_copy)
    assert result.returncode == 1 and "run without Paddle BROKEN" in result.stdout, result.stdout


def test_paddle_behind_the_export_folder_reader_breaks_its_contract(source_copy):
    path = source_copy / "paddle_lane/inference/export_folder.py"
    path.write_text(path.read_text() + "\nfrom paddle_lane.runs import checkpoint  # put back for the test\n")
    result = lint(source_copy)
    assert result.returncode == 1 and "export folder without Paddle BROKEN" in result.stdout, result.stdout


def cycles(tree: Path) -> list[str]:
    """Modules on an import cycle (function-level imports included, TYPE_CHECKING ones not)."""
    code = ("import graphlib, grimp\n"
            "g = grimp.build_graph('paddle_lane', exclude_type_checking_imports=True, cache_dir=None)\n"
            "deps = {m: g.find_modules_directly_imported_by(m) for m in g.modules}\n"
            "try:\n    graphlib.TopologicalSorter(deps).prepare()\n"
            "except graphlib.CycleError as e:\n    print(' '.join(e.args[1]))\n")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_no_module_imports_itself_through_others():
    assert cycles(ROOT) == []


def test_a_lazy_import_that_closes_a_loop_is_a_cycle(source_copy):
    path = source_copy / "paddle_lane/deploy/parity.py"
    path.write_text(path.read_text() + "\n\ndef _loop():\n    from paddle_lane.deploy.export import member_entry\n")
    assert {"paddle_lane.deploy.parity", "paddle_lane.deploy.export"} <= set(cycles(source_copy))
