"""``mccl score``: score a predictions file against Intentonomy annotation files.

Examples::

    python -m mccl_core.metrics.score --predictions preds.csv \
        --val-annotations intentonomy_val2020.json --test-annotations intentonomy_test2020.json \
        --json-out results.json

With both annotation files the official protocol is reported (add ``--split-tuned`` to also
report the split-tuned protocol on test, in its own section). With only one file only the
split-tuned protocol is possible, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mccl_core.metrics.intentonomy_subsets import SUBSET_CHOICES
from mccl_core.metrics.scoring import ScoringConfig, score_prediction_files
from mccl_core.metrics.tables import format_table

logger = logging.getLogger(__name__)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mccl score",
        description=(
            "Score per-image intent scores (CSV: image_id + one column per class name or s0..s27; "
            "JSON: {image_id: [scores]}) with the official Intentonomy protocol."
        ),
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        nargs="+",
        required=True,
        help="one or more .csv/.json score files (merged; every image id at most once)",
    )
    parser.add_argument("--val-annotations", type=Path, help="Intentonomy-format val JSON (tunes the threshold)")
    parser.add_argument("--test-annotations", type=Path, help="Intentonomy-format test JSON (reported split)")
    parser.add_argument(
        "--subsets",
        choices=SUBSET_CHOICES,
        default="auto",
        help=(
            "class subsets for subset macro-F1 (auto: the official Intentonomy subsets when the categories are "
            "the 28 Intentonomy classes by name; intentonomy: the same, an error otherwise; none: no subsets)"
        ),
    )
    parser.add_argument("--scores-are-logits", action="store_true", help="apply a sigmoid to the scores first")
    parser.add_argument(
        "--split-tuned",
        action="store_true",
        help="with val+test, also report the split-tuned protocol on test (separately labelled)",
    )
    parser.add_argument(
        "--ignore-extra-ids",
        action="store_true",
        help="ignore predicted images that are in no annotation file instead of failing",
    )
    parser.add_argument("--json-out", type=Path, help="also write the full results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 2 on bad input (message on stderr)."""
    args = _build_parser().parse_args(argv)
    if args.val_annotations is None and args.test_annotations is None:
        print("error: give --val-annotations and/or --test-annotations", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = ScoringConfig(
        prediction_paths=tuple(args.predictions),
        val_annotations=args.val_annotations,
        test_annotations=args.test_annotations,
        subsets=args.subsets,
        scores_are_logits=args.scores_are_logits,
        also_split_tuned=args.split_tuned,
        ignore_extra_ids=args.ignore_extra_ids,
    )
    try:
        result = score_prediction_files(config)
    except ValueError as exc:  # AnnotationFileError / PredictionsFileError / bad scores
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.official is None:
        print(
            "NOTE: the official protocol needs both --val-annotations and --test-annotations; "
            "showing the split-tuned protocol only.\n"
        )
    print(format_table(result))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
