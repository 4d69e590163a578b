"""The house rules of docs/architecture.md, read from the code: imports run down the layers only,
data and models do not import each other, and no step imports another step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mccl_core.steps.contract import STEP_NAMES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mccl_core"

#: Floors of mccl_core, bottom first (docs/architecture.md). A module may import its own folder
#: and any folder on a lower floor; folders on the same floor do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("config",),
    ("data", "models", "tracking"),
    ("metrics", "validation"),
    ("training",),
    ("launch",),
    ("serving",),
    ("explain",),
    ("steps",),
    ("experiments",),
    ("cli",),
)
FLOOR = {name: level for level, names in enumerate(LAYERS) for name in names}


def _folder(module: str) -> str:
    """``mccl_core.models.cpi.bank`` -> ``models``; ``mccl_core.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every ``mccl_core`` module ``path`` imports (function-level and TYPE_CHECKING imports
    included: an arrow is an arrow even when it is lazy). Module names in strings (subprocess
    entry points) are not imports."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if (REPO / target.replace(".", "/") / alias.name).exists() or (REPO / f"{target.replace('.', '/')}/{alias.name}.py").exists())  # fmt: skip
    return {name for name in found if name == "mccl_core" or name.startswith("mccl_core.")}


def _arrows() -> list[tuple[str, str, str]]:
    """``(file, source folder, imported module)`` for every cross-folder import in mccl_core."""
    arrows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _folder(_module_name(path)) or "config"  # mccl_core/__init__.py: the root, floor 0
        if path.parent == PACKAGE:
            source = path.stem if path.stem != "__init__" else "config"
        for target in project_imports(path):
            folder = _folder(target)
            if folder and folder != source:
                arrows.append((path.relative_to(REPO).as_posix(), source, target))
    return arrows


def test_every_folder_of_mccl_core_has_a_floor():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    folders |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert folders <= set(FLOOR), f"give {sorted(folders - set(FLOOR))} a floor in LAYERS and docs/architecture.md"


def test_imports_run_down_the_floors_only():
    wrong = [f"{file}: {source} (floor {FLOOR[source]}) imports {target} (floor {FLOOR[_folder(target)]})"
             for file, source, target in _arrows() if FLOOR[_folder(target)] >= FLOOR[source]]  # fmt: skip
    assert not wrong, "imports that run up or sideways:\n" + "\n".join(wrong)


def test_data_and_models_do_not_import_each_other():
    both = {"data", "models"}
    crossing = [(f, t) for f, s, t in _arrows() if s in both and _folder(t) in both - {s}]
    assert not crossing


@pytest.mark.parametrize("step", STEP_NAMES)
def test_no_step_imports_another_step(step):
    others = {f"mccl_core.steps.{name}" for name in STEP_NAMES if name != step}
    imported = project_imports(PACKAGE / "steps" / f"{step}.py")
    assert not (imported & others), f"steps/{step}.py imports {sorted(imported & others)}; use mccl_core.steps.layout"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rules above must be able to fail: a models file importing the data folder is caught."""
    fake = PACKAGE / "models" / "_architecture_probe.py"
    fake.write_text("def f():\n    from mccl_core.data import load_split\n    return load_split\n", encoding="utf-8")
    try:
        arrows = [a for a in _arrows() if a[0].endswith("_architecture_probe.py")]
        assert arrows == [("mccl_core/models/_architecture_probe.py", "models", "mccl_core.data")]
        with pytest.raises(AssertionError, match="models .floor 1. imports mccl_core.data .floor 1."):
            test_imports_run_down_the_floors_only()
    finally:
        fake.unlink()
