"""The floors of ``mccl_core`` and the rule between them, as code: imports run down only.

Every folder (and top-level module) of the package has a floor. A module may import its own
folder and any folder on a lower floor; folders on the same floor do not import each other.
``tests/test_architecture.py`` checks every import statement of the package against this (lazy
and ``TYPE_CHECKING`` imports included: an arrow is an arrow even when it is taken late), and
``python -m mccl_core.architecture`` draws the floors and the arrows that exist
(``docs/architecture.md`` shows that picture; a test keeps it current).

Why these floors: the science (``models``) and the data (``data``) know nothing of each other
or of training, so each can be read, tested and reused alone; ``training`` joins them;
``launch``, ``serving`` and ``explain`` use trained models; the pipeline ``steps`` sit on all of
that, and the experiment runner and the command line on the steps. The orchestrators
(``components/``, ``pipeline/``) live outside the package, above everything.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_MODULE_STRING = re.compile(r"^mccl_core(\.\w+)+$")
ROOT = PACKAGE_DIR.parent

#: Floors, bottom first, and what lives there.
LAYERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("config", "hashing", "architecture"), "params, typed configs, overrides | fingerprints | these floors"),
    (("data", "models", "tracking"), "datasets and transforms | the MCCL network, CPI, MCC, PKI | MLflow"),
    (("metrics", "validation"), "official scoring | data checks (Great Expectations)"),
    (("training",), "the loop, checkpoints, CPI inputs from a dataset"),
    (("launch",), "torchrun here, TrainJob / PyTorchJob on Kubernetes"),
    (("serving",), "MLflow pyfunc model, registry, batch scoring"),
    (("explain",), "maps, prototype gallery, pointing game"),
    (("steps",), "the pipeline steps and their contract"),
    (("experiments",), "ablations, seeds, the open questions"),
    (("cli",), "the mccl command"),
)
FLOOR: dict[str, int] = {name: level for level, (names, _) in enumerate(LAYERS) for name in names}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = Path(path).resolve().relative_to(Path(root).resolve()).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def folder_of(module: str) -> str:
    """``mccl_core.models.cpi.bank`` -> ``models``; ``mccl_core`` (the package root) -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "config"


def project_imports(path: Path, root: Path = ROOT, module_strings: bool = False) -> set[str]:
    """Every ``mccl_core`` module that ``path`` (a file of the checkout at ``root``) imports.
    Module names in strings (subprocess entry points such as ``python -m
    mccl_core.training.cli``) are not imports; ``module_strings`` adds them (what a file may
    *run*: :mod:`mccl_core.steps.deps` lists those as DVC deps too)."""
    module = module_name(path, root)
    package = module if Path(path).name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            folder = Path(root).joinpath(*target.split("."))
            # "from mccl_core.steps import layout" imports the submodule mccl_core.steps.layout
            found.update(f"{target}.{a.name}" for a in node.names
                         if (folder / a.name).is_dir() or (folder / f"{a.name}.py").is_file())  # fmt: skip
        elif module_strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MODULE_STRING.match(node.value):
                found.add(node.value)
    return {name for name in found if name == "mccl_core" or name.startswith("mccl_core.")}


def arrows(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """``(file, its folder, imported module)`` for every import that leaves the file's folder
    (``root``: a checkout, the folder that holds ``mccl_core``)."""
    found = []
    for path in sorted((Path(root) / "mccl_core").rglob("*.py")):
        source = folder_of(module_name(path, root))
        for target in sorted(project_imports(path, root)):
            if folder_of(target) != source:
                found.append((path.resolve().relative_to(Path(root).resolve()).as_posix(), source, target))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """Imports that run up or sideways, one line each (empty: the house is in order)."""
    wrong = []
    for file, source, target in arrows(root):
        up, down = FLOOR.get(source), FLOOR.get(folder_of(target))
        if up is None or down is None or down >= up:
            wrong.append(f"{file}: {source} (floor {up}) imports {target} (floor {down})")
    return wrong


def mermaid(root: Path = ROOT) -> str:
    """The floors (top first) and the folder-to-folder arrows that exist, as a Mermaid graph."""
    edges = sorted({(source, folder_of(target)) for _, source, target in arrows(root)})
    lines = ["```mermaid", "flowchart TB"]
    for level in reversed(range(len(LAYERS))):
        names, what = LAYERS[level]
        lines.append(f'    subgraph floor{level}["floor {level}: {what}"]')
        lines += [f"        {name}" for name in names]
        lines.append("    end")
    lines += [f"    {source} --> {target}" for source, target in edges]
    lines.append("```")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(mermaid(), end="")
