"""dvc.yaml against the step contract: every stage runs `mccl step <name>`, lists as deps every
project file the step executes (a changed module must re-run the stage), the step's params
sections, and the upstream files the step reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mccl_core.steps.contract import STEP_NAMES, spec
from mccl_core.steps.deps import covered, stage_deps, step_code_files

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_step_is_a_stage_that_calls_mccl_step():
    assert list(STAGES) == list(STEP_NAMES)
    for name, stage in STAGES.items():
        assert stage["cmd"].split()[:3] == ["mccl", "step", name], stage["cmd"]
    assert "${data.root}" in STAGES["validate"]["deps"]  # the dataset itself (DVC interpolates params)


@pytest.mark.parametrize("name", STEP_NAMES)
def test_stage_deps_cover_the_code_the_step_runs(name):
    deps = [d for d in STAGES[name]["deps"] if not d.startswith(("outputs/", "${"))]
    files = step_code_files(name, REPO)
    assert any(f.as_posix() == f"mccl_core/steps/{name}.py" for f in files)
    missing = [f.as_posix() for f in files if not covered(f, deps)]
    assert not missing, f"dvc.yaml stage {name!r} misses deps it runs: {missing}"
    stale = [d for d in deps if not (REPO / d).exists()]
    assert not stale, f"dvc.yaml stage {name!r} lists deps that do not exist: {stale}"


@pytest.mark.parametrize("name", STEP_NAMES)
def test_stage_params_and_upstream_files_follow_the_step_spec(name):
    step = spec(name)
    params = STAGES[name].get("params") or []
    for section in step.sections:
        assert any(p == section or str(p).startswith(section + ".") for p in params), (name, section)
    deps = STAGES[name]["deps"]
    for item in step.inputs:
        if item.optional:
            continue
        upstream = spec(item.step).out_dir().as_posix()
        for read in item.reads:
            assert covered(Path(upstream) / read, deps), f"{name}: reads {upstream}/{read} but does not depend on it"
        assert f"--{item.step} {upstream}" in STAGES[name]["cmd"], (name, item.step)


def test_the_walker_finds_function_level_and_subprocess_imports(tmp_path):
    """The walker is what the deps test trusts: check it on a tiny fake package."""
    pkg = tmp_path / "mccl_core"
    (pkg / "steps").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "steps" / "__init__.py").write_text("")
    (pkg / "steps" / "x.py").write_text("def f():\n    from mccl_core import lazy\n\nCMD = ['-m', 'mccl_core.child']\n")
    (pkg / "lazy.py").write_text("from .helper import g\n")
    (pkg / "helper.py").write_text("")
    (pkg / "child.py").write_text("")
    (pkg / "unused.py").write_text("")
    files = {p.as_posix() for p in step_code_files("x", tmp_path)}
    assert files == {"mccl_core/__init__.py", "mccl_core/steps/__init__.py", "mccl_core/steps/x.py",
                     "mccl_core/lazy.py", "mccl_core/helper.py", "mccl_core/child.py"}  # fmt: skip
    assert stage_deps("x", tmp_path) == sorted(files)
