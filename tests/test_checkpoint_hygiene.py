"""Checkpoint hygiene: no temporary file left after the prev.pt fallback, log lines that agree on
the epoch (the training-level check: tests/test_checkpoints.py), one clear error (with a hint that works) for a refused checkpoint, and set-aside stale
checkpoints that never overwrite each other."""

from __future__ import annotations

import logging

import torch
import yaml
from conftest import tiny_train_params
from test_checkpoints import _RunsCodeOnLoad, _truncate

from mccl_core.launch.local import training_failure
from mccl_core.steps.train import prepare_resume
from mccl_core.training import cli as train_cli
from mccl_core.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)


def _payload(epoch: int, epochs: int = 3) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}, "optimizer": {}, "scheduler": {},
            "ema": None, "rng": capture_rng_state(), "history": [], "train_config": {"epochs": epochs}}  # fmt: skip


def test_fallback_then_next_save_leaves_no_temporary_file(tmp_path, caplog):
    """The fallback restores last.pt as a hard link of prev.pt; the next save's rotation of two
    links to one file must not leave ``prev.pt.tmp`` behind (rename(2) of such a pair is a no-op)."""
    last, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    save_checkpoint(last, _payload(0))
    save_checkpoint(last, _payload(1))
    _truncate(last)
    with caplog.at_level(logging.INFO):
        state, source = load_latest(last, repair=True)
    assert source == prev and state["epoch"] == 0
    assert f"resuming from the previous one, {prev} (after epoch 1/3)" in caplog.text
    save_checkpoint(last, _payload(1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if not n.startswith("last.pt.corrupt-")] == ["last.pt", "prev.pt"], names
    assert load_checkpoint(prev)["epoch"] == 0 and load_checkpoint(last)["epoch"] == 1
    save_checkpoint(last, _payload(2))
    assert load_checkpoint(prev)["epoch"] == 1 and load_checkpoint(last)["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_refused_checkpoint_is_one_error_with_a_hint_that_works(
    tiny_demo, tiny_demo_label_embeddings, tmp_path, capsys
):
    """``mccl train`` prints one line (no traceback), and the step quotes that line instead of
    saying that a re-run resumes - a re-run would be refused the same way."""
    out = tmp_path / "out"
    params = tiny_train_params(tiny_demo, out, epochs=1, max_steps_per_epoch=1)
    params["model"]["use_cpi"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    marker = tmp_path / "code_ran"
    last = out / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"format": 2, "epoch": 0, "model": _RunsCodeOnLoad(marker)}, last)

    code = train_cli.main(["--params", str(tmp_path / "params.yaml"),
                           "--label-embeddings", str(tiny_demo_label_embeddings)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and not marker.exists() and last.exists()
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("mccl train: ")]
    assert f"refusing to load checkpoint {last}" in line
    assert f"move it out of {last.parent}" in line and "train.resume: false" in line

    error = training_failure(1, err.splitlines(), last)
    message = str(error)
    assert message.startswith("training stopped (exit code 1): refusing to load checkpoint")
    assert "re-running the step resumes" not in message and "Last output" not in message
    assert message.count("refusing to load") == 1
    # A crash without such a line still gets the output tail and the resume hint.
    crash = str(training_failure(-9, ["epoch 1/3 ...", "Killed"], last))
    assert "re-running the step resumes from" in crash and "Killed" in crash


def test_a_second_stale_set_aside_keeps_the_first(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    for run, epoch in (("a", 4), ("b", 7)):
        save_checkpoint(ckpts / "last.pt", _payload(epoch - 1, 8))
        save_checkpoint(ckpts / "last.pt", _payload(epoch, 8))
        with caplog.at_level(logging.WARNING):
            assert prepare_resume(tmp_path, {"run": run}) is False  # another run's fingerprint each time
    # Run a's files were set aside when run "a" started (no record yet), then again for "b".
    stale = sorted(p.name for p in ckpts.glob("*.stale.pt"))
    assert stale == ["last.2.stale.pt", "last.stale.pt", "prev.2.stale.pt", "prev.stale.pt"]
    assert load_checkpoint(ckpts / "last.stale.pt")["epoch"] == 4
    assert load_checkpoint(ckpts / "last.2.stale.pt")["epoch"] == 7
    assert f"moved checkpoint {ckpts / 'last.pt'} to {ckpts / 'last.2.stale.pt'} (the earlier last.stale.pt kept)" in (
        caplog.text
    )
    assert not (ckpts / "last.pt").exists()
