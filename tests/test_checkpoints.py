"""Checkpoints: weights-only loading (tampered files refused), last/prev fallback when last.pt is
unreadable, ``train.resume: false`` moving checkpoints aside, CPU thread choice, epoch log line."""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_params

from mccl_core.data import DataConfig
from mccl_core.models import ModelConfig
from mccl_core.training.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_latest,
    restore_rng_state,
    save_checkpoint,
)
from mccl_core.training.config import TrainConfig
from mccl_core.training.distributed import cpu_training_threads
from mccl_core.training.loop import EpochRecord, TrainInputs, _format_epoch, train
from mccl_core.training.run import TrainArtifacts, prepare_inputs

EPOCHS = 3


class _Stop(Exception):
    """Raised from the epoch callback: the run dies right after a checkpoint, like a kill."""


class _RunsCodeOnLoad:
    """A pickle payload that creates ``marker`` when unpickled (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(autouse=True)
def _keep_global_state():
    """train() seeds the global RNGs and sets determinism flags; later tests must not see that."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads(),
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)  # fmt: skip
    yield
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.set_rng_state(saved[2])
    torch.set_num_threads(saved[3])
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
    torch.backends.cudnn.benchmark = saved[6]


def _configs(root: Path, out: Path, **train_overrides) -> tuple[ModelConfig, TrainConfig, DataConfig]:
    # MCCL with random prototypes (no CPI run): the checkpoint still holds the MCC buffers.
    settings = {"epochs": EPOCHS, "max_steps_per_epoch": 2, "eval_every": 100, **train_overrides}
    params = tiny_train_params(root, out, **settings)
    params["model"]["use_cpi"] = False
    return (ModelConfig.from_dict(params["model"]), TrainConfig.from_dict(params["train"]),
            DataConfig.from_dict(params["data"]))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_inputs(tiny_demo, tiny_demo_label_embeddings, tmp_path_factory) -> TrainInputs:
    model_cfg, train_cfg, data_cfg = _configs(tiny_demo, tmp_path_factory.mktemp("unused"))
    return prepare_inputs(data_cfg, model_cfg, train_cfg, TrainArtifacts(label_embeddings=tiny_demo_label_embeddings))


def _run(root: Path, out: Path, inputs: TrainInputs, stop_after: int | None = None, **overrides):
    model_cfg, train_cfg, _ = _configs(root, out, **overrides)

    def stop(record: EpochRecord) -> None:
        if record.epoch == stop_after:
            raise _Stop

    return train(model_cfg, train_cfg, inputs, on_epoch_end=stop if stop_after is not None else None)


@pytest.fixture(scope="module")
def reference_run(tiny_demo, tiny_inputs, tmp_path_factory) -> Path:
    """An uninterrupted run of EPOCHS epochs."""
    out = tmp_path_factory.mktemp("reference")
    _run(tiny_demo, out, tiny_inputs)
    return out


@pytest.fixture(scope="module")
def stopped_run(tiny_demo, tiny_inputs, tmp_path_factory) -> Path:
    """A run that died after its 2nd of EPOCHS epochs: last.pt = epoch index 1, prev.pt = 0."""
    out = tmp_path_factory.mktemp("stopped")
    with pytest.raises(_Stop):
        _run(tiny_demo, out, tiny_inputs, stop_after=1)
    return out


def _copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundle_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model" / "model.pt", map_location="cpu", weights_only=True)


def test_checkpoint_is_weights_only_and_restores_every_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # numpy caches the 2nd Gaussian: that state must survive too
    rng = capture_rng_state()
    expected = (random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(), torch.rand(2))
    path = tmp_path / "last.pt"
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": {}, "ema": None,
               "rng": rng, "history": [{"epoch": 0, "x": None}], "train_config": {"epochs": 2}}  # fmt: skip
    save_checkpoint(path, {**payload, "epoch": 0})
    save_checkpoint(path, {**payload, "epoch": 1})

    raw = torch.load(path, weights_only=True)  # plain torch, no allow-listed globals
    assert raw["format"] == 2 and raw["epoch"] == 1
    assert load_checkpoint(tmp_path / "prev.pt")["epoch"] == 0  # the rotated previous epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]  # no temp files left
    state = load_checkpoint(path)
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(state["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(), torch.rand(2))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_tampered_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    tampered = tmp_path / "last.pt"
    torch.save({"format": 2, "epoch": 0, "model": _RunsCodeOnLoad(marker)}, tampered)
    # The payload is real: a full unpickle runs it.
    torch.load(tampered, weights_only=False)["model"].close()
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load checkpoint {tampered}.*io\.open"):
        load_checkpoint(tampered)
    assert not marker.exists()

    # Resuming does not fall back past it to a good prev.pt either: a person must look at it.
    save_checkpoint(tmp_path / "prev.pt", {"epoch": 0, "model": {}, "optimizer": {}, "scheduler": {}, "ema": None,
                                           "rng": capture_rng_state(), "history": []})  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match="--restart"):
        load_latest(tampered)
    assert not marker.exists() and tampered.exists()


@pytest.mark.slow
def test_truncated_last_resumes_from_prev_to_the_uninterrupted_result(
    tiny_demo, tiny_inputs, reference_run, stopped_run, tmp_path, caplog
):
    out = _copy_run(stopped_run, tmp_path)
    last, prev = out / "checkpoints" / "last.pt", out / "checkpoints" / "prev.pt"
    assert load_checkpoint(prev)["epoch"] == 0 and load_checkpoint(last)["epoch"] == 1
    _truncate(last)
    with caplog.at_level(logging.INFO):
        result = _run(tiny_demo, out, tiny_inputs)

    assert result.resumed_from_epoch == 0
    assert [r.epoch for r in result.history] == [0, 1, 2]
    warning = next(
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "unreadable" in r.getMessage()
    )
    assert str(last) in warning and str(prev) in warning
    assert f"resumed from {prev} after epoch 1/3" in caplog.text  # what the fallback warning says
    assert f"{prev} (after epoch 1/3)" in warning and not list(out.glob("checkpoints/*.tmp"))
    # 1-based, as in the epoch line "epoch 3/3".
    assert f"checkpoint written: {last} (after epoch 3/3)" in caplog.text
    assert len(list(out.glob("checkpoints/last.pt.corrupt-*"))) == 1  # kept for inspection
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    # Redoing epoch 1 from prev.pt gives exactly what the run that never died computed.
    ref, got = _bundle_state(reference_run), _bundle_state(out)
    assert ref.keys() == got.keys() and any(".prototypes_" in k for k in ref)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


@pytest.mark.slow
def test_both_checkpoints_unreadable_is_a_clear_error(tiny_demo, tiny_inputs, stopped_run, tmp_path):
    out = _copy_run(stopped_run, tmp_path)
    last, prev = out / "checkpoints" / "last.pt", out / "checkpoints" / "prev.pt"
    _truncate(last)
    _truncate(prev)
    with pytest.raises(CheckpointError, match="both checkpoints are unreadable") as error:
        _run(tiny_demo, out, tiny_inputs)
    message = str(error.value)
    assert str(last) in message and str(prev) in message and "--restart" in message and "train.resume: false" in message
    assert last.exists() and prev.exists()  # nothing moved or deleted on failure


@pytest.mark.slow
def test_resume_false_moves_checkpoints_aside_and_starts_from_scratch(
    tiny_demo, tiny_inputs, reference_run, stopped_run, tmp_path
):
    out = _copy_run(stopped_run, tmp_path)
    ckpts = out / "checkpoints"
    before = {name: _digest(ckpts / name) for name in ("last.pt", "prev.pt")}
    result = _run(tiny_demo, out, tiny_inputs, resume=False)

    assert result.resumed_from_epoch is None and [r.epoch for r in result.history] == [0, 1, 2]
    for name, digest in before.items():
        [aside] = ckpts.glob(f"{name}.discarded-*")
        assert _digest(aside) == digest  # moved, byte for byte, not deleted
    # From scratch: the same weights as the reference run.
    ref, got = _bundle_state(reference_run), _bundle_state(out)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_restart_flag_sets_resume_false():
    from mccl_core.training.cli import build_parser

    assert build_parser().parse_args(["--restart"]).restart
    assert build_parser().parse_args(["--no-resume"]).restart  # the step's spelling still works
    assert not build_parser().parse_args([]).restart


@pytest.mark.slow
def test_prev_without_last_is_not_resumed(tiny_demo, tiny_inputs, stopped_run, tmp_path):
    """The train step moves a last.pt of other inputs aside; its prev.pt must not be resumed."""
    out = _copy_run(stopped_run, tmp_path)
    ckpts = out / "checkpoints"
    (ckpts / "last.pt").rename(ckpts / "last.stale.pt")
    result = _run(tiny_demo, out, tiny_inputs, epochs=1)
    assert result.resumed_from_epoch is None and [r.epoch for r in result.history] == [0]
    assert len(list(ckpts.glob("prev.pt.discarded-*"))) == 1
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 0 and not (ckpts / "prev.pt").exists()


@pytest.mark.parametrize(
    ("env", "cores", "expected"),
    [
        ({}, 2, 2),
        ({"LOCAL_WORLD_SIZE": "2"}, 2, 1),
        ({"LOCAL_WORLD_SIZE": "4"}, 16, 4),
        ({"LOCAL_WORLD_SIZE": "3"}, 2, 1),  # never 0
        ({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}, 2, 3),  # explicit wins
        ({"OMP_NUM_THREADS": "4,2"}, 2, 4),  # OpenMP's nested form
    ],
)
def test_cpu_threads_share_the_available_cores(env, cores, expected):
    threads, why = cpu_training_threads(env, available_cores=cores)
    assert threads == expected
    assert ("OMP_NUM_THREADS" in why) == ("OMP_NUM_THREADS" in env)


def test_cpu_threads_default_to_this_process_affinity():
    import os

    threads, why = cpu_training_threads({})
    assert threads == len(os.sched_getaffinity(0)) and "available core" in why
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two'"):
        cpu_training_threads({"OMP_NUM_THREADS": "two"})


def test_epoch_line_and_metrics_show_images_per_second():
    record = EpochRecord(epoch=7, train_loss=0.5, lr=1e-4, seconds=2.0, images_per_second=123.45)
    line = _format_epoch(record, 8)
    assert line.startswith("epoch 8/8 | ") and "123.5 img/s" in line
    metrics = record.metrics()
    assert metrics["train_images_per_second"] == pytest.approx(123.45) and metrics["epoch_seconds"] == 2.0
