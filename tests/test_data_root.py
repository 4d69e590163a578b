"""Data stays inside its root (issue 21, item 3): the validate step refuses, under both policies,
every image path that resolves outside ``data.root`` (a manifest's folder, ``data.allowed_roots``)
- ``../`` traversal, a symlink out, an absolute path - names the resolved path, and never opens it.

"Never opened" is checked for real: one symlink points at a FIFO outside the root, and opening a
FIFO for reading blocks until a writer comes; a watchdog would unblock it and report that.
"""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mccl_core.data import DataConfig
from mccl_core.steps.common import StepError
from mccl_core.steps.validate import ValidateConfig, run_validate

OFF = None  # no tracking: these tests are about the data


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def escaping_manifest(tmp_path):
    """``data/mine`` with 4 good rows and 5 rows that escape it, plus one absolute path inside."""
    mine, outside = tmp_path / "data" / "mine", tmp_path / "outside"
    for i, name in enumerate(("a1", "b1", "a2", "b2", "a3")):
        _png(mine / "img" / f"{name}.png", 40 * i)
    secret = _png(outside / "secret.png", 200)  # a valid image: it would pass if it were read
    os.mkfifo(outside / "pipe.png")
    (mine / "img" / "link.png").symlink_to(secret)
    (mine / "img" / "fifo.png").symlink_to(outside / "pipe.png")
    (mine / "img" / "passwd.jpg").symlink_to("/etc/passwd")
    rows = [
        ("img/a1.png", "A", "train"), ("img/b1.png", "B", "train"), ("img/a2.png", "A", "val"),
        ("img/b2.png", "B", "test"), (str(mine / "img" / "a3.png"), "A", "train"),  # absolute, inside: fine
        ("../../outside/secret.png", "A", "train"),  # traversal
        ("img/link.png", "B", "train"),  # symlink to a file outside
        ("img/fifo.png", "A", "train"),  # symlink to a FIFO outside (opening it would block)
        ("img/passwd.jpg", "A", "train"),  # symlink to /etc/passwd
        (str(secret), "B", "train"),  # absolute path outside
    ]  # fmt: skip
    with open(mine / "m.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "labels", "split"])
        writer.writerows(rows)
    (mine / "classes.txt").write_text("A\nB\n")
    cfg = DataConfig(source="manifest", root=mine, manifest=mine / "m.csv", class_list=mine / "classes.txt")
    return cfg, outside


ESCAPES = {  # manifest line -> the resolved path its problem must name
    7: "outside/secret.png", 8: "outside/secret.png", 9: "outside/pipe.png", 10: "/etc/passwd", 11: "outside/secret.png",
}  # fmt: skip


class _FifoWatchdog:
    """Unblocks a reader stuck on the FIFO after ``seconds`` and remembers that it had to."""

    def __init__(self, fifo: Path, seconds: float = 120.0) -> None:
        self.fifo, self.had_to_unblock = fifo, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self._thread.start()

    def _run(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            return
        fd = os.open(self.fifo, os.O_WRONLY)  # only returns once a reader has the FIFO open
        self.had_to_unblock = True
        os.close(fd)

    def reader_is_waiting(self) -> bool:
        try:
            os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO: nobody reads it
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.parametrize("policy", ["fail", "quarantine"])
def test_paths_outside_the_data_root_are_record_problems_and_never_opened(escaping_manifest, tmp_path, policy):
    cfg, outside = escaping_manifest
    watchdog = _FifoWatchdog(outside / "pipe.png")
    out = tmp_path / "validate"
    try:
        if policy == "fail":
            with pytest.raises(StepError) as caught:
                run_validate(ValidateConfig(policy="fail", workers=2), cfg, out, OFF)
            message = str(caught.value)
            assert "5 offending record(s)" in message
            for resolved in ESCAPES.values():
                assert f"resolves to '{resolved if resolved.startswith('/') else str(tmp_path / resolved)}'" in message
        else:
            result = run_validate(ValidateConfig(policy="quarantine", workers=2), cfg, out, OFF)
            assert (result.n_records, result.n_quarantined) == (10, 5)
            with open(result.quarantine_path, newline="") as handle:
                quarantined = list(csv.DictReader(handle))
            assert [q["checks"] for q in quarantined] == ['["image_inside_root"]'] * 5
            for row, (line, resolved) in zip(quarantined, ESCAPES.items(), strict=True):
                target = resolved if resolved.startswith("/") else str(tmp_path / resolved)
                assert f"resolves to {target!r}, outside the data root(s) [{cfg.root.resolve()}]" in row["reason"]
                assert row["line"] == str(line)
            assert result.validated.counts["per_split"] == {
                "train": 3,
                "val": 1,
                "test": 1,
            }  # a3 (absolute, inside) kept
    finally:
        stuck = watchdog.reader_is_waiting()
        watchdog.stop()
    assert not stuck and not watchdog.had_to_unblock, "validation opened the FIFO outside the data root"


def test_allowed_roots_admit_a_configured_folder(escaping_manifest, tmp_path):
    cfg, outside = escaping_manifest
    os.unlink(outside / "pipe.png")
    os.unlink(cfg.root / "img" / "fifo.png")
    os.unlink(cfg.root / "img" / "passwd.jpg")
    lines = (cfg.root / "m.csv").read_text().splitlines()
    (cfg.root / "m.csv").write_text("\n".join(line for line in lines if "fifo" not in line and "passwd" not in line))
    allowed = DataConfig.from_dict({**cfg.to_dict(), "allowed_roots": [str(outside)]})
    result = run_validate(ValidateConfig(policy="fail", workers=2), allowed, tmp_path / "validate", OFF)
    assert (result.n_records, result.n_quarantined) == (8, 0)


def test_quarantine_lines_match_the_reasons_and_only_the_second_duplicate_goes(tmp_path):
    """quarantine.csv's ``line`` is the manifest line its reason quotes; of two rows with one id,
    only the second is set aside (the first is a good record)."""
    mine = tmp_path / "mine"
    for name in ("a", "b", "c", "d"):
        _png(mine / f"{name}.png", 60)
    (mine / "m.csv").write_text(
        "image_path,labels,split\na.png,A,train\nb.png,B,train\nc.png,A,val\nd.png,B,test\n"
        "a.png,B,train\n"  # line 6: the same image (id) again
        "missing.png,A,train\n"  # line 7: no such file
    )
    (mine / "classes.txt").write_text("A\nB\n")
    cfg = DataConfig(source="manifest", root=mine, manifest=mine / "m.csv", class_list=mine / "classes.txt")
    result = run_validate(ValidateConfig(policy="quarantine", workers=1), cfg, tmp_path / "validate", OFF)
    with open(result.quarantine_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["image_id"], r["line"], r["row_number"]) for r in rows] == [
        ("a.png", "6", "4"),
        ("missing.png", "7", "5"),
    ]
    assert "line 6: duplicate image id (first on line 2)" in rows[0]["reason"]
    assert "file not found" in rows[1]["reason"]
    assert result.validated.counts["per_split"] == {"train": 2, "val": 1, "test": 1}  # the first a.png stays
