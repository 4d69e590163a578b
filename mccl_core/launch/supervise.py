"""Training processes that die with the step that started them, and one trainer per output folder.

Why: a killed ``dvc repro`` (or a killed train step) used to leave ``torchrun`` and its workers
running; reparented to init, they kept writing ``outputs/train`` while the re-run trained into the
same folder - two writers of one checkpoint. Three guards:

* the training command runs in its **own process group** (a signal for the step's terminal group
  does not hit it half-way, and the step can stop the whole group on an error) and, on Linux,
  with ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: when the step dies, even by SIGKILL, the kernel sends
  SIGTERM to torchrun, whose agent then stops its workers;
* a step started by DVC (``$DVC_STAGE`` set) stops itself when DVC is gone (:func:`exit_with_dvc`);
* :class:`~mccl_core.training.lock.TrainerLock` (re-exported here): an ``flock`` on
  ``<out>/train.lock`` holding the PID, which every trainer takes (see that module); the training
  command inherits the step's locked descriptor, so the folder stays locked while any of its
  processes lives.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from mccl_core.training.lock import LOCK_FD_ENV, LOCK_FILE, TrainerBusyError, TrainerLock

log = logging.getLogger(__name__)

__all__ = [
    "LOCK_FD_ENV",
    "LOCK_FILE",
    "TrainerBusyError",
    "TrainerLock",
    "exit_with_dvc",
    "run_streaming",
    "stop_group",
]

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; else False)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _child_setup(parent_pid: int) -> None:
    """``preexec_fn`` of the training command: die with the step (PDEATHSIG).

    Runs in the forked child before exec. If the step died between fork and prctl, the signal
    would never come: the child then exits at once instead of running orphaned.
    """
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)


def exit_with_dvc(poll_s: float = 1.0) -> bool:
    """When DVC started this step (``$DVC_STAGE``), SIGTERM ourselves once DVC is gone.

    A watchdog thread notices the reparenting (``getppid`` changes) rather than PDEATHSIG on
    ourselves: PDEATHSIG fires when the parent *thread* that forked us exits, which would be a
    spurious kill if DVC ever ran stages from a worker thread. Our own SIGTERM then takes the
    training group along (its PDEATHSIG). Returns whether the watchdog runs.
    """
    if "DVC_STAGE" not in os.environ:
        return False
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("the parent process (DVC, PID %d) is gone: stopping the train step", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-dvc", daemon=True).start()
    return True


def stop_group(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_streaming(
    command: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = (), echo: IO[str] | None = None
) -> tuple[int, list[str]]:
    """Run ``command`` supervised (own process group, dies with us); echo its output live.

    Returns (exit code, last 400 lines). On any exception here (KeyboardInterrupt included) the
    whole group is stopped before the exception propagates.
    """
    echo = echo or sys.stderr
    tail: deque[str] = deque(maxlen=400)
    parent = os.getpid()
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        process_group=0,
        preexec_fn=lambda: _child_setup(parent),
        pass_fds=pass_fds,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo.write(line)
            tail.append(line.rstrip("\n"))
        returncode = proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    return returncode, list(tail)
