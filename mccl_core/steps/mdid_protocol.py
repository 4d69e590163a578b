"""``mccl mdid protocol``: MDID's reported number in one command - the 5 splits, mean +- std.

    mccl mdid protocol --params params.yaml --out outputs/mdid
    mccl mdid protocol --params params.yaml --out outputs/mdid --splits 0,1   # a partial summary

Each split index runs the pipeline's own steps through the step contract
(:func:`mccl_core.steps.contract.run_step`: validate -> extract -> cluster -> train -> evaluate,
into ``<out>/split<k>/<step>/``), exactly what ``dvc repro`` or Kubeflow would run with
``data.mdid_split_index: k``; then :func:`mccl_core.metrics.mdid_protocol` combines the five
evaluate outputs (it also checks that the val folds really are five different splits) into
``<out>/mdid_protocol.json`` and ``<out>/mdid_protocol.md``.

MDID is single-label: its label co-occurrence graph has no edges and the PKI's GCN cannot run on
it (``EmptyLabelGraphError`` deep inside training). So ``model.pki.use_gcn`` is set to false here
when the params leave it on, with a warning saying so, and recorded in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mccl_core.config import ConfigError, load_params
from mccl_core.metrics import MDIDAccuracyResult, format_table, load_mdid_val_predictions, mdid_protocol
from mccl_core.metrics.mdid import MDID_PROTOCOL_SPLITS
from mccl_core.steps.contract import run_step
from mccl_core.steps.errors import StepError
from mccl_core.steps.layout import PREDICTIONS_DIR
from mccl_core.tracking.steps import TrackingOptions, close_runs_of_dead_processes

log = logging.getLogger(__name__)

#: The chain run per split index, with the upstream folders each step reads (the DAG's order).
CHAIN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("validate", ()),
    ("extract", ("validate",)),
    ("cluster", ("validate", "extract")),
    ("train", ("validate", "extract", "cluster")),
    ("evaluate", ("validate", "train")),
)
JSON_NAME = "mdid_protocol.json"
MARKDOWN_NAME = "mdid_protocol.md"


@dataclass(frozen=True)
class MDIDProtocolRun:
    """What the command produced: the summary, its files and the params changes it made."""

    result: MDIDAccuracyResult
    json_path: Path
    markdown_path: Path
    adjustments: tuple[str, ...]


def parse_splits(text: str) -> tuple[int, ...]:
    """``"0,1"`` -> ``(0, 1)``; each an MDID split index 0..4, none twice."""
    try:
        splits = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"--splits expects comma-separated split indices such as 0,1,2, got {text!r}") from error
    bad = [k for k in splits if not 0 <= k < MDID_PROTOCOL_SPLITS]
    if not splits or bad or len(set(splits)) != len(splits):
        raise ConfigError(
            f"--splits: MDID split indices are 0..{MDID_PROTOCOL_SPLITS - 1}, each at most once; got {text!r}"
        )
    return splits


def mdid_params(params: dict[str, Any], source: str = "params") -> tuple[dict[str, Any], tuple[str, ...]]:
    """A copy of ``params`` fit for MDID, and the adjustments made (logged by the caller's run).

    Raises :class:`ConfigError` when ``data.source`` is not ``mdid`` (naming ``source``): the
    protocol of another dataset is a different number.
    """
    data = params.get("data") or {}
    if data.get("source") != "mdid":
        raise ConfigError(f"{source}: data.source is {data.get('source')!r}; the MDID protocol needs data.source: mdid")
    adjusted = copy.deepcopy(params)
    pki = adjusted.setdefault("model", {}).setdefault("pki", {})
    adjustments: list[str] = []
    if pki.get("use_gcn", True) is not False:
        pki["use_gcn"] = False
        adjustments.append(
            "model.pki.use_gcn: false (MDID is single-label: its label co-occurrence graph has no edges for the GCN)"
        )
    for note in adjustments:
        log.warning("MDID protocol: set %s", note)
    return adjusted, tuple(adjustments)


def run_mdid_protocol(
    params: dict[str, Any],
    out_dir: Path,
    splits: Sequence[int] = tuple(range(MDID_PROTOCOL_SPLITS)),
    tracking: TrackingOptions | None = None,
    source: str = "params",
) -> MDIDProtocolRun:
    """Run the step chain on every split index in ``splits`` and summarise their val accuracy.

    ``splits`` other than all five gives a partial summary (``"partial": true`` in the JSON; not
    the MDID number). Each split's steps share one MLflow parent run (their own run reference).
    """
    params, adjustments = mdid_params(params, source)
    tracking = tracking or TrackingOptions(enabled=False)
    out_dir = Path(out_dir)
    predictions = []
    for k in splits:
        split_params = copy.deepcopy(params)
        split_params["data"]["mdid_split_index"] = k
        folders = {name: out_dir / f"split{k}" / name for name, _ in CHAIN}
        split_tracking = replace(tracking, run_ref=out_dir / f"split{k}" / "mlflow_run_ref.json")
        for name, inputs in CHAIN:
            log.info("MDID split %d: %s", k, name)
            run_step(name, split_params, {i: folders[i] for i in inputs}, folders[name], split_tracking)
        predictions.append(load_mdid_val_predictions(folders["evaluate"] / PREDICTIONS_DIR / "val.npz", k))
    complete = sorted(splits) == list(range(MDID_PROTOCOL_SPLITS))
    result = mdid_protocol(predictions, n_splits=MDID_PROTOCOL_SPLITS if complete else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {**result.to_dict(), "partial": not complete, "adjustments": list(adjustments),
                "splits_dir": {str(k): str(out_dir / f"split{k}") for k in splits}}  # fmt: skip
    json_path, markdown_path = out_dir / JSON_NAME, out_dir / MARKDOWN_NAME
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    title = "MDID val top-1 accuracy" + (" (partial: not the 5-split number)" if not complete else "")
    rows = "\n".join(f"| {k} | {100 * acc:.2f} |" for k, acc in zip(result.split_indices, result.per_split))
    markdown_path.write_text(
        f"# {title}\n\n| split | accuracy (%) |\n|---|---|\n{rows}\n| **mean +- std** | "
        f"**{100 * result.mean:.2f} +- {100 * result.std:.2f}** |\n\n"
        f"std: population (ddof={result.ddof}) over {len(result.per_split)} split(s).\n"
    )
    log.info("%s", format_table(result))
    return MDIDProtocolRun(result, json_path, markdown_path, adjustments)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mccl mdid protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with data.source: mdid")
    p.add_argument("--out", type=Path, default=Path("outputs") / "mdid", help="output folder (default: outputs/mdid)")
    p.add_argument("--splits", type=parse_splits, default=tuple(range(MDID_PROTOCOL_SPLITS)),
                   help="split indices to run, e.g. 0,1 (default: all five: the protocol's number)")  # fmt: skip
    p.add_argument("--project-dir", type=Path, default=Path("."), help="project folder (embedded MLflow store)")
    p.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "protocol":
        print("usage: mccl mdid protocol [--params P] [--out DIR] [--splits 0,1,...] [--no-tracking]", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    ns = _parser().parse_args(args[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(ns.params)
        tracking = TrackingOptions.from_params(params, enabled=not ns.no_tracking, project_dir=ns.project_dir)
        if tracking.enabled:  # as every `mccl step`: runs of killed processes end KILLED first
            close_runs_of_dead_processes(tracking)
        run = run_mdid_protocol(params, ns.out, ns.splits, tracking, source=str(ns.params))
    except (StepError, ValueError, FileNotFoundError) as error:  # ConfigError is a ValueError
        print(f"mccl mdid protocol: {error}", file=sys.stderr)
        return 1
    print(run.markdown_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
