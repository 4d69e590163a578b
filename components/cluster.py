"""``mccl step cluster``: CPI prototypes + allocation table + label embeddings (sections ``cluster``, ``model``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components._cli import DEFAULT_VALIDATED, parser, run, tracking_options
from mccl_core.params import section


def build() -> argparse.ArgumentParser:
    p = parser("cluster", __doc__)
    p.add_argument("--validated", type=Path, default=DEFAULT_VALIDATED)
    p.add_argument("--features", type=Path, default=Path("outputs/extract/features"))
    p.add_argument("--out", type=Path, default=Path("outputs/cluster"))
    return p


def body(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from mccl_core.models import ModelConfig
    from mccl_core.steps.cluster import ClusterStepConfig, run_cluster
    from mccl_core.steps.common import ValidatedData

    result = run_cluster(
        ClusterStepConfig.from_dict(section(params, "cluster", required=False)),
        ValidatedData.load(args.validated),
        ModelConfig.from_dict(section(params, "model")),
        args.features,
        args.out,
        tracking_options(args, params),
        all_params=params,
    )
    print(f"prototype bank: {result.prototypes}; allocation: {result.allocation_md}")


def main(argv: list[str] | None = None) -> int:
    return run(argv, build, body)


if __name__ == "__main__":
    raise SystemExit(main())
