"""Resumable Intentonomy image downloader (for users with internet access).

Reads each image's ``unsplash_url`` from the official annotation JSON files and stores the image
at ``<root>/<filename>`` (``low/<id>.jpg``), the layout :func:`~mccl_core.data.load_split`
expects. Properties that make it safe to re-run:

* files already present are skipped (a present file is always complete, see next point);
* each download goes to a temporary name in the target folder and is renamed into place only
  after it finished and decoded as an image, so a killed run never leaves a half file;
* transient failures (connection errors, timeouts, HTTP 408/425/429/5xx) are retried with
  exponential backoff; permanent ones (other 4xx, non-image content) are not;
* every failure is written to a JSON report (id, url, path, error, attempts): nothing is lost
  silently, and the report says exactly what to retry or drop.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from PIL import Image, UnidentifiedImageError

from mccl_core.data.intentonomy import image_urls

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class DownloadConfig:
    """Downloader settings.

    Attributes:
        workers: parallel download threads.
        retries: extra attempts after a transient failure.
        backoff_s: first retry waits this long; each further retry doubles it.
        timeout_s: per-request connect/read timeout.
        report_path: failure report (default ``<root>/download_report.json``).
        show_progress: tqdm progress bar.
    """

    workers: int = 8
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    report_path: Path | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"DownloadConfig.workers must be >= 1, got {self.workers}")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError("DownloadConfig: retries and backoff_s must be >= 0 and timeout_s > 0")


@dataclass(frozen=True)
class DownloadFailure:
    image_id: str
    url: str
    path: str
    error: str
    attempts: int


@dataclass
class DownloadReport:
    """Outcome of one downloader run (also written as JSON)."""

    total: int = 0
    downloaded: int = 0
    skipped: int = 0
    failures: list[DownloadFailure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "downloaded": self.downloaded,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": [asdict(f) for f in self.failures],
        }


class _PermanentError(Exception):
    """A failure that retrying will not fix."""


class _TransientError(Exception):
    """A failure worth retrying."""


def _session(sessions: threading.local) -> requests.Session:
    """The calling worker thread's ``requests.Session`` (sessions are not guaranteed thread-safe;
    one per thread keeps connection reuse without sharing)."""
    session = getattr(sessions, "session", None)
    if session is None:
        session = requests.Session()
        sessions.session = session
    return session


def _fetch_once(url: str, destination: Path, timeout_s: float, sessions: threading.local) -> None:
    """Download ``url`` to a temporary file, check it decodes, then rename it to ``destination``."""
    temporary = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.part"
    try:
        try:
            with _session(sessions).get(url, stream=True, timeout=timeout_s) as response:
                if response.status_code in RETRYABLE_STATUS:
                    raise _TransientError(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise _PermanentError(f"HTTP {response.status_code}")
                with temporary.open("wb") as handle:
                    for block in response.iter_content(chunk_size=1 << 16):
                        handle.write(block)
                # With a content encoding (gzip) the body we stored is longer than Content-Length.
                encoded = response.headers.get("Content-Encoding", "identity") != "identity"
                expected = None if encoded else response.headers.get("Content-Length")
        except requests.RequestException as error:
            raise _TransientError(f"{type(error).__name__}: {error}") from error
        size = temporary.stat().st_size
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise _TransientError(f"incomplete body ({size} of {expected} bytes)")
        if size == 0:
            raise _PermanentError("empty response body")
        try:
            with Image.open(temporary) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise _PermanentError(f"response is not a valid image ({error})") from error
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _download_one(
    image_id: str, url: str, destination: Path, cfg: DownloadConfig, sessions: threading.local
) -> DownloadFailure | None:
    attempts = 0
    while True:
        attempts += 1
        try:
            _fetch_once(url, destination, cfg.timeout_s, sessions)
            return None
        except _PermanentError as error:
            return DownloadFailure(image_id, url, str(destination), str(error), attempts)
        except _TransientError as error:
            if attempts > cfg.retries:
                return DownloadFailure(
                    image_id, url, str(destination), f"{error} (gave up after {attempts} attempts)", attempts
                )
            wait = cfg.backoff_s * (2 ** (attempts - 1))
            logger.debug("%s: %s; retry %d in %.2fs", url, error, attempts, wait)
            time.sleep(wait)


def _remove_stale_partials(folders: set[Path]) -> None:
    """Delete ``.<name>.<uuid>.part`` files a killed earlier run left behind (never a target file)."""
    removed = 0
    for folder in folders:
        if folder.is_dir():
            for stale in folder.glob(".*.part"):
                stale.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("removed %d partial files left by an interrupted run", removed)


def download_intentonomy(annotation_files: list[Path], root: Path, cfg: DownloadConfig | None = None) -> DownloadReport:
    """Download every image listed in ``annotation_files`` into ``root``.

    Returns the report (also written to ``cfg.report_path`` or ``<root>/download_report.json``).
    Safe to interrupt and re-run: finished files are skipped, partial ones never appear.
    """
    from tqdm.auto import tqdm

    cfg = cfg or DownloadConfig()
    root = Path(root)
    entries: list[tuple[str, str, str]] = []
    first_seen: dict[str, tuple[str, str, Path]] = {}
    conflicts: list[str] = []
    for annotation_file in annotation_files:
        for image_id, filename, url in image_urls(Path(annotation_file)):
            if image_id not in first_seen:
                first_seen[image_id] = (filename, url, Path(annotation_file))
                entries.append((image_id, filename, url))
            elif first_seen[image_id][:2] != (filename, url):  # identical repeats are fetched once
                earlier = str(first_seen[image_id][2])
                conflicts.append(f"image {image_id!r}: file/url in {str(annotation_file)!r} differs from {earlier!r}")
    if conflicts:
        listed = "\n".join(f"  - {c}" for c in conflicts[:20])
        more = f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
        raise ValueError(f"{len(conflicts)} image id(s) listed with different files or URLs:\n{listed}{more}")
    report = DownloadReport(total=len(entries))
    _remove_stale_partials({(root / filename).parent for _, filename, _ in entries})
    todo: list[tuple[str, str, Path]] = []
    for image_id, filename, url in entries:
        destination = root / filename
        if destination.is_file() and destination.stat().st_size > 0:
            report.skipped += 1
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            todo.append((image_id, url, destination))
    logger.info(
        "intentonomy download: %d images, %d already present, %d to fetch", report.total, report.skipped, len(todo)
    )
    sessions = threading.local()  # one HTTP session per worker thread, dropped with this call
    with (
        ThreadPoolExecutor(max_workers=cfg.workers) as pool,
        tqdm(total=len(todo), desc="download", unit="img", disable=not cfg.show_progress) as bar,
    ):
        futures = [
            pool.submit(_download_one, image_id, url, destination, cfg, sessions) for image_id, url, destination in todo
        ]
        for future in as_completed(futures):
            failure = future.result()
            if failure is None:
                report.downloaded += 1
            else:
                report.failures.append(failure)
            bar.update(1)
    report.failures.sort(key=lambda f: f.image_id)
    report_path = Path(cfg.report_path) if cfg.report_path is not None else root / "download_report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    if report.failures:
        logger.warning("intentonomy download: %d of %d images failed; see %s", report.failed, report.total, report_path)
    return report
