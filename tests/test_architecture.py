"""The house rules of docs/architecture.md (mccl_core.architecture), read from the code: imports
run down the floors only, data and models do not import each other, no step imports another."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mccl_core.architecture import FLOOR, PACKAGE_DIR, arrows, folder_of, mermaid, project_imports, violations
from mccl_core.steps.contract import STEP_NAMES

REPO = Path(__file__).resolve().parents[1]


def test_every_folder_of_mccl_core_has_a_floor():
    folders = {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    folders |= {p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}
    assert folders <= set(FLOOR), f"give {sorted(folders - set(FLOOR))} a floor in mccl_core/architecture.py"


def test_imports_run_down_the_floors_only():
    assert violations() == [], "imports that run up or sideways:\n" + "\n".join(violations())


def test_data_and_models_do_not_import_each_other():
    both = {"data", "models"}
    assert [(file, target) for file, source, target in arrows() if source in both and folder_of(target) in both] == []


@pytest.mark.parametrize("step", STEP_NAMES)
def test_no_step_imports_another_step(step):
    others = {f"mccl_core.steps.{name}" for name in STEP_NAMES if name != step}
    imported = project_imports(PACKAGE_DIR / "steps" / f"{step}.py")
    assert not imported & others, f"steps/{step}.py imports {sorted(imported & others)}: use mccl_core.steps.layout"


def test_the_rules_catch_an_upward_import(tmp_path):
    """The checks above can fail: in a copy of the package (never the source tree: the other
    worker hashes and copies it), a models file that imports the data folder lazily, inside a
    function, is an upward arrow, and a step importing another step's module is seen."""
    shutil.copytree(PACKAGE_DIR, tmp_path / "mccl_core", ignore=shutil.ignore_patterns("__pycache__", "resources"))
    probe = tmp_path / "mccl_core" / "models" / "probe.py"
    probe.write_text("def f():\n    from mccl_core.data import load_split\n    return load_split\n", encoding="utf-8")
    assert ("mccl_core/models/probe.py", "models", "mccl_core.data") in arrows(tmp_path)
    assert violations(tmp_path) == ["mccl_core/models/probe.py: models (floor 1) imports mccl_core.data (floor 1)"]
    step = tmp_path / "mccl_core" / "steps" / "probe.py"
    step.write_text("from mccl_core.steps import train\n", encoding="utf-8")
    assert "mccl_core.steps.train" in project_imports(step, tmp_path)


def test_the_train_folder_is_written_under_the_layout_names():
    """The loop writes the train step's folder itself (it also runs without the pipeline)."""
    from mccl_core.launch.node import CHECKPOINTS
    from mccl_core.steps import layout
    from mccl_core.training import loop

    assert (loop.FINAL_MODEL_NAME, loop.HISTORY_NAME, CHECKPOINTS) == (
        layout.MODEL_DIR, layout.HISTORY_FILE, layout.CHECKPOINT_DIR)  # fmt: skip


def test_the_picture_in_the_docs_is_the_code_as_it_is():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert mermaid() in text, "docs/architecture.md is stale: paste `python -m mccl_core.architecture` into it"
