"""Serving latency and throughput of the MCCL pyfunc model behind ``mlflow models serve``.

Measured in one run, on the same real JPEG bytes:

* **bare forward**: the model's forward pass alone for one preprocessed image (in this process);
* **in-process predict**: the pyfunc ``predict`` for one base64 image (decode + transform +
  forward + answer frame), i.e. everything but HTTP and JSON;
* **served, sequential**: one client, one image per request: p50 / p95 / mean latency;
* **served, concurrent**: ``--clients`` threads sending single-image requests (``--concurrent-requests``
  in total): throughput in images/s and the latency under load;
* **served, batched**: one client, ``--batch`` images per request: images/s.

By default the script builds an untrained MCCL bundle (the real architecture: ``--arch``,
the 28 Intentonomy classes with their label embeddings and training co-occurrence, random weights:
the forward costs the same as a trained model's), logs it with
:func:`mccl_core.serving.log_pyfunc_model` into a throwaway SQLite tracking store, registers and
promotes it, and serves ``models:/<name>@champion`` exactly as production does. Alternatives:
``--bundle DIR`` (serve that bundle), ``--model-uri URI`` (serve a logged/registered model; set
``MLFLOW_TRACKING_URI`` for ``models:/`` URIs) or ``--url URL`` (an already running server;
the bare model then comes from ``--model-uri``/``--bundle`` if given, else it is skipped).
Only loopback servers are accepted. The client threads run in this process and share the CPU with
the server: on a small machine the concurrent numbers measure the whole box.

OpenMP waiting: this process (bare forward) and the server alternate on the same cores. With
OpenMP's default *active* waiting, the idle worker threads of one keep spinning and slow the other
down several-fold on a small or busy machine, which would make the comparison meaningless. So the
script sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch loads OpenMP; the server
inherits it. Set ``OMP_WAIT_POLICY=ACTIVE`` explicitly to measure the other regime.

    python bench/serve_latency.py                     # CPU defaults, < 2 min on 2 cores
    python bench/serve_latency.py --arch resnet101 --image-size 448 --clients 8 --concurrent-requests 400
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment variable below must be set before torch is imported)
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import base64
import io
import ipaddress
import json
import logging
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import requests
import torch
from PIL import Image, ImageDraw

from mccl_core.data.images import load_rgb_image_bytes
from mccl_core.models.archs import ARCHS
from mccl_core.serving import (
    BUNDLE_ARTIFACT,
    MCCLIntentModel,
    build_untrained_bundle,
    log_pyfunc_model,
    promote_if_better,
)

logger = logging.getLogger("bench.serve_latency")
MODEL_NAME = "mccl-serve-bench"


@dataclass
class LatencyStats:
    """Milliseconds over ``n`` timed calls."""

    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p50, p95 = (float(v) for v in np.percentile(ms, [50, 95]))
        return cls(len(ms), p50, p95, float(ms.mean()), float(ms.min()))


@dataclass
class BenchResult:
    settings: dict[str, Any]
    environment: dict[str, Any]
    bare_forward: LatencyStats | None = None
    in_process_predict: LatencyStats | None = None
    served_sequential: LatencyStats | None = None
    served_concurrent: LatencyStats | None = None
    concurrent_images_per_s: float | None = None
    batched_request: LatencyStats | None = None
    batched_images_per_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def synthetic_photos(count: int, size: tuple[int, int], seed: int) -> list[bytes]:
    """``count`` distinct JPEGs (gradients, shapes and sensor-like noise: realistic entropy)."""
    rng = np.random.default_rng(seed)
    width, height = size
    photos = []
    for _ in range(count):
        base = np.linspace(rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), width, dtype=np.float32)
        pixels = np.broadcast_to(base[None], (height, width, 3)).copy()
        pixels += rng.normal(0, 12, pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
            draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def _payload(images_b64: Sequence[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b] for b in images_b64]}}).encode()


# --------------------------------------------------------------------------------------------
# Model sources
# --------------------------------------------------------------------------------------------


def build_default_bundle(out_dir: Path, arch: str, image_size: int) -> Path:
    """Untrained MCCL bundle for the 28 Intentonomy classes (see the module docstring)."""
    from mccl_core.data.intentonomy import INTENTONOMY_CLASSES, intentonomy_descriptions, intentonomy_train_cooccurrence
    from mccl_core.models import ModelConfig, compute_label_embeddings, label_texts

    descriptions = intentonomy_descriptions()
    texts = label_texts(INTENTONOMY_CLASSES, descriptions)
    embeddings = compute_label_embeddings(texts, out_dir / "label_embeddings.npz")
    stages = list(ARCHS[arch].stage_names[-2:])
    model_cfg = ModelConfig.from_dict(
        {"backbone": {"arch": arch, "stages": stages, "weights": "none"}, "mcc": {"residual": 0.5}}
    )
    return build_untrained_bundle(
        out_dir / "bundle", model_cfg, list(INTENTONOMY_CLASSES), embeddings, intentonomy_train_cooccurrence(),
        image_size, class_descriptions=descriptions,
    )  # fmt: skip


def log_and_promote(bundle: Path, workdir: Path, threshold: float) -> tuple[str, str]:
    """Log + register + promote ``bundle`` in a SQLite store in ``workdir`` (artifacts there too).

    Returns the tracking URI and ``models:/<name>@champion``."""
    import mlflow

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    artifacts = (workdir / "mlartifacts").as_uri()
    experiment_id = client.create_experiment("serve-latency-bench", artifact_location=artifacts)
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_pyfunc_model(bundle, threshold, registered_model_name=MODEL_NAME)
    decision = promote_if_better(client, MODEL_NAME, str(info.registered_model_version), 0.0)
    logger.info("%s", decision.reason)
    return tracking_uri, f"models:/{MODEL_NAME}@champion"


def local_intent_model(bundle: Path | None, model_uri: str | None, threshold: float) -> MCCLIntentModel | None:
    """The pyfunc model object in this process (for the bare and in-process timings)."""
    if bundle is not None:
        from mlflow.pyfunc import PythonModelContext

        model = MCCLIntentModel()
        model.load_context(PythonModelContext({BUNDLE_ARTIFACT: str(bundle)}, {"threshold": threshold}))
        return model
    if model_uri is not None:
        import mlflow

        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    return None


# --------------------------------------------------------------------------------------------
# The serving process
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServingProcess:
    """``mlflow models serve --env-manager local`` in its own process group (stopped as a group)."""

    def __init__(self, model_uri: str, tracking_uri: str | None, workers: int, log_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if tracking_uri:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
        # The scoring server is started as `uvicorn ...` from PATH: the interpreter's bin folder.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self.command = [
            sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the serving process exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        log_tail = self.log_path.read_text(errors="replace")[-3000:]
        raise TimeoutError(f"the serving process did not answer /ping in {timeout_s:.0f}s:\n{log_tail}")

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL whatever is left (uvicorn children included)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{url}: this benchmark only targets loopback servers (127.0.0.1, ::1, localhost)")


# --------------------------------------------------------------------------------------------
# Timings
# --------------------------------------------------------------------------------------------


def interleaved_single_image_seconds(
    model: MCCLIntentModel | None, photos: Sequence[bytes], photos_b64: Sequence[str], url: str, warmup: int, count: int
) -> dict[str, list[float]]:
    """Per round: one bare forward, one in-process predict, one served request (same image).

    Interleaving makes the three see the same machine load (other processes come and go), so
    their differences are the serving overhead and not the noise of when each was measured.
    """
    calls: dict[str, Callable[[int], object]] = {}
    if model is not None:
        tensors = [model.transform(load_rgb_image_bytes(p)).unsqueeze(0).to(model.device) for p in photos]
        frames = [pd.DataFrame({"image": [b]}) for b in photos_b64]
        sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

        def bare(i: int) -> None:
            with torch.inference_mode():
                model.model(tensors[i % len(tensors)])
            sync()

        calls["bare_forward"] = bare
        calls["in_process_predict"] = lambda i: model.predict(None, frames[i % len(frames)])
    session = requests.Session()
    bodies = [_payload([b]) for b in photos_b64]
    calls["served_sequential"] = lambda i: _request(session, url, bodies[i % len(bodies)])
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    with session:
        for i in range(warmup + count):
            for name, call in calls.items():
                start = time.perf_counter()
                call(i)
                if i >= warmup:
                    seconds[name].append(time.perf_counter() - start)
    return seconds


def _request(session: requests.Session, url: str, body: bytes) -> float:
    start = time.perf_counter()
    response = session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=300)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"the server answered {response.status_code}: {response.text[:500]}")
    return elapsed


def served_batched(url: str, bodies: Sequence[bytes], count: int) -> list[float]:
    """``count`` sequential requests (after one warm-up), cycling through ``bodies``."""
    with requests.Session() as session:
        _request(session, url, bodies[0])
        return [_request(session, url, bodies[i % len(bodies)]) for i in range(count)]


def served_concurrent(url: str, bodies: Sequence[bytes], clients: int, total: int) -> tuple[list[float], float]:
    """``total`` single-image requests from ``clients`` threads; returns latencies and wall seconds."""
    local = threading.local()

    def one(i: int) -> float:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return _request(local.session, url, bodies[i % len(bodies)])

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(clients)))  # warm-up: one request per client (connections, threads)
        start = time.perf_counter()
        latencies = list(pool.map(one, range(total)))
        wall = time.perf_counter() - start
    return latencies, wall


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def format_table(result: BenchResult) -> str:
    rows = [
        ("bare forward (1 image, in-process)", result.bare_forward, None),
        ("pyfunc predict (1 image, in-process)", result.in_process_predict, None),
        ("served, 1 image/request, 1 client", result.served_sequential, None),
        (f"served, 1 image/request, {result.settings['clients']} clients", result.served_concurrent,
         result.concurrent_images_per_s),
        (f"served, {result.settings['batch']} images/request, 1 client", result.batched_request,
         result.batched_images_per_s),
    ]  # fmt: skip
    lines = [f"{'measurement':<42} {'n':>4} {'min ms':>9} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'images/s':>9}"]
    for name, stats, throughput in rows:
        if stats is None:
            lines.append(f"{name:<42} {'-':>4} {'skipped':>9}")
            continue
        rate = throughput if throughput is not None else (1000.0 / stats.mean_ms if "1 image" in name else None)
        lines.append(
            f"{name:<42} {stats.n:>4} {stats.min_ms:>9.1f} {stats.p50_ms:>9.1f} {stats.p95_ms:>9.1f} "
            f"{stats.mean_ms:>9.1f} {(f'{rate:.1f}' if rate is not None else '-'):>9}"
        )
    if result.bare_forward and result.served_sequential:
        bare, served = result.bare_forward, result.served_sequential
        lines.append(
            f"served request minus bare forward: {served.min_ms - bare.min_ms:+.1f} ms at min, "
            f"{served.p50_ms - bare.p50_ms:+.1f} ms at p50 (min is the least load-sensitive estimate)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> BenchResult:
    width, height = (int(v) for v in args.photo_size.lower().split("x"))
    photos = synthetic_photos(args.distinct_images, (width, height), args.seed)
    photos_b64 = [base64.b64encode(p).decode("ascii") for p in photos]
    result = BenchResult(
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        environment={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "mean_jpeg_kib": float(np.mean([len(p) for p in photos]) / 1024),
        },
    )
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mccl-serve-bench-")))
        bundle, model_uri, tracking_uri = args.bundle, args.model_uri, os.environ.get("MLFLOW_TRACKING_URI")
        if args.url is None and bundle is None and model_uri is None:
            logger.info("building an untrained %s MCCL bundle (%d px)", args.arch, args.image_size)
            bundle = build_default_bundle(workdir, args.arch, args.image_size)
            result.notes.append("untrained bundle built by the benchmark (random weights; timing only)")
        if args.url is None and model_uri is None:
            tracking_uri, model_uri = log_and_promote(bundle, workdir, args.threshold)

        url = args.url
        if url is None:
            server = ServingProcess(model_uri, tracking_uri, args.workers, workdir / "serve.log")
            stack.callback(server.stop)
            logger.info("starting mlflow models serve -m %s", model_uri)
            started = time.perf_counter()
            server.start(args.start_timeout)
            result.environment["serve_startup_s"] = round(time.perf_counter() - started, 2)
            url = server.url
        require_loopback(url)
        try:
            _measure(args, result, url, bundle, model_uri, photos, photos_b64)
        except (requests.RequestException, RuntimeError) as error:
            log_tail = server.log_path.read_text(errors="replace")[-4000:] if args.url is None else "(external server)"
            raise RuntimeError(f"{error}\n--- serving process log (tail) ---\n{log_tail}") from error
    return result


def _measure(
    args: argparse.Namespace,
    result: BenchResult,
    url: str,
    bundle: Path | None,
    model_uri: str | None,
    photos: Sequence[bytes],
    photos_b64: Sequence[str],
) -> None:
    local_model = local_intent_model(bundle, model_uri if bundle is None else None, args.threshold)
    if local_model is None:
        result.notes.append("no --bundle/--model-uri for the target --url: bare forward skipped")
    else:
        result.environment["device"] = str(local_model.device)
    logger.info("%d rounds of: bare forward, in-process predict, served request (1 image each)", args.requests)
    single = interleaved_single_image_seconds(local_model, photos, photos_b64, url, args.warmup, args.requests)
    result.served_sequential = LatencyStats.of(single["served_sequential"])
    if local_model is not None:
        result.bare_forward = LatencyStats.of(single["bare_forward"])
        result.in_process_predict = LatencyStats.of(single["in_process_predict"])
        del local_model  # free its memory and threads before the load test

    singles = [_payload([b]) for b in photos_b64]
    logger.info("served: %d single-image requests from %d clients", args.concurrent_requests, args.clients)
    latencies, wall = served_concurrent(url, singles, args.clients, args.concurrent_requests)
    result.served_concurrent = LatencyStats.of(latencies)
    result.concurrent_images_per_s = args.concurrent_requests / wall
    batch_bodies = [
        _payload([photos_b64[(i + j) % len(photos_b64)] for j in range(args.batch)]) for i in range(len(photos_b64))
    ]
    logger.info("served: %d requests of %d images", args.batch_requests, args.batch)
    batched = served_batched(url, batch_bodies, args.batch_requests)
    result.batched_request = LatencyStats.of(batched)
    result.batched_images_per_s = args.batch * len(batched) / sum(batched)
    if hasattr(os, "getloadavg"):
        result.environment["load_average_end"] = list(os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_argument_group("what to serve (default: build an untrained bundle)")
    source.add_argument("--url", help="an already running loopback scoring server, e.g. http://127.0.0.1:5000")
    source.add_argument("--model-uri", help="serve this model (models:/name@champion, runs:/..., a local path)")
    source.add_argument("--bundle", type=Path, help="serve this model bundle folder")
    source.add_argument("--arch", default="efficientnet_lite0", choices=sorted(ARCHS), help="default bundle's backbone")
    source.add_argument("--image-size", type=int, default=224, help="default bundle's eval resolution")
    source.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--photo-size", default="640x480", help="WxH of the synthetic JPEGs sent")
    parser.add_argument("--distinct-images", type=int, default=8)
    parser.add_argument(
        "--requests", type=int, default=30, help="timed rounds of bare forward / predict / served request (1 image)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--concurrent-requests", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="images per request in the batched measurement")
    parser.add_argument("--batch-requests", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="scoring server worker processes")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path, default=Path("outputs/bench/serve_latency.json"))
    args = parser.parse_args(argv)
    if args.url is not None:
        require_loopback(args.url)
    if args.bundle is not None and args.model_uri is not None:
        parser.error("give --bundle or --model-uri, not both")
    for name in ("requests", "clients", "concurrent_requests", "batch", "batch_requests", "distinct_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "mccl_core", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    result = run(args)
    print(format_table(result))
    text = json.dumps(result.to_dict(), indent=2)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
