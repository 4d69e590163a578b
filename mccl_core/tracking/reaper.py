"""No MLflow run outlives the process that owns it.

Why: a step killed with ``kill -9`` (or a ``dvc repro`` killed mid-stage) cannot end its runs, and
a re-run that DVC satisfies from its cache runs none of our code - the runs stayed RUNNING for
good. Two guards:

* **A reaper per step** (:class:`RunReaper`): a tiny watcher process, started with the step's runs,
  in its own session (a signal for the step's process group does not reach it). It waits on a pipe
  from the step: the step writes ``done`` once it has ended its runs; end-of-file without ``done``
  means the step died, and the watcher marks the runs that are still RUNNING as KILLED. Started
  by file path, it imports nothing of this project and MLflow only when it has to close runs.
* **A sweep** (:func:`close_dead_runs`) at the start of every ``mccl step`` and of the commands
  that read the store: every RUNNING run whose ``mccl.owner`` tag names a process of this machine
  that no longer exists (the reaper itself was killed, the machine rebooted) is marked KILLED.
  Runs of other machines are left alone: their owners cannot be checked from here.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ``<host>:<pid>:<start time>`` of the process whose run it is (start time: a reused PID differs).
OWNER_TAG = "mccl.owner"
DONE = b"done\n"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]  # field 22 of stat: start time in clock ticks


def process_identity(pid: int | None = None) -> str:
    """The owner tag value of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process an owner tag names still runs; ``None`` when this machine cannot tell
    (another host, or no ``/proc``)."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not Path("/proc/self/stat").exists():
        return None
    host, pid, started = parts
    if host != socket.gethostname():
        return None
    return _start_time(int(pid)) == started


class RunReaper:
    """The watcher of one step's runs (see the module docstring)."""

    def __init__(self, tracking_uri: str, run_ids: list[str]) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        ids = [r for r in run_ids if r]
        if not ids:
            return
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), tracking_uri, *ids],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        except OSError as error:  # housekeeping never fails a step; the sweep still covers it
            log.debug("cannot start the run reaper: %s", error)

    def done(self) -> None:
        """The runs are ended: the watcher exits without touching them."""
        proc, self.proc = self.proc, None
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(DONE)
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass


def close_dead_runs(client: Any, experiment_ids: list[str]) -> list[str]:
    """Mark RUNNING runs of ``experiment_ids`` whose owner process is gone KILLED; their ids."""
    closed = []
    runs = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        owner = run.data.tags.get(OWNER_TAG)
        if owner and owner_alive(owner) is False:
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    if closed:
        log.info("marked %d run(s) KILLED whose process is gone: %s", len(closed), ", ".join(closed))
    return closed


def sweep(tracking_uri: str) -> list[str]:
    """:func:`close_dead_runs` over every experiment of the store; never raises (housekeeping)
    and fails fast on an unreachable server (one try, 5 s) instead of MLflow's minutes of retries."""
    try:
        from mlflow import MlflowClient

        from mccl_core.tracking.tracker import short_http_retries

        with short_http_retries():
            client = MlflowClient(tracking_uri)
            experiments = [e.experiment_id for e in client.search_experiments()]
            return close_dead_runs(client, experiments) if experiments else []
    except Exception as error:  # noqa: BLE001 - an unreachable store must not fail a command
        log.debug("run sweep of %s skipped: %s", tracking_uri, error)
        return []


def _watch(argv: list[str]) -> int:
    tracking_uri, run_ids = argv[0], argv[1:]
    if sys.stdin.buffer.read() == DONE:
        return 0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for run_id in run_ids:
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="KILLED")
        except Exception:  # noqa: BLE001, S112 - a deleted run or an unreachable server: nothing to do
            continue
    return 0


if __name__ == "__main__":
    raise SystemExit(_watch(sys.argv[1:]))
