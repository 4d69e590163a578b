"""Which project files a step runs: the code ``dvc.yaml`` must list as the stage's deps.

DVC re-runs a stage only when one of its deps changes, so a stage whose deps miss a module it
runs keeps a stale output after that module changes. :func:`step_code_files` walks the step
module's imports inside the project, statically (so nothing heavy is imported): ``import`` and
``from ... import`` statements anywhere in a file (function-level imports included) and module
names given as strings (``python -m mccl_core.training.cli`` started in a subprocess).
``tests/test_dvc_deps.py`` checks every stage of ``dvc.yaml`` against it.
"""

from __future__ import annotations

from pathlib import Path

from mccl_core.architecture import project_imports

PACKAGE = "mccl_core"
ROOT = Path(__file__).resolve().parents[2]


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """``mccl_core.steps.train`` -> its file (a package's ``__init__.py``), or None."""
    base = root.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def step_code_files(step: str, root: Path = ROOT) -> list[Path]:
    """Every project file the step ``step`` may execute, relative to ``root``."""
    todo = [f"{PACKAGE}.steps.{step}"]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is None:
            continue
        files.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += sorted(project_imports(path, root, module_strings=True))
        for resource in ("resources",):  # data files the code reads next to it
            folder = path.parent / resource
            if folder.is_dir() and path.name != "__init__.py":
                files.update(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted(p.relative_to(root) for p in files)


def covered(path: Path, deps: list[str]) -> bool:
    """Whether ``path`` is one of ``deps`` or inside a folder among them."""
    text = path.as_posix()
    return any(text == d.rstrip("/") or text.startswith(d.rstrip("/") + "/") for d in deps)


def stage_deps(step: str, root: Path = ROOT) -> list[str]:
    """The code deps to write in ``dvc.yaml`` for ``step``: the files of ``mccl_core/steps`` and
    of the package root one by one, every other subpackage as a folder (simpler, slightly wider)."""
    deps: set[str] = set()
    for path in step_code_files(step, root):
        parts = path.parts
        deps.add("/".join(parts[:2]) if len(parts) > 2 and parts[1] != "steps" else path.as_posix())
    return sorted(deps)


def rewrite_dvc_yaml(path: Path, root: Path = ROOT) -> bool:
    """Replace the code deps (``mccl_core/...``) of every stage in ``dvc.yaml`` by
    :func:`stage_deps`, keeping everything else (and comments) as written. True if it changed."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    result: list[str] = []
    stage, indent, in_deps = "", "", False
    for line in lines:
        stripped = line.strip()
        if in_deps and not stripped.startswith("- "):  # end of the deps block: current code deps
            result += [f"{indent}- {d}\n" for d in stage_deps(stage, root)]
            in_deps = False
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage = stripped[:-1]
        if stripped == "deps:":
            in_deps, indent = True, " " * (len(line) - len(line.lstrip()) + 2)
        elif in_deps and stripped.startswith(f"- {PACKAGE}/"):
            continue
        result.append(line)
    changed = result != lines
    if changed:
        Path(path).write_text("".join(result), encoding="utf-8")
    return changed


if __name__ == "__main__":  # print the code deps of each stage, or rewrite them in dvc.yaml
    import sys

    if sys.argv[1:2] == ["--write"]:
        target = Path(sys.argv[2] if len(sys.argv) > 2 else "dvc.yaml")
        print(f"{target}: {'updated' if rewrite_dvc_yaml(target) else 'already current'}")
    else:
        for name in sys.argv[1:] or ["demo", "validate", "extract", "cluster", "train", "evaluate", "register"]:
            print(f"{name}:")
            print("\n".join(f"  - {d}" for d in stage_deps(name)))
