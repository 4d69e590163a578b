"""The Dockerfile (no Docker daemon here): pins equal pyproject's, the image layout has every
command dvc.yaml, the Kubeflow components and the PyTorchJob pods run, non-root, no secrets."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pins() -> dict[str, str]:
    pins = {}
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", requirement)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_torch_pins_match_pyproject_and_the_rest_comes_from_pyproject():
    args = dict(a.split("=", 1) for word, a in _instructions() if word == "ARG" and "=" in a)
    pins = _pins()
    assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]
    run = " ".join(a for word, a in _instructions() if word == "RUN")
    # Every other dependency is installed from pyproject.toml itself, so the pins cannot drift.
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']" in run
    assert "pip install -r /tmp/requirements.txt" in run and "pip install --no-deps ." in run
    assert re.search(r"torch==\$\{TORCH_VERSION\}", run) and re.search(r"torchvision==\$\{TORCHVISION_VERSION\}", run)


def test_base_pinned_variants_non_root_no_secrets():
    instructions = _instructions()
    base = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and a.startswith("PYTHON_IMAGE="))[
        "PYTHON_IMAGE"
    ]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    requires = PYPROJECT["project"]["requires-python"]
    assert ">=3.11" in requires
    assert "cpu)" in DOCKERFILE and "cuda)" in DOCKERFILE and "ARG VARIANT=cuda" in DOCKERFILE
    users = [a for w, a in instructions if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_user = max(i for i, (w, _) in enumerate(instructions) if w == "USER")
    assert all(w != "RUN" for w, _ in instructions[last_user:]), "commands after USER would run as the user anyway"
    secretish = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY)", re.IGNORECASE)
    for word, args in instructions:
        if word in ("ENV", "ARG"):
            assert not secretish.search(args), f"{word} {args} looks like a secret"
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".env", ".git", ".venv", "data", "outputs", "mlflow.db", ".dvc/config.local", ".aws"):
        assert path in ignored, f".dockerignore must exclude {path}"


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory) -> Path:
    """The files the Dockerfile COPYs, laid out under its WORKDIR as in the image."""
    workdir = next(a for w, a in _instructions() if w == "WORKDIR")
    root = tmp_path_factory.mktemp("image") / workdir.lstrip("/")
    root.mkdir(parents=True)
    for word, args in _instructions():
        if word != "COPY":
            continue
        *sources, target = shlex.split(args)
        for source in sources:
            src = REPO / source
            dest = root / (
                source
                if target.endswith("/") and src.is_dir()
                else Path(target) / Path(source).name
                if target.endswith("/")
                else target
            )
            if src.is_dir():
                shutil.copytree(src, root / target if target != "./" else root / source,
                                ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
            else:
                shutil.copy(src, dest if target != "./" else root / source)
    return root


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # -I would drop cwd from sys.path; -P is not set, so `python -m` finds the copied packages first.
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONNOUSERSITE": "1", "HOME": str(cwd)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_every_packaged_module_is_copied(image_layout):
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert (image_layout / package.rstrip("*")).is_dir(), f"{package} is not copied into the image"
    for name in ("dvc.yaml", "params.yaml", "data.dvc", "pyproject.toml"):
        assert (image_layout / name).is_file()


#: Runs in the image layout: each step's ``--help`` through the real CLI in one interpreter (the
#: import dominates: one interpreter per stage cost 8 imports), outputs separated by a marker.
_ALL_HELPS = """
import contextlib, io, sys
from mccl_core.cli import main
for name in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(["step", name, "--help"])
        except SystemExit as stop:
            code = stop.code
    print(f"=== {name} {code}\\n{out.getvalue()}", end="")
"""


@pytest.mark.slow  # imports the whole CLI in the image layout
def test_every_dvc_stage_command_exists_in_the_image(image_layout):
    stages = yaml.safe_load((image_layout / "dvc.yaml").read_text())["stages"]
    commands = {name: shlex.split(" ".join(stage["cmd"].split())) for name, stage in stages.items()}
    for name, command in commands.items():
        assert command[:2] == ["mccl", "step"], f"stage {name}: {command}"
    steps = sorted({command[2] for command in commands.values()})
    proc = _python(["-c", _ALL_HELPS, *steps], image_layout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    helps = {}
    for block in proc.stdout.split("=== ")[1:]:
        head, _, text = block.partition("\n")
        step, code = head.rsplit(" ", 1)
        assert code in ("0", "None"), f"mccl step {step} --help exited {code}: {proc.stderr[-2000:]}"
        helps[step] = text
    assert sorted(helps) == steps
    for name, command in commands.items():
        assert f"mccl step {command[2]}" in helps[command[2]], f"stage {name}: {helps[command[2]][:300]}"
        # Every output file the stage's command writes is under a path argument it accepts.
        for flag in [c for c in command[3:] if c.startswith("--")]:
            assert flag in helps[command[2]], f"stage {name}: {flag} is not an option of the step"


def test_kubeflow_and_pytorchjob_entry_points_exist_in_the_image(image_layout):
    spec = yaml.safe_load((REPO / "pipeline" / "mccl_pipeline.yaml").read_text())
    modules = set()
    for executor in spec["deploymentSpec"]["executors"].values():
        modules |= set(
            re.findall(r"from (components\.runner) import run_kfp_step", "\n".join(executor["container"]["command"]))
        )
    assert modules == {"components.runner"}
    assert _python(["-c", "import components.runner, pipeline.pipeline"], image_layout).returncode == 0
    for module in ("mccl_core.steps.pod", "mccl_core.launch.node", "mccl_core.launch.pytorchjob"):  # + older manifests'
        proc = _python(["-m", module, "--help"], image_layout)
        assert proc.returncode == 0 and "--staging-uri" in proc.stdout, module
    assert PYPROJECT["project"]["scripts"]["mccl"] == "mccl_core.cli:main"
    proc = _python(["-c", "from mccl_core.cli import main; raise SystemExit(main(['step', '--help']))"], image_layout)
    assert proc.returncode == 0 and "validate" in proc.stdout
