"""The architecture contracts in pyproject.toml ([tool.importlinter]), checked by `lint-imports`:
they hold for the code as it is, and they catch the breaches they exist for."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("cli", "gateway", "worker", "evaluation", "modelserver", "model_export", "services")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_code_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture
def copy_of_the_code(tmp_path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def add_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n{statement}  # a breach, planted by the test\n")


@pytest.mark.parametrize("module, statement, contract", [
    ("gateway/health.py", "import worker.tasks", "The gateway runs no worker"),
    ("gateway/health.py", "from modelserver import registry", "The gateway runs no worker"),
    ("services/images.py", "from gateway import errors", "Entry points above the core"),
    ("services/config.py", "from services import images", "No import cycles"),  # images imports config
    ("worker/ingest.py", "import tensorflow", "Only the model server and the exporter import TensorFlow"),
])
def test_a_breach_breaks_its_contract(copy_of_the_code, module, statement, contract):
    add_import(copy_of_the_code / module, statement)
    result = lint_imports(copy_of_the_code)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout
