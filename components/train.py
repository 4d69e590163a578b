"""``mccl step train``: train under torchrun, resuming from the last checkpoint (sections ``model``, ``train``, ``launch``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components._cli import DEFAULT_VALIDATED, parser, run, tracking_options
from mccl_core.params import section


def build() -> argparse.ArgumentParser:
    p = parser("train", __doc__)
    p.add_argument("--validated", type=Path, default=DEFAULT_VALIDATED)
    p.add_argument("--prototypes", type=Path, default=Path("outputs/cluster/prototypes.safetensors"))
    p.add_argument("--backbone-init", type=Path, default=Path("outputs/extract/backbone_init.pt"))
    p.add_argument("--label-embeddings", type=Path, default=Path("outputs/cluster/label_embeddings.npz"))
    p.add_argument("--out", type=Path, default=Path("outputs/train"))
    p.add_argument("--nproc-per-node", type=int, help="override launch.nproc_per_node")
    return p


def body(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from mccl_core.models import ModelConfig
    from mccl_core.steps.common import ValidatedData
    from mccl_core.steps.train import LaunchConfig, TrainInputsPaths, run_train
    from mccl_core.training.config import TrainConfig

    launch_values = dict(section(params, "launch", required=False))
    if args.nproc_per_node:
        launch_values["nproc_per_node"] = args.nproc_per_node
    result = run_train(
        ModelConfig.from_dict(section(params, "model")),
        TrainConfig.from_dict(section(params, "train")),
        LaunchConfig.from_dict(launch_values),
        ValidatedData.load(args.validated),
        TrainInputsPaths(args.prototypes, args.backbone_init, args.label_embeddings),
        args.out,
        tracking_options(args, params),
        all_params=params,
    )
    print(f"model bundle: {result.model_dir} ({len(result.history)} epochs, resumed: {result.resumed})")


def main(argv: list[str] | None = None) -> int:
    return run(argv, build, body)


if __name__ == "__main__":
    raise SystemExit(main())
