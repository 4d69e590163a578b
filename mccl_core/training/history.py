"""A finished training's per-epoch history (``history.json``) as headline numbers and curves."""

from __future__ import annotations

import csv
import io
from typing import Any

from mccl_core.training.loop import EpochRecord

#: Per-epoch curves without timings (``dvc plots``): what the inputs and params determine.
CURVE_COLUMNS = ("epoch", "train_loss", "lr", "val_macro_f1_split_tuned", "val_map")


def epoch_series(history: list[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """``(epoch, metrics)`` of every record, as the loop logs them to MLflow."""
    return [(int(record["epoch"]), EpochRecord(**record).metrics()) for record in history]


def headline_and_timing(history: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """``(headline, timing)`` of a finished training: the last epoch's losses and validation
    scores (deterministic: ``metrics/train.json``), and the wall-clock facts of this run."""
    if not history:
        return {}, {}
    last = EpochRecord(**history[-1]).metrics()
    headline = {"epochs": float(len(history))}
    headline |= {k: float(last[k]) for k in ("train_loss", "val_macro_f1_split_tuned", "val_map") if k in last}
    seconds = sum(float(r.get("seconds") or 0.0) for r in history)
    images = sum(float(r.get("seconds") or 0.0) * float(r.get("images_per_second") or 0.0) for r in history)
    timing = {"train_seconds": seconds, "train_images_per_second": images / seconds if seconds else 0.0}
    return headline, timing


def curves_csv(history: list[dict[str, Any]]) -> str:
    """The per-epoch curves as CSV, timings left out (they differ per run and would change dvc.lock)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    for epoch, metrics in epoch_series(history):
        values: dict[str, Any] = {"epoch": epoch, **metrics}
        writer.writerow(["" if values.get(c) is None else repr(values[c]) if isinstance(values[c], float) else values[c]
                         for c in CURVE_COLUMNS])  # fmt: skip
    return buffer.getvalue()
