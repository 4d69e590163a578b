"""DVC remote and MLflow artifacts on a real S3 server (SeaweedFS ``weed mini``, started here).

Credentials exist only in environment variables of the processes that need them; the tests
check that the secret never lands in logs, MLflow's database, DVC config or committed files.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import requests
from botocore.exceptions import ClientError
from conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from services import MlflowServer, SeaweedS3, venv_executable

from mccl_core.launch.s3 import ensure_bucket, list_keys, s3_client_from_env
from mccl_core.tracking import ResilientTracker, TrackerConfig

# servers are real processes: never let a hang block the suite
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

#: The session's S3 server (conftest.s3_server) and its random credentials; this module writes
#: only to its own bucket.
ACCESS_KEY, SECRET_KEY = S3_ACCESS_KEY, S3_SECRET_KEY
BUCKET = "mccl-artifacts"

ECHO_MODEL_CODE = '''
import mlflow


class EchoModel(mlflow.pyfunc.PythonModel):
    """Returns its input: enough to prove a model survives the S3 round trip."""

    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(EchoModel())
'''


def _clean_env() -> dict[str, str]:
    """This process's environment without any AWS / MLflow settings inherited from outside."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}


@pytest.fixture(scope="module")
def s3(s3_server: SeaweedS3) -> SeaweedS3:
    """The session's server (its teardown checks that the secret is in none of its logs)."""
    assert BUCKET in s3_server.buckets
    return s3_server


def _assert_secret_absent(*texts: str | bytes) -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        assert SECRET_KEY.encode() not in data


def test_credentials_are_enforced(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, secret, code in [(ACCESS_KEY, "wrong-" + SECRET_KEY, "SignatureDoesNotMatch"),
                              ("nobody", SECRET_KEY, "InvalidAccessKeyId")]:  # fmt: skip
        with pytest.raises(ClientError) as caught:
            s3.client(key, secret).list_objects_v2(Bucket=BUCKET)
        assert caught.value.response["Error"]["Code"] == code
    anonymous = requests.get(f"{s3.endpoint_url}/{BUCKET}?list-type=2", timeout=10)
    assert anonymous.status_code == 403

    for name, value in {**s3.env(), "AWS_SESSION_TOKEN": ""}.items():
        monkeypatch.setenv(name, value)
    client = s3_client_from_env()
    assert ensure_bucket(client, "mccl-created") is True and ensure_bucket(client, "mccl-created") is False
    client.put_object(Bucket="mccl-created", Key="a/b.txt", Body=b"hello")
    assert list_keys(client, "mccl-created", "a/") == ["a/b.txt"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        s3_client_from_env().list_objects_v2(Bucket="mccl-created")


def _run(
    command: list[str], cwd: Path, env: dict[str, str], log: list[str], check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    log.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def test_dvc_remote_push_and_pull_on_s3(s3: SeaweedS3, tmp_path: Path) -> None:
    dvc, git = str(venv_executable("dvc")), "git"
    env = _clean_env()
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
        DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"),
        DVC_GLOBAL_CONFIG_DIR=str(tmp_path / "dvc-global"), DVC_SYSTEM_CONFIG_DIR=str(tmp_path / "dvc-system"),
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid",
        GIT_CONFIG_GLOBAL=str(tmp_path / "gitconfig"), GIT_CONFIG_NOSYSTEM="1",
    )  # fmt: skip
    log: list[str] = []
    repo = tmp_path / "repo"
    data = repo / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.bin").write_bytes(os.urandom(4096))
    (data / "images" / "b.bin").write_bytes(os.urandom(100))
    (data / "labels.json").write_text(json.dumps({"a": [1, 2], "b": [0]}))

    _run([git, "init", "-q", "-b", "main"], repo, env, log)
    _run([dvc, "init", "-q"], repo, env, log)
    _run([dvc, "add", "-q", "data"], repo, env, log)
    _run([dvc, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc"], repo, env, log)
    _run([dvc, "remote", "modify", "storage", "endpointurl", s3.endpoint_url], repo, env, log)
    _run([git, "add", "-A"], repo, env, log)
    _run([git, "commit", "-q", "-m", "data on s3"], repo, env, log)
    _run([dvc, "push"], repo, env, log)

    pushed = list_keys(s3.client(), BUCKET, "dvc/")
    assert len(pushed) == 4 and all(key.startswith("dvc/files/md5/") for key in pushed)  # 3 files + .dir

    clone = tmp_path / "clone"
    _run([git, "clone", "-q", str(repo), str(clone)], tmp_path, env, log)
    assert not (clone / "data").exists()
    wrong_env = {**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    refused = _run([dvc, "pull"], clone, wrong_env, log, check=False)
    assert refused.returncode != 0 and not (clone / "data" / "labels.json").exists()
    _run([dvc, "pull"], clone, env, log)
    comparison = filecmp.dircmp(data, clone / "data")
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    for name in ("images/a.bin", "images/b.bin", "labels.json"):
        assert (data / name).read_bytes() == (clone / "data" / name).read_bytes()

    # (c) the secret is in no command output, DVC config or committed file
    config = (repo / ".dvc" / "config").read_text()
    assert "endpointurl" in config and f"s3://{BUCKET}/dvc" in config
    assert not (repo / ".dvc" / "config.local").exists()
    committed = _run([git, "ls-files"], repo, env, log).stdout.split()
    history = _run([git, "log", "-p", "--all", "--format=%H %s"], repo, env, log).stdout
    assert "endpointurl" in history  # the history is really searched
    _assert_secret_absent(config, "\n".join(log), history, *((repo / f).read_bytes() for f in committed))


def test_mlflow_artifacts_and_model_on_s3(
    s3: SeaweedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mlflow

    server_env = _clean_env()
    server_env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_S3_ENDPOINT_URL=s3.endpoint_url,
    )  # fmt: skip
    server = MlflowServer(tmp_path / "mlflow", artifacts_destination=f"s3://{BUCKET}/mlflow", env=server_env)
    server.start()
    try:
        # The client holds no S3 credentials: the server proxies artifact traffic to S3.
        for name in list(os.environ):
            if name.startswith(("AWS_", "MLFLOW_")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        (tmp_path / "report.json").write_text(json.dumps({"f1": 0.42}))
        (tmp_path / "echo_model.py").write_text(ECHO_MODEL_CODE)

        with ResilientTracker(TrackerConfig(project_dir=tmp_path, experiment_name="s3")) as tracker:
            assert tracker.tracking_uri == server.url
            parent = tracker.start_parent_run("pipeline")
            with tracker.step_run("register") as step:
                tracker.log_params({"model": {"name": "echo"}})
                tracker.log_artifact(tmp_path / "report.json", artifact_path="reports")
                with mlflow.start_run(run_id=step.run_id):
                    info = mlflow.pyfunc.log_model(
                        name="echo", python_model=str(tmp_path / "echo_model.py"), pip_requirements=["mlflow"]
                    )
        assert not tracker.not_logged

        model = mlflow.pyfunc.load_model(info.model_uri)
        frame = pd.DataFrame({"x": [1.5, -2.0], "label": ["a", "b"]})
        pd.testing.assert_frame_equal(model.predict(frame), frame)

        client = mlflow.MlflowClient(server.url)
        downloaded = client.download_artifacts(step.run_id, "reports/report.json", str(tmp_path / "dl"))
        assert json.loads(Path(downloaded).read_text()) == {"f1": 0.42}
        experiment_id = client.get_run(step.run_id).info.experiment_id
        assert client.get_run(step.run_id).data.tags["mlflow.parentRunId"] == parent.run_id

        keys = list_keys(s3.client(), BUCKET, "mlflow/")
        assert f"mlflow/{experiment_id}/{step.run_id}/artifacts/reports/report.json" in keys
        model_keys = [k for k in keys if f"/models/{info.model_id}/artifacts/" in k]
        assert {k.rsplit("/", 1)[1] for k in model_keys} >= {"MLmodel", "echo_model.py", "requirements.txt"}
        report_key = f"mlflow/{experiment_id}/{step.run_id}/artifacts/reports/report.json"
        stored = s3.client().get_object(Bucket=BUCKET, Key=report_key)
        assert json.loads(stored["Body"].read()) == {"f1": 0.42}
    finally:
        server.stop()

    # (c) the secret is in no log, captured output or MLflow's database
    captured = capfd.readouterr()
    database = [p.read_bytes() for p in server.db_path.parent.glob(server.db_path.name + "*")]
    _assert_secret_absent(server.log_text(), captured.out, captured.err, caplog.text, *database)
    params = mlflow.MlflowClient(f"sqlite:///{server.db_path}").get_run(step.run_id).data.params
    assert params == {"model.name": "echo"}
