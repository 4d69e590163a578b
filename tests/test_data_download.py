"""Intentonomy downloader against a real local HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mccl_core.data import DownloadConfig, download_intentonomy, load_rgb_image
from mccl_core.data.cli import main as data_cli


def _jpeg(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


class _Server:
    """Serves /img/<n>.jpg; /missing.jpg -> 404; /flaky.jpg -> 503 once then the image;
    /html.jpg -> 200 with an HTML page; /down.jpg -> always 503; /slow.jpg -> first request
    sends half the body and stalls, later requests get the whole image."""

    def __init__(self) -> None:
        self.images = {f"/img/{n}.jpg": _jpeg(n) for n in range(4)}
        self.images["/flaky.jpg"] = _jpeg(10)
        self.requests: Counter[str] = Counter()
        self.stalled = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?")[0]
                server.requests[path] += 1
                if path == "/down.jpg" or (path == "/flaky.jpg" and server.requests[path] == 1):
                    self.send_error(503)
                    return
                if path == "/slow.jpg" and server.requests[path] == 1:
                    body = server.images["/img/0.jpg"]
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    server.stalled.wait(30)  # hold the connection until the test ends
                    return
                if path == "/slow.jpg":
                    path = "/img/0.jpg"
                if path == "/html.jpg":
                    body = b"<html>rate limited</html>"
                    content_type = "text/html"
                elif path in server.images:
                    body, content_type = server.images[path], "image/jpeg"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stalled.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[_Server]:
    with _Server() as running:
        yield running


def _annotation_file(
    tmp_path: Path, server: _Server, paths: list[str], name: str = "ann.json", ids: list[int] | None = None
) -> Path:
    ids = ids if ids is not None else list(range(len(paths)))
    images = [
        {
            "id": f"id{i}",
            "filename": f"low/id{i}.jpg",
            "original_id": f"o{i}",
            "unsplash_url": f"{server.url}{p}?ixid=x&q=30",
        }
        for i, p in zip(ids, paths, strict=True)
    ]
    document = {
        "categories": [{"id": 0, "name": "A"}],
        "images": images,
        "annotations": [{"id": n, "image_id": f"id{i}", "category_ids": [0]} for n, i in enumerate(ids)],
    }
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_download_retries_reports_failures_and_resumes(tmp_path: Path, server: _Server) -> None:
    annotations = _annotation_file(
        tmp_path,
        server,
        ["/img/0.jpg", "/img/1.jpg", "/missing.jpg", "/flaky.jpg", "/html.jpg", "/down.jpg", "/img/2.jpg"],
    )
    root = tmp_path / "intentonomy"
    (root / "low").mkdir(parents=True)
    (root / "low" / "id6.jpg").write_bytes(_jpeg(99))  # already present -> skipped
    cfg = DownloadConfig(workers=3, retries=2, backoff_s=0.01, timeout_s=5, show_progress=False)
    report = download_intentonomy([annotations], root, cfg)

    assert (report.total, report.downloaded, report.skipped, report.failed) == (7, 3, 1, 3)
    for i, key in [(0, "/img/0.jpg"), (1, "/img/1.jpg"), (3, "/flaky.jpg")]:
        assert (root / "low" / f"id{i}.jpg").read_bytes() == server.images[key]
    assert load_rgb_image(root / "low" / "id3.jpg").size == (32, 24)
    assert server.requests["/flaky.jpg"] == 2  # failed once, retried, succeeded
    assert server.requests["/missing.jpg"] == 1  # 404 is permanent: no retry
    assert server.requests["/down.jpg"] == 3  # 1 + 2 retries
    assert "/img/2.jpg" not in server.requests and (root / "low" / "id6.jpg").read_bytes() == _jpeg(99)
    # Failed downloads leave neither a target file nor a temporary file behind.
    assert sorted(p.name for p in (root / "low").iterdir()) == ["id0.jpg", "id1.jpg", "id3.jpg", "id6.jpg"]

    written = json.loads((root / "download_report.json").read_text())
    assert written["failed"] == 3 and written["downloaded"] == 3 and written["skipped"] == 1
    failures = {f["image_id"]: f for f in written["failures"]}
    assert failures["id2"]["error"] == "HTTP 404" and failures["id2"]["attempts"] == 1
    assert failures["id2"]["url"].startswith(server.url + "/missing.jpg")
    assert failures["id2"]["path"] == str(root / "low" / "id2.jpg")
    assert "not a valid image" in failures["id4"]["error"]
    assert (
        failures["id5"]["error"].startswith("HTTP 503 (gave up after 3 attempts)") and failures["id5"]["attempts"] == 3
    )

    # Second run: everything present is skipped, only the failures are tried again.
    server.requests.clear()
    again = download_intentonomy([annotations], root, cfg)
    assert (again.downloaded, again.skipped, again.failed) == (0, 4, 3)
    assert set(server.requests) == {"/missing.jpg", "/html.jpg", "/down.jpg"}


def test_download_cli_and_custom_report(tmp_path: Path, server: _Server) -> None:
    first = _annotation_file(tmp_path, server, ["/img/0.jpg", "/img/1.jpg"], "val.json", ids=[0, 1])
    second = _annotation_file(tmp_path, server, ["/img/0.jpg", "/img/3.jpg"], "test.json", ids=[0, 3])
    root = tmp_path / "data"
    report = tmp_path / "reports" / "dl.json"
    code = data_cli(
        [
            "download-intentonomy",
            "--annotations",
            str(first),
            str(second),
            "--root",
            str(root),
            "--workers",
            "2",
            "--report",
            str(report),
        ]
    )
    assert code == 0
    # id0 is listed in both files with the same URL: downloaded once.
    assert json.loads(report.read_text()) == {"total": 3, "downloaded": 3, "skipped": 0, "failed": 0, "failures": []}
    assert server.requests["/img/0.jpg"] == 1
    assert (root / "low" / "id3.jpg").read_bytes() == server.images["/img/3.jpg"]
    server.requests.clear()
    failing = _annotation_file(tmp_path, server, ["/missing.jpg"], "bad.json", ids=[7])
    assert data_cli(["download-intentonomy", "--annotations", str(failing), "--root", str(root), "--retries", "0"]) == 1


def test_conflicting_entries_for_one_image_id(tmp_path: Path, server: _Server) -> None:
    first = _annotation_file(tmp_path, server, ["/img/1.jpg"], "a.json", ids=[1])
    second = _annotation_file(tmp_path, server, ["/img/2.jpg"], "b.json", ids=[1])
    with pytest.raises(ValueError, match="image 'id1'.*b.json.*differs from.*a.json"):
        download_intentonomy([first, second], tmp_path / "root", DownloadConfig(show_progress=False))
    assert not server.requests


def test_killed_download_leaves_no_half_file(tmp_path: Path, server: _Server) -> None:
    annotations = _annotation_file(tmp_path, server, ["/slow.jpg"])
    root = tmp_path / "root"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mccl_core.data.cli",
            "download-intentonomy",
            "--annotations",
            str(annotations),
            "--root",
            str(root),
            "--workers",
            "1",
            "--timeout",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        # The temporary file exists once the response headers arrived and the body is streaming.
        while not list((root / "low").glob(".id0.jpg.*.part")):
            assert process.poll() is None and time.monotonic() < deadline, "download did not start"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (root / "low" / "id0.jpg").exists()  # the half-written file never got the real name
    report = download_intentonomy([annotations], root, DownloadConfig(show_progress=False))
    assert (report.downloaded, report.failed) == (1, 0)
    assert sorted(p.name for p in (root / "low").iterdir()) == ["id0.jpg"]  # stale partial cleaned up
    assert (root / "low" / "id0.jpg").read_bytes() == server.images["/img/0.jpg"]
