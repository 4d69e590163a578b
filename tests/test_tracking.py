"""ResilientTracker against a real ``mlflow server`` (started here) and the embedded SQLite store."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from services import MlflowServer, free_ports

from mccl_core.tracking import (
    DATA_HASH_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    PARENT_RUN_ENV,
    PARENT_RUN_TAG,
    ResilientTracker,
    TrackerConfig,
    embedded_tracking_uri,
    flatten_params,
    git_commit,
    is_unreachable_error,
    resolve_tracking_uri,
)

# servers are real processes: never let a hang block the suite
pytestmark = pytest.mark.timeout(300)

HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@pytest.fixture()
def server(mlflow_server: MlflowServer) -> MlflowServer:
    """The session's server (each test here has its own experiment name)."""
    return mlflow_server


@pytest.fixture()
def crashable_server(tmp_path: Path):
    """A server of this test's own: the test kills it and starts it again."""
    server = MlflowServer(tmp_path / "mlflow-server")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV, *HTTP_ENV):
        monkeypatch.delenv(name, raising=False)


def test_flatten_params_dotted_keys() -> None:
    nested = {"train": {"lr": 1e-4, "sched": {"name": "onecycle", "pct": 0.2}}, "seed": 3,
              "data": {"sizes": [224, 448], "root": Path("/d")}, "empty": {}}  # fmt: skip
    assert flatten_params(nested) == {
        "train.lr": "0.0001",
        "train.sched.name": "onecycle",
        "train.sched.pct": "0.2",
        "seed": "3",
        "data.sizes": "[224, 448]",
        "data.root": "/d",
        "empty": "{}",
    }
    with pytest.raises(TypeError, match="mapping or dataclass"):
        flatten_params([1, 2])


def test_git_commit_outside_a_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri(tmp_path, explicit="sqlite:///x.db") == "sqlite:///x.db"


def test_embedded_sqlite_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)  # default project folder = cwd
    (tmp_path / "metrics.json").write_text('{"f1": 0.5}')
    with ResilientTracker(TrackerConfig(experiment_name="embedded")) as tracker:
        assert tracker.tracking_uri == embedded_tracking_uri(project) and not tracker.is_server
        parent = tracker.start_parent_run("pipeline")
        with tracker.step_run("evaluate") as step:
            tracker.log_params({"eval": {"threshold": 0.5}})
            tracker.log_metrics({"f1": 0.5}, step=1)
            tracker.log_artifact(tmp_path / "metrics.json", artifact_path="reports")
    assert not tracker.not_logged and tracker.not_logged.total == 0
    assert not tracker.journal_path.exists()

    assert (project / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    run = client.get_run(step.run_id)
    assert run.data.params == {"eval.threshold": "0.5"} and run.data.metrics == {"f1": 0.5}
    assert run.data.tags[PARENT_RUN_TAG] == parent.run_id and run.info.status == "FINISHED"
    assert client.get_run(parent.run_id).info.status == "FINISHED"
    stored = project / "mlartifacts" / step.run_id / "artifacts" / "reports" / "metrics.json"
    assert json.loads(stored.read_text()) == {"f1": 0.5}
    assert client.get_experiment_by_name("embedded").artifact_location == (project / "mlartifacts").as_uri()


@pytest.mark.slow  # a real mlflow server
def test_server_params_metrics_artifacts_tags_round_trip(server: MlflowServer, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("w")
    (tmp_path / "model" / "sub").mkdir()
    (tmp_path / "model" / "sub" / "cfg.yaml").write_text("a: 1\n")
    (tmp_path / "report.md").write_text("# report\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "report.md"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    config = TrackerConfig(project_dir=tmp_path, experiment_name="roundtrip", tracking_uri=server.url)
    with ResilientTracker(config) as tracker:
        parent = tracker.start_parent_run("pipeline", tags={"trigger": "test"})
        tags = tracker.set_provenance_tags(data_hash="md5:abc123", run=parent)
        with tracker.step_run("train") as step:
            tracker.log_params({"train": {"lr": 0.001, "epochs": 2}, "model": {"backbone": "resnet18"}})
            for i, loss in enumerate([1.0, 0.5, 0.25]):
                tracker.log_metrics({"loss": loss, "acc": i / 2}, step=i)
            tracker.log_artifact(tmp_path / "report.md")
            tracker.log_artifacts(tmp_path / "model", artifact_path="model")
            tracker.set_tags({"stage": "dev"})
            # a server-side rejection is a bug, not an outage: it raises
            with pytest.raises(MlflowException):
                tracker.log_params({"train": {"lr": 0.5}})
        assert all(name not in os.environ for name in HTTP_ENV)  # restored after each call
    assert not tracker.not_logged

    client = MlflowClient(server.url)
    run = client.get_run(step.run_id)
    assert run.data.params == {"train.lr": "0.001", "train.epochs": "2", "model.backbone": "resnet18"}
    history = client.get_metric_history(step.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert run.data.tags["stage"] == "dev" and run.data.tags["mccl.step"] == "train"
    assert run.data.tags[PARENT_RUN_TAG] == parent.run_id and run.info.run_name == "train"
    assert run.info.status == "FINISHED"
    assert sorted(a.path for a in client.list_artifacts(step.run_id)) == ["model", "report.md"]
    assert sorted(a.path for a in client.list_artifacts(step.run_id, "model")) == ["model/sub", "model/weights.txt"]
    downloaded = client.download_artifacts(step.run_id, "model/sub/cfg.yaml", str(tmp_path / "dl"))
    assert Path(downloaded).read_text() == "a: 1\n"
    parent_run = client.get_run(parent.run_id)
    assert parent_run.data.tags["trigger"] == "test" and parent_run.data.tags[DATA_HASH_TAG] == "md5:abc123"
    assert tags == {GIT_COMMIT_TAG: head, GIT_DIRTY_TAG: "false", DATA_HASH_TAG: "md5:abc123"}
    assert parent_run.data.tags[GIT_COMMIT_TAG] == head and parent_run.data.tags[GIT_DIRTY_TAG] == "false"


@pytest.mark.slow  # a real mlflow server
def test_parent_run_passed_between_steps(server: MlflowServer, tmp_path: Path, monkeypatch) -> None:
    config = TrackerConfig(project_dir=tmp_path, experiment_name="steps", tracking_uri=server.url)
    first = ResilientTracker(config)
    parent = first.start_parent_run("pipeline")
    ref = first.write_run_ref(tmp_path / "parent_run.json")
    with first.step_run("validate"):
        first.log_metrics({"n_records": 10})

    second = ResilientTracker(config)  # another process in real life: id from the file
    resumed = second.resume_parent_run(ref_file=ref)
    assert resumed.run_id == parent.run_id and second.experiment_id == first.experiment_id
    with second.step_run("train") as train:
        second.log_metrics({"loss": 0.1})
    second.close()

    monkeypatch.setenv(PARENT_RUN_ENV, parent.run_id)  # ... or from the environment
    third = ResilientTracker(config)
    third.resume_parent_run()
    with third.step_run("evaluate") as evaluate:
        third.log_metrics({"f1": 0.4})
    third.close()
    first.close()

    client = MlflowClient(server.url)
    children = client.search_runs([first.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{parent.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["evaluate", "train", "validate"]
    assert client.get_run(train.run_id).data.metrics == {"loss": 0.1}
    assert client.get_run(evaluate.run_id).data.metrics == {"f1": 0.4}
    assert client.get_run(parent.run_id).info.status == "FINISHED"  # only its starter ends it

    monkeypatch.delenv(PARENT_RUN_ENV)
    with pytest.raises(ValueError, match=PARENT_RUN_ENV):
        ResilientTracker(config).resume_parent_run()


@pytest.mark.slow  # a real mlflow server
def test_system_metrics_toggle(server: MlflowServer, tmp_path: Path) -> None:
    config = TrackerConfig(project_dir=tmp_path, experiment_name="sysmetrics", tracking_uri=server.url,
                           system_metrics=True, system_metrics_interval_s=0.5)  # fmt: skip
    with ResilientTracker(config) as tracker:
        tracker.start_parent_run("pipeline")
        with tracker.step_run("train") as step:
            time.sleep(2.0)  # let mlflow's monitor sample a few times
    keys = MlflowClient(server.url).get_run(step.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys


@pytest.mark.slow  # a real mlflow server
def test_server_killed_mid_run_keeps_going_and_journals(
    crashable_server: MlflowServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = crashable_server
    (tmp_path / "late.txt").write_text("late artifact")
    journal = tmp_path / "journal.jsonl"
    config = TrackerConfig(project_dir=tmp_path, experiment_name="crash", tracking_uri=server.url,
                           journal_path=journal, retry_after_s=1.0, http_timeout_s=2)  # fmt: skip
    tracker = ResilientTracker(config)
    parent = tracker.start_parent_run("pipeline")
    with caplog.at_level(logging.WARNING, logger="mccl_core.tracking"):
        with tracker.step_run("train") as step:
            tracker.log_params({"train": {"lr": 0.1}})
            tracker.log_metrics({"loss": 1.0}, step=0)

            server.kill()  # crash: SIGKILL, no graceful shutdown

            tracker.log_metrics({"loss": 0.5}, step=1)  # fails -> journal, warn once
            tracker.log_params({"eval": {"k": 3}})  # server skipped for retry_after_s -> journal
            tracker.log_artifact(tmp_path / "late.txt")
            tracker.set_tags({"phase": "late"})
            time.sleep(1.1)
            tracker.log_metrics({"loss": 0.4, "acc": 0.9}, step=2)  # retried, fails again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "is unreachable (" in r.getMessage()]
    assert len(warnings) == 1 and str(journal) in warnings[0].getMessage()

    summary = tracker.not_logged
    assert summary.counts == {"metrics": 3, "params": 1, "artifacts": 1, "tags": 1, "run_status": 1}
    assert summary.journal_path == journal and "metrics" in summary.describe()
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["metrics", "params", "artifacts", "tags", "metrics", "run_status"]
    assert all(e["run_id"] == step.run_id for e in entries)
    assert entries[0]["payload"] == {"metrics": {"loss": 0.5}, "step": 1}
    assert entries[1]["payload"] == {"params": {"eval.k": "3"}}
    assert entries[2]["payload"]["path"] == str((tmp_path / "late.txt").resolve())
    assert entries[4]["payload"] == {"metrics": {"loss": 0.4, "acc": 0.9}, "step": 2}
    assert entries[5]["payload"] == {"status": "FINISHED"}
    assert all(name not in os.environ for name in HTTP_ENV)

    # The server comes back (same port and database): after retry_after_s logging resumes.
    server.start()
    time.sleep(1.1)
    tracker.log_metrics({"recovered": 1.0}, run=parent)
    tracker.close()
    assert tracker.not_logged.counts["metrics"] == 3  # nothing new was journaled

    client = MlflowClient(server.url)
    step_run = client.get_run(step.run_id)
    assert step_run.data.params == {"train.lr": "0.1"}
    assert [(m.step, m.value) for m in client.get_metric_history(step.run_id, "loss")] == [(0, 1.0)]
    assert step_run.info.status == "RUNNING"  # its end was journaled, not logged
    parent_run = client.get_run(parent.run_id)
    assert parent_run.data.metrics == {"recovered": 1.0} and parent_run.info.status == "FINISHED"


def test_unreachable_at_start_refused_and_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refused_port = free_ports(1)[0]  # nothing listens there
    with socket.socket() as silent:  # accepts TCP connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        for name, uri in [("refused", f"http://127.0.0.1:{refused_port}"),
                          ("timeout", f"http://127.0.0.1:{silent.getsockname()[1]}")]:  # fmt: skip
            caplog.clear()
            config = TrackerConfig(project_dir=tmp_path / name, tracking_uri=uri, http_timeout_s=1, http_max_retries=0)
            with caplog.at_level(logging.WARNING, logger="mccl_core.tracking"):
                with ResilientTracker(config) as tracker:
                    parent = tracker.start_parent_run("pipeline")
                    with tracker.step_run("train") as step:
                        tracker.log_params({"a": {"b": 1}})
                        tracker.log_metrics({"m": 1.0}, step=3)
                        (tmp_path / "f.txt").write_text("x")
                        tracker.log_artifact(tmp_path / "f.txt")
            assert parent.run_id is None and step.run_id is None
            assert tracker.not_logged.counts == {"runs": 2, "params": 1, "metrics": 1, "artifacts": 1,
                                                 "run_status": 2}, name  # fmt: skip
            assert sum("is unreachable (" in r.getMessage() for r in caplog.records) == 1, name
            journal = tmp_path / name / "outputs" / "mlflow_not_logged.jsonl"
            kinds = [json.loads(line)["kind"] for line in journal.read_text().splitlines()]
            assert kinds == ["runs", "runs", "params", "metrics", "artifacts", "run_status", "run_status"], name
            assert "timed out" in tracker.not_logged.first_error or name == "refused"


def test_is_unreachable_error_classification() -> None:
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except requests.exceptions.ConnectionError as inner:
            raise MlflowException(f"API request failed with exception {inner}")  # noqa: B904 (no "from", like mlflow)
    except MlflowException as wrapped:
        assert is_unreachable_error(wrapped)
    assert not is_unreachable_error(MlflowException("INVALID_PARAMETER_VALUE: param changed"))
    assert not is_unreachable_error(FileNotFoundError("x"))
