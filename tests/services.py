"""Start and stop real services (MLflow tracking server, SeaweedFS S3) for tests.

Every service binds to 127.0.0.1 on free ports, keeps its data and logs in a folder the test
owns, runs in its own process group (so ``stop``/``kill`` reach all of its children: the MLflow
server forks uvicorn workers) and is stopped by the fixture that started it. ``kill`` simulates a
crash (SIGKILL, no graceful shutdown).

Import from a test module as ``from services import MlflowServer, SeaweedS3`` (pytest puts the
``tests`` folder on ``sys.path`` because it has no ``__init__.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now (all held open together so none repeats)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def venv_executable(name: str) -> Path:
    """An executable installed next to the running interpreter (the project's venv)."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{name!r} not found next to {sys.executable}; is the test extra installed?")


class ServiceProcess:
    """A subprocess in its own session whose stdout+stderr go to ``log_path``."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = [str(c) for c in command]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited early while waiting for {what}:\n{self.log_text()[-3000:]}")
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name}: {what} not ready after {timeout_s:.0f}s:\n{self.log_text()[-3000:]}")

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, no clean shutdown)."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL whatever is left after ``timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # children that outlived their parent
        if self.process.poll() is None:
            self.process.wait(timeout=10)


class MlflowServer:
    """``mlflow server`` with a SQLite backend in ``workdir``.

    ``artifacts_destination`` (e.g. ``s3://bucket/mlflow``) makes the server proxy artifact
    uploads to that store (S3 credentials then only need to be in ``env`` of the server).
    Job execution (huey workers) is switched off: tests do not need it and it forks 7 processes.
    """

    def __init__(
        self,
        workdir: Path,
        artifacts_destination: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        db_path: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.db_path = Path(db_path) if db_path else self.workdir / "mlflow.db"
        self.port = port or free_ports(1)[0]
        self.artifacts_destination = artifacts_destination or (self.workdir / "mlartifacts").as_uri()
        server_env = dict(os.environ if env is None else env)
        server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        server_env.pop("MLFLOW_TRACKING_URI", None)
        command = [
            str(venv_executable("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{self.db_path}",
            "--artifacts-destination", self.artifacts_destination,
            "--host", HOST, "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        log_path = self.workdir / "mlflow-server.log"
        self.service = ServiceProcess("mlflow server", command, log_path, server_env, self.workdir)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.service.start()
        self.service.wait_until(
            lambda: requests.get(f"{self.url}/health", timeout=2).status_code == 200, timeout_s, "/health"
        )
        return self

    def stop(self) -> None:
        self.service.stop()

    def kill(self) -> None:
        self.service.kill()

    def log_text(self) -> str:
        return self.service.log_text()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class SeaweedS3:
    """SeaweedFS ``weed mini`` (master + volume + filer + S3 gateway) with enforced credentials.

    The S3 identity (access key / secret, all actions) is written to ``<workdir>/s3.json`` and
    passed with ``-s3.config``; requests signed with any other key or secret are rejected.
    Buckets in ``buckets`` are created with boto3 once the gateway accepts signed requests.
    """

    #: component flags that take a port; all are set so parallel instances never collide
    PORT_FLAGS = (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
    )  # fmt: skip

    def __init__(self, workdir: Path, access_key: str, secret_key: str, buckets: Sequence[str] = ("mccl",)) -> None:
        self.workdir = Path(workdir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets = list(buckets)
        self.ports = dict(zip(self.PORT_FLAGS, free_ports(len(self.PORT_FLAGS))))
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "s3.json"
        self.service: ServiceProcess | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    def command(self) -> list[str]:
        return [
            str(venv_executable("weed")), "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            f"-s3.config={self.config_path}",
            *self._socket_flags(),
        ]  # fmt: skip

    def _socket_flags(self) -> list[str]:
        """Keep weed's unix sockets in the work dir when the path fits a sun_path (108 bytes);
        otherwise weed puts them in the temp dir, named after the ports, and ``stop`` removes them."""
        flags = []
        for component in ("filer", "s3"):
            path = self.workdir / f"{component}.sock"
            if len(str(path).encode()) < 100:
                flags.append(f"-{component}.localSocket={path}")
        return flags

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def env(self) -> dict[str, str]:
        """Client-side environment: credentials + endpoint for boto3, DVC (s3fs) and MLflow."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def start(self, timeout_s: float = 60.0) -> SeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "mccl-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identity), encoding="utf-8")
        self.config_path.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.service = ServiceProcess("weed mini", self.command(), self.workdir / "weed.log", env, self.workdir)
        self.service.start()
        s3 = self.client()
        self.service.wait_until(lambda: s3.list_buckets() is not None, timeout_s, "signed S3 requests")
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in self.buckets:
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            # weed leaves unix sockets named after its ports in the temp dir
            for port in self.ports.values():
                for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                    leftover.unlink(missing_ok=True)

    def log_text(self) -> str:
        return self.service.log_text() if self.service else ""

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
