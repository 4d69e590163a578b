"""Data command line: ``python -m mccl_core.data.cli <subcommand>`` (wired as ``mccl data ...``).

Subcommands:
  demo                  generate the synthetic demo dataset
  download-intentonomy  download Intentonomy images listed in annotation JSON files (resumable)
  verify                inspect every image of a split (the loader's own checks) and report refused files
  mdid-compact          rebuild the compact MDID split file from the official MDID files
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from mccl_core.data.config import SOURCES, DataConfig, load_split
from mccl_core.data.dataset import SPLITS, AnnotationError
from mccl_core.data.demo import DemoConfig, default_workers, generate_demo
from mccl_core.data.download import DownloadConfig, download_intentonomy
from mccl_core.data.images import DEFAULT_MAX_PIXELS, ImageLimits, format_problems, verify_images
from mccl_core.data.mdid import compact_mdid_splits, write_mdid_splits

logger = logging.getLogger("mccl_core.data.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mccl data", description="MCCL data tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    defaults = DemoConfig()
    demo = commands.add_parser("demo", help="generate the synthetic compositional-clue demo dataset")
    demo.add_argument("--out", type=Path, required=True, help="output folder")
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument("--n-train", type=int, default=defaults.n_train)
    demo.add_argument("--n-val", type=int, default=defaults.n_val)
    demo.add_argument("--n-test", type=int, default=defaults.n_test)
    demo.add_argument("--image-size", type=int, default=defaults.image_size)
    demo.add_argument("--imbalance-ratio", type=float, default=defaults.imbalance_ratio)
    demo.add_argument("--intents", type=int, default=defaults.num_intents,
                      help="10: the classic demo; 11-60: a generated many-intent demo (e.g. 45)")  # fmt: skip
    demo.add_argument("--clue-scale", type=float, default=defaults.clue_scale,
                      help="object size relative to the classic demo (< 1: small clues)")  # fmt: skip
    demo.add_argument(
        "--workers", type=int, default=default_workers(), help="rendering processes (output is identical for any value)"
    )

    download = commands.add_parser("download-intentonomy", help="download Intentonomy images (resumable)")
    download.add_argument("--annotations", type=Path, nargs="+", required=True, help="intentonomy_*2020.json files")
    download.add_argument("--root", type=Path, required=True, help="dataset root; images go to <root>/low/<id>.jpg")
    download.add_argument("--workers", type=int, default=8)
    download.add_argument("--retries", type=int, default=3)
    download.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    download.add_argument("--timeout", type=float, default=30.0)
    download.add_argument(
        "--report", type=Path, default=None, help="failure report (default <root>/download_report.json)"
    )

    verify = commands.add_parser(
        "verify",
        help="inspect every image of a split with the loader's checks; exit 1 if any is refused",
        description="Inspect every image of a split with the same inspector the loader and the validate step "
        "use (format, corrupt data, size limits, PIL mode); list each refused file with the reason.",
    )
    verify.add_argument("--source", choices=SOURCES, required=True)
    verify.add_argument("--root", type=Path, default=Path("."))
    verify.add_argument("--split", choices=SPLITS, required=True)
    verify.add_argument("--mdid-split-index", type=int, default=0)
    verify.add_argument("--manifest", type=Path, default=None)
    verify.add_argument("--class-list", type=Path, default=None)
    verify.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    verify.add_argument("--min-side", type=int, default=None, help="refuse sides below this (validate step: min_side)")
    verify.add_argument("--max-side", type=int, default=None, help="refuse sides above this (validate step: max_side)")
    verify.add_argument("--report", type=Path, default=None, help="write the problems as JSON here")

    compact = commands.add_parser("mdid-compact", help="derive the compact MDID split file from the official files")
    compact.add_argument("--metadata", type=Path, required=True, help="MDID master_metadata.json")
    compact.add_argument("--splits-dir", type=Path, required=True, help="folder with {train,val}_split_{0..4}.json")
    compact.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return _run(args)
    except (AnnotationError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        demo_cfg = DemoConfig(
            seed=args.seed,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            image_size=args.image_size,
            imbalance_ratio=args.imbalance_ratio,
            num_intents=args.intents,
            clue_scale=args.clue_scale,
        )
        start = time.perf_counter()
        out = generate_demo(args.out, demo_cfg, workers=args.workers)
        logger.info("demo generated in %.1f s: %s", time.perf_counter() - start, out)
        return 0
    if args.command == "download-intentonomy":
        download_cfg = DownloadConfig(
            workers=args.workers,
            retries=args.retries,
            backoff_s=args.backoff,
            timeout_s=args.timeout,
            report_path=args.report,
        )
        report = download_intentonomy(list(args.annotations), args.root, download_cfg)
        logger.info(
            "downloaded %d, skipped %d, failed %d of %d", report.downloaded, report.skipped, report.failed, report.total
        )
        return 0 if report.failed == 0 else 1
    if args.command == "verify":
        data_cfg = DataConfig(
            source=args.source,
            root=args.root,
            mdid_split_index=args.mdid_split_index,
            manifest=args.manifest,
            class_list=args.class_list,
            max_image_pixels=args.max_pixels,
        )
        limits = ImageLimits(
            min_side=1 if args.min_side is None else args.min_side, max_side=args.max_side, max_pixels=args.max_pixels
        )
        dataset = load_split(data_cfg, args.split)
        problems = verify_images(dataset, limits=limits)
        if args.report is not None:
            args.report.write_text(json.dumps([p.to_dict() for p in problems], indent=1) + "\n", encoding="utf-8")
        if problems:
            print(f"{len(problems)} of {len(dataset)} images refused:\n{format_problems(problems)}", file=sys.stderr)
            return 1
        logger.info("all %d images accepted", len(dataset))
        return 0
    if args.command == "mdid-compact":
        write_mdid_splits(compact_mdid_splits(args.metadata, args.splits_dir), args.out)
        logger.info("wrote %s", args.out)
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover - argparse restricts choices


if __name__ == "__main__":
    raise SystemExit(main())
