"""One trainer per output folder, whichever way it is started (issue 21, item 1).

``mccl train`` used to ignore the lock that only ``mccl step train`` took: a direct ``mccl train``
into the step's folder resumed its checkpoint and both wrote ``last.pt`` in turn. The lock now
lives in the training entry point itself (:mod:`mccl_core.training.lock`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_train_params

from mccl_core.training.lock import LOCK_FD_ENV, LOCK_FILE, TrainerBusyError, TrainerLock, trainer_lock

MCCL = [sys.executable, "-m", "mccl_core.cli"]


def _params_file(tmp_path: Path, root: Path, out: Path, **train: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_train_params(root, out, **train)))
    return path


def _wait_for_pid(lock_file: Path, pid: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lock_file.is_file() and lock_file.read_text().strip() == str(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"{lock_file} never named PID {pid}")


def test_mccl_train_is_refused_while_another_trainer_holds_the_folder(tmp_path):
    """What the step holds, a direct ``mccl train`` respects: refused before it reads any data,
    naming the holder's PID, and it writes nothing into the folder."""
    out = tmp_path / "train"
    params = _params_file(tmp_path, tmp_path / "no-data-needed", out)
    with TrainerLock(out):
        done = subprocess.run([*MCCL, "train", "--params", str(params)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"another trainer (PID {os.getpid()}) is writing {out}" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # no checkpoints, and our lock file is gone


def test_the_lock_is_released_by_kill_9_and_the_stale_file_does_not_block(tmp_path):
    out = tmp_path / "train"
    code = (f"from mccl_core.training.lock import TrainerLock; import time; "
            f"TrainerLock({str(out)!r}).acquire(); time.sleep(600)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for_pid(out / LOCK_FILE, holder.pid, timeout_s=60)
        with pytest.raises(TrainerBusyError, match=f"PID {holder.pid}"):
            TrainerLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (out / LOCK_FILE).read_text().strip() == str(holder.pid)  # the dead holder's file is still there
    with TrainerLock(out) as lock:
        assert lock.fd is not None and (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (out / LOCK_FILE).exists()


def test_a_trainer_started_by_the_lock_holder_inherits_the_lock(tmp_path):
    """The train step's child runs under the step's lock (``$MCCL_TRAINER_LOCK_FD``); a process
    that merely sets the variable to some other descriptor does not get past the lock."""
    out = tmp_path / "train"
    code = (f"from mccl_core.training.lock import trainer_lock\n"
            f"with trainer_lock({str(out)!r}): print('trained')")  # fmt: skip
    with TrainerLock(out) as lock:
        assert lock.fd is not None
        inherited = subprocess.run([sys.executable, "-c", code], env={**os.environ, LOCK_FD_ENV: str(lock.fd)},
                                   pass_fds=(lock.fd,), capture_output=True, text=True, timeout=60)  # fmt: skip
        forged = subprocess.run([sys.executable, "-c", code], env={**os.environ, LOCK_FD_ENV: "0"},
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        with trainer_lock(out):  # the holder itself re-enters without deadlocking
            pass
    assert inherited.returncode == 0 and inherited.stdout.strip() == "trained", inherited.stderr
    assert forged.returncode != 0 and f"PID {os.getpid()}" in forged.stderr


@pytest.mark.slow
def test_two_real_trainers_on_one_folder(tiny_demo, tiny_demo_label_embeddings, tmp_path):
    """Two ``mccl train`` processes on one folder: the second is refused with the first's PID,
    the first finishes alone (its history is its own 2 epochs, not 2 + resumed ones)."""
    out = tmp_path / "train"
    params = _params_file(tmp_path, tiny_demo, out, epochs=2, max_steps_per_epoch=1)
    argv = [*MCCL, "train", "--params", str(params), "--label-embeddings", str(tiny_demo_label_embeddings)]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_pid(out / LOCK_FILE, first.pid)
        # Paused while the second starts, so two tiny epochs cannot end before it arrives (a
        # stopped process keeps its flock); it then finishes alone.
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        output, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 1 and f"another trainer (PID {first.pid})" in second.stderr, second.stderr
    assert first.returncode == 0, output
    import json

    history = json.loads((out / "history.json").read_text())
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert "resumed from" not in output
    assert not (out / LOCK_FILE).exists()
