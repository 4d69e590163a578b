"""No MLflow run stays RUNNING after its process died (issue 21, item 2).

Kill a step mid-run, then "re-run" in a way that executes none of our code - what ``dvc repro``
does when it finds every stage cached: the runs must already be KILLED. The real sqlite store,
real processes, a real ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient

from mccl_core.tracking.reaper import OWNER_TAG, owner_alive, process_identity


def _statuses(uri: str) -> dict[str, str]:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_name: r.info.status for r in client.search_runs(experiments)}


def test_a_step_killed_with_sigkill_leaves_no_run_running_without_any_rerun(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed_step = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from mccl_core.tracking.steps import TrackingOptions, tracked_step
        options = TrackingOptions(project_dir=Path({str(tmp_path)!r}), tracking_uri={uri!r},
                                  run_ref=Path({str(tmp_path / "mlflow_run.json")!r}))
        with tracked_step("train", options, {{"train": {{"lr": 0.1}}}}) as run:
            run.log_metrics({{"train_loss": 1.0}}, step=0)
            os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: what kill -9 does
    """)
    done = subprocess.run([sys.executable, "-c", killed_step], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "RUNNING" in _statuses(uri).values():
        time.sleep(0.5)
    assert _statuses(uri) == {"pipeline": "KILLED", "train": "KILLED"}


def test_mccl_step_first_closes_runs_of_dead_processes(tmp_path):
    """The second guard, for when the reaper was killed too: any ``mccl step`` (here one that then
    fails on its input) first marks the RUNNING runs of dead local processes KILLED; a live
    process's run and a run of another machine are left alone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("mccl")
    gone = subprocess.Popen(["sleep", "60"])
    dead_owner = process_identity(gone.pid)
    gone.kill()
    gone.wait()
    assert owner_alive(dead_owner) is False and owner_alive(process_identity()) is True
    owners = {"dead": dead_owner, "alive": process_identity(), "elsewhere": f"other-host:{os.getpid()}:1"}
    for name, owner in owners.items():
        client.create_run(experiment, run_name=name, tags={OWNER_TAG: owner})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": "demo", "root": str(tmp_path / "nothing")}}))
    done = subprocess.run(
        [sys.executable, "-m", "mccl_core.cli", "step", "validate", "--params", str(params), "--out",
         str(tmp_path / "validate"), "--project-dir", str(tmp_path), "--log-file", str(tmp_path / "v.log")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert done.returncode == 1 and "annotation file does not exist" in done.stderr, done.stderr
    statuses = _statuses(uri)
    assert (statuses["dead"], statuses["alive"], statuses["elsewhere"]) == ("KILLED", "RUNNING", "RUNNING")
    assert statuses["validate"] == "FAILED"  # the step's own run ended too
    assert Path(tmp_path / "v.log").is_file()
