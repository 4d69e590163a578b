"""Shared fixtures, built once per session (each expensive thing happens once per run):

- ``tiny_demo``, its label-embedding cache and ``tiny_trained_bundle`` (one tiny trained model);
- ``tiny_upstream``: the validate / extract / cluster outputs of the tiny demo;
- ``briefly_trained_demo_model``: the default model briefly trained on a small demo, shared by the
  learning and pointing assertions;
- ``mlflow_server`` and ``s3_server``: one real MLflow tracking server and one SeaweedFS S3 server
  (a test that must kill its server starts its own).

Test tiers: ``pytest -m "not slow"`` is the fast tier (unit tests and in-process checks of the
logic); tests marked ``slow`` start real services (MLflow server, ``mlflow models serve``, S3),
train models, run ``dvc repro`` or the Kubeflow DAG. Plain ``pytest`` (CI) runs both.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Tests run on 2 cores; more threads than cores only adds contention.
os.environ.setdefault("OMP_NUM_THREADS", "2")

FIXTURES = Path(__file__).parent / "fixtures"

#: Test files that run longest (minutes of pipeline runs, pod trainings, servers), longest first.
#: The two xdist workers take whole files in collection order (``--dist loadfile``), so these go
#: first: a long file started last would keep one worker busy while the other idles
#: (longest-processing-time-first scheduling). The per-file times at the end of every run
#: (``slowest files``) say when this list needs an update.
LONGEST_FILES = ("test_dvc.py", "test_launch.py", "test_pipeline.py", "test_mdid_e2e.py", "test_experiments.py",
                 "test_serving.py", "test_training.py", "test_registry.py")  # fmt: skip
_FILE_SECONDS: dict[str, float] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    # sort is stable: the tests of a file keep their order, files off the list keep theirs
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Seconds per test file (setup + call + teardown), the 12 longest: what the workers balance."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("slowest files")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])[:12]:
        terminalreporter.write_line(f"{seconds:8.1f}s {path}")


TINY_MODEL = {
    "backbone": {"arch": "resnet18", "stages": ["layer2", "layer3"], "weights": "none"},
    # label_text: dvc.yaml's cluster stage depends on model.pki.label_text, so params files name it
    "pki": {"label_text": "description", "dim": 32, "decoder_layers": 1, "heads": 2, "ff_dim": 64, "dropout": 0.0},
    "cpi": {"k_max": 4, "max_patches_per_class": 2000},
}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """96 train / 48 val / 48 test synthetic images of 32 px (Intentonomy schema)."""
    from mccl_core.data import DemoConfig, generate_demo

    root = tmp_path_factory.mktemp("tiny_demo")
    generate_demo(root, DemoConfig(seed=3, n_train=96, n_val=48, n_test=48, image_size=32), show_progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_demo_label_embeddings(tiny_demo, tmp_path_factory) -> Path:
    """Label-embedding cache of the demo classes (the real offline sentence encoder, run once)."""
    from mccl_core.data import DataConfig, load_split
    from mccl_core.models import compute_label_embeddings, label_texts

    train = load_split(DataConfig(source="demo", root=tiny_demo), "train")
    path = tmp_path_factory.mktemp("embeddings") / "label_embeddings.npz"
    compute_label_embeddings(label_texts(train.class_names, train.class_descriptions), path)
    return path


#: The default backbone: EfficientNet-Lite0 with the packaged ImageNet weights (offline).
LITE0_PACKAGE = {"arch": "efficientnet_lite0", "stages": ["stage3", "stage4"], "weights": "package"}


def tiny_train_params(root: Path, out: Path, model: dict | None = None, **train_overrides: Any) -> dict:
    """params.yaml sections of a tiny CPU training run on the tiny demo (``TINY_MODEL`` unless
    ``model`` is given; ``mcc.momentum`` 0.9 so prototypes move visibly within a few steps)."""
    train_section = {
        "epochs": 3,
        "batch_size": 16,
        "lr": 1e-3,
        "image_size": 32,
        "num_workers": 0,
        "ema_decay": 0.99,
        "deterministic": True,
        "device": "cpu",
        "output_dir": str(out),
    }
    train_section.update(train_overrides)
    model = copy.deepcopy(TINY_MODEL if model is None else model)
    model["mcc"] = {"momentum": 0.9}  # prototypes move visibly within a few steps
    return {"data": {"source": "demo", "root": str(root)}, "model": model, "train": train_section}


@dataclass(frozen=True)
class TrainedBundle:
    """The session's tiny trained bundle. Read-only: a test that writes into a bundle copies
    ``path`` to its ``tmp_path`` first (the session checks at the end that nothing changed)."""

    path: Path  # the bundle folder (model.pt, bundle.json, prototypes, label embeddings, co-occurrence)
    checkpoint: Path  # checkpoints/last.pt of the run (weights, EMA, optimiser)
    model_cfg: Any  # ModelConfig
    train_cfg: Any  # TrainConfig
    inputs: Any  # TrainInputs (datasets, class names, label embeddings, co-occurrence, prototype bank)
    history: list


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_trained_bundle(tiny_demo, tiny_demo_label_embeddings, tmp_path_factory) -> TrainedBundle:
    """One tiny MCCL model trained once per session, for the tests that only need *a* trained
    bundle (serving, bundle round trip). The default backbone (EfficientNet-Lite0, packaged
    weights) on the tiny demo at 32 px: CPI on the 96 train images, then one epoch capped at
    2 optimiser steps, with EMA. Tests of training itself (resume, DDP, ablations) train their own.

    The global RNGs and torch's determinism flags are restored afterwards, so the tests that run
    after the one that first asks for this fixture see the same global state as without it.
    """
    import numpy as np
    import torch

    from mccl_core.data import DataConfig
    from mccl_core.models import ModelConfig
    from mccl_core.training.config import TrainConfig
    from mccl_core.training.loop import train
    from mccl_core.training.run import TrainArtifacts, prepare_inputs

    out = tmp_path_factory.mktemp("tiny_trained")
    model = {**copy.deepcopy(TINY_MODEL), "backbone": dict(LITE0_PACKAGE)}
    params = tiny_train_params(tiny_demo, out, model=model, epochs=1, max_steps_per_epoch=2)
    model_cfg = ModelConfig.from_dict(params["model"])
    train_cfg = TrainConfig.from_dict(params["train"])
    saved = (random.getstate(), np.random.get_state(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)  # fmt: skip
    try:
        with torch.random.fork_rng(devices=[]):
            inputs = prepare_inputs(DataConfig.from_dict(params["data"]), model_cfg, train_cfg,
                                    TrainArtifacts(label_embeddings=tiny_demo_label_embeddings))  # fmt: skip
            result = train(model_cfg, train_cfg, inputs)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        torch.backends.cudnn.benchmark = saved[4]
    bundle = TrainedBundle(Path(result.model_path), Path(result.checkpoint_path), model_cfg, train_cfg, inputs,
                           list(result.history))  # fmt: skip
    before = _tree_digest(bundle.path)
    yield bundle
    assert _tree_digest(bundle.path) == before, f"a test modified the shared bundle {bundle.path}; copy it first"


@pytest.fixture(scope="session")
def tiny_upstream(tiny_demo, tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    """validate -> extract -> cluster of ``TINY_MODEL`` on the tiny demo, run once per session:
    the params and the three step folders, for the tests that start from the train step."""
    from mccl_core.steps.contract import run_step
    from mccl_core.tracking.steps import TrackingOptions

    root = tmp_path_factory.mktemp("tiny_upstream")
    params = {"data": {"source": "demo", "root": str(tiny_demo)}, "validate": {"workers": 2},
              "extract": {"batch_size": 64, "tokens_per_image": 8, "shard_size": 64, "device": "cpu"},
              "cluster": {"device": "cpu"}, "model": copy.deepcopy(TINY_MODEL),
              "train": {"image_size": 32, "num_workers": 0, "device": "cpu"}}  # fmt: skip
    folders: dict[str, Path] = {}
    for name, inputs in (("validate", {}), ("extract", {"validate"}), ("cluster", {"validate", "extract"})):
        folders[name] = root / name
        run_step(name, params, {k: folders[k] for k in inputs}, folders[name], TrackingOptions(enabled=False))
    before = {name: _tree_digest(folder) for name, folder in folders.items()}
    yield params, folders
    assert {name: _tree_digest(folder) for name, folder in folders.items()} == before, "a test modified tiny_upstream"


@dataclass(frozen=True)
class BrieflyTrainedDemoModel:
    """The shipped default model and training settings (params.yaml), briefly trained on a small
    demo; read-only, like :class:`TrainedBundle`."""

    data_cfg: Any  # DataConfig of the small demo (test split with clue boxes)
    inputs: Any  # TrainInputs
    model_path: Path
    history: list


#: The small demo of ``briefly_trained_demo_model`` (rendered at the 64 px it is trained at) and
#: its budget, 125 optimiser steps. Smaller does not keep the learning margins: 480 images x 4
#: epochs (60 steps) measured test macro-F1 0.263 vs the prior's 0.241 (+0.02, the test needs
#: +0.05), mAP 0.319 vs 0.167.
BRIEF_DEMO = {"seed": 0, "n_train": 800, "n_val": 300, "n_test": 300, "image_size": 64}
BRIEF_EPOCHS = 5


@pytest.fixture(scope="session")
def briefly_trained_demo_model(tmp_path_factory) -> BrieflyTrainedDemoModel:
    """The default model (EfficientNet-Lite0 with its packaged ImageNet weights, 64 px, the
    default token-and-rebuild decoder input) trained once per session for 5 epochs on an 800-image demo; the
    learning test and the pointing test both judge it. Global RNG state is restored afterwards."""
    import numpy as np
    import torch
    import yaml

    from mccl_core.data import DataConfig, DemoConfig, generate_demo
    from mccl_core.models import ModelConfig
    from mccl_core.training.config import TrainConfig
    from mccl_core.training.loop import train
    from mccl_core.training.run import prepare_inputs

    tmp = tmp_path_factory.mktemp("briefly_trained")
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    root = generate_demo(tmp / "demo", DemoConfig(**BRIEF_DEMO), show_progress=False)
    data_cfg = DataConfig(source="demo", root=root)
    model_cfg = ModelConfig.from_dict(params["model"])
    train_cfg = TrainConfig.from_dict({**params["train"], "epochs": BRIEF_EPOCHS, "device": "cpu",
                                       "output_dir": str(tmp / "train"), "resume": False})  # fmt: skip
    saved = (random.getstate(), np.random.get_state(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.get_num_threads())  # fmt: skip
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            inputs = prepare_inputs(data_cfg, model_cfg, train_cfg)
            result = train(model_cfg, train_cfg, inputs)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        torch.backends.cudnn.benchmark = saved[4]
        torch.set_num_threads(saved[5])
    trained = BrieflyTrainedDemoModel(data_cfg, inputs, Path(result.model_path), list(result.history))
    before = _tree_digest(trained.model_path)
    yield trained
    assert _tree_digest(trained.model_path) == before, "a test modified the briefly trained model"


#: Credentials of the session's S3 server: random per run, so a leak check can search for them.
S3_ACCESS_KEY = "mccl" + secrets.token_hex(4)
S3_SECRET_KEY = secrets.token_urlsafe(24)
#: Buckets of the session's S3 server; each test writes under its own key prefix.
S3_BUCKETS = ("mccl", "mccl-artifacts")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real SeaweedFS S3 server (``weed mini``, enforced credentials) for the session."""
    from services import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"), S3_ACCESS_KEY, S3_SECRET_KEY, buckets=S3_BUCKETS)
    server.start()
    yield server
    server.stop()
    assert S3_SECRET_KEY not in server.log_text()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real ``mlflow server`` (SQLite, local artifacts) for the session's tests that need *a*
    server; each uses its own experiment and model names. A test that kills its server (the
    tracking journal test) starts its own."""
    from services import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_process_state_leaks_between_tests():
    """Steps run in-process here (one process per step in production): restore the environment
    and MLflow's fluent globals (tracking URI, active experiment and runs) after every test, so
    one test's store never becomes the next test's default."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None and hasattr(fluent, "_active_experiment_id"):
        fluent._active_experiment_id = None
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and hasattr(utils, "_tracking_uri"):
        utils._tracking_uri = None
    registry_utils = sys.modules.get("mlflow.tracking._model_registry.utils")
    if registry_utils is not None and hasattr(registry_utils, "_registry_uri"):
        registry_utils._registry_uri = None
