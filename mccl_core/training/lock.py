"""One trainer per output folder: an ``flock`` on ``<out>/train.lock`` that every trainer takes.

Why here, in the training package: every way to train goes through it - ``mccl train``, ``torchrun
-m mccl_core.training.cli``, the train step (which starts that same command) and the Kubernetes pod
entry point (which runs the train step). Two trainers on one folder both resume the same
``last.pt`` and overwrite each other's epochs, and the bundle is whichever finished last.

* The lock is ``fcntl.flock`` on ``<out>/train.lock``, a file that holds the holder's PID. A
  second trainer is refused with :class:`TrainerBusyError` naming that PID.
* The kernel drops an ``flock`` when the last descriptor of it closes, so any exit - even
  ``kill -9`` - releases it: a stale lock file (a PID, no lock) never blocks anyone.
* A process that starts the trainer (the train step) takes the lock first and hands the locked
  descriptor down (``pass_fds`` plus ``$MCCL_TRAINER_LOCK_FD``): the folder then stays locked
  while any process of that training lives, and the child does not lock against its own parent.
* Under DDP only global rank 0 (the writer of checkpoints and bundle) locks; its peers die with it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
#: The descriptor number of a lock inherited from the process that started this trainer.
LOCK_FD_ENV = "MCCL_TRAINER_LOCK_FD"
#: ``<pid>:<inode>`` of the launcher's lock, for trainers whose descriptor was closed on the way
#: down (``torchrun`` starts its workers with ``close_fds``).
LOCK_HOLDER_ENV = "MCCL_TRAINER_LOCK_HOLDER"

#: Lock files this process holds already (resolved paths): re-entering is a no-op, not a conflict.
_HELD: set[Path] = set()


class TrainerBusyError(RuntimeError):
    """Another live trainer holds the output folder."""


class TrainerLock:
    """Exclusive lock of a training output folder (``<out>/train.lock`` with the holder's PID).

    :attr:`fd` is what a launcher hands to the training command (``pass_fds`` and
    :data:`LOCK_FD_ENV`), so the lock outlives the launcher exactly as long as the training does.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> TrainerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise TrainerBusyError(
                    f"another trainer (PID {holder}) is writing {self.path.parent}: wait for it or stop it "
                    f"(kill {holder}) before training into this folder again"
                ) from None
            # The holder before us may have unlinked the file after we opened it: lock the live file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD.add(self.path.resolve())
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.discard(self.path.resolve())
        try:
            self.path.unlink(missing_ok=True)  # still ours: nobody else can hold it now
        finally:
            os.close(self.fd)  # drops our reference; children that inherited it keep the lock
            self.fd = None

    def __enter__(self) -> TrainerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _ancestor_pids() -> set[int]:
    """PIDs of this process's ancestors (Linux ``/proc``; empty where it is not available)."""
    pids: set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def handover_env(lock_fd: int) -> dict[str, str]:
    """What a launcher holding the lock on ``lock_fd`` puts in its trainer's environment (with
    ``pass_fds=(lock_fd,)``)."""
    return {LOCK_FD_ENV: str(lock_fd), LOCK_HOLDER_ENV: f"{os.getpid()}:{os.fstat(lock_fd).st_ino}"}


def inherited_lock(out_dir: Path) -> bool:
    """Whether the launcher that started this trainer holds ``<out_dir>/train.lock`` for us:
    ``$MCCL_TRAINER_LOCK_FD`` is an open descriptor of that file, or - where a process in between
    closed it (``torchrun`` starts its workers with ``close_fds``, and the number may be reused) -
    ``$MCCL_TRAINER_LOCK_HOLDER`` names the live lock file's inode and an ancestor of this process.
    A descriptor number alone that points elsewhere is refused."""
    path = Path(out_dir) / LOCK_FILE
    raw = os.environ.get(LOCK_FD_ENV, "")
    if raw.isdigit():
        try:
            if os.fstat(int(raw)).st_ino == os.stat(path).st_ino:
                return True
        except OSError:
            pass
    pid, _, inode = os.environ.get(LOCK_HOLDER_ENV, "").partition(":")
    if not (pid.isdigit() and inode.isdigit()):
        return False
    try:
        same_file = os.stat(path).st_ino == int(inode)
    except OSError:
        return False
    return same_file and int(pid) in _ancestor_pids()


@contextmanager
def trainer_lock(out_dir: Path, is_main: bool = True) -> Iterator[TrainerLock | None]:
    """Hold the output folder's lock for the block (see the module docstring).

    Nothing to take when this process is not global rank 0, already holds the lock, or inherited
    it from its launcher. Raises :class:`TrainerBusyError` when another trainer holds it.
    """
    path = (Path(out_dir) / LOCK_FILE).resolve()
    if not is_main or path in _HELD or inherited_lock(out_dir):
        yield None
        return
    lock = TrainerLock(Path(out_dir)).acquire()
    try:
        yield lock
    finally:
        lock.release()


def is_global_rank_zero() -> bool:
    """Rank 0 of a ``torchrun`` job (``$RANK``), or a plain process (no ``$RANK``)."""
    return os.environ.get("RANK", "0") in ("", "0")
