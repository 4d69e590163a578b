"""``mccl step extract``: backbone patch tokens -> Parquet shards + initial backbone (sections ``extract``, ``model``, ``train``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components._cli import DEFAULT_VALIDATED, parser, run, tracking_options
from mccl_core.params import section


def build() -> argparse.ArgumentParser:
    p = parser("extract", __doc__)
    p.add_argument("--validated", type=Path, default=DEFAULT_VALIDATED, help="validate step output folder")
    p.add_argument("--out", type=Path, default=Path("outputs/extract"))
    return p


def body(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from mccl_core.models import ModelConfig
    from mccl_core.steps.common import ValidatedData
    from mccl_core.steps.extract import ExtractStepConfig, run_extract
    from mccl_core.training.config import TrainConfig

    train_cfg = TrainConfig.from_dict(section(params, "train"))
    result = run_extract(
        ExtractStepConfig.from_dict(section(params, "extract", required=False)),
        ValidatedData.load(args.validated),
        ModelConfig.from_dict(section(params, "model")),
        image_size=train_cfg.image_size,
        seed=train_cfg.seed,
        out_dir=args.out,
        tracking=tracking_options(args, params),
        all_params=params,
    )
    print(f"token shards: {result.features_dir} ({result.summary['shards']} shards, "
          f"{result.summary['shards_reused']} reused); initial backbone: {result.backbone_init}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run(argv, build, body)


if __name__ == "__main__":
    raise SystemExit(main())
