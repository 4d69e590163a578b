"""``mccl train``: train from a params.yaml (sections ``data``, ``model``, ``train``).

One process::

    mccl train --params params.yaml

Several processes / GPUs (DDP; torchrun sets RANK/WORLD_SIZE)::

    torchrun --nproc_per_node 4 -m mccl_core.training.cli --params params.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch.distributed as dist

from mccl_core.config import load_params, section
from mccl_core.data import DataConfig
from mccl_core.models import ModelConfig
from mccl_core.training.checkpoint import TRAINER_ERROR_PREFIX, CheckpointError, UnsafeCheckpointError
from mccl_core.training.config import TrainConfig
from mccl_core.training.distributed import init_distributed, shutdown_distributed
from mccl_core.training.lock import TrainerBusyError, is_global_rank_zero, trainer_lock
from mccl_core.training.loop import train
from mccl_core.training.run import TrainArtifacts, prepare_inputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mccl train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (sections data, model, train)"
    )
    parser.add_argument("--output-dir", type=Path, help="override train.output_dir")
    parser.add_argument("--prototypes", type=Path, help="CPI prototype bank (.safetensors) from the cluster step")
    parser.add_argument("--backbone-init", type=Path, help="backbone state dict the prototypes were computed with")
    parser.add_argument("--label-embeddings", type=Path, help="label embedding cache (.npz)")
    parser.add_argument(
        "--restart",
        "--no-resume",
        dest="restart",
        action="store_true",
        help="train from scratch: existing checkpoints are moved aside (*.discarded-<time>), never deleted",
    )
    parser.add_argument("--summary-json", type=Path, help="write the final epoch's metrics here")
    parser.add_argument(
        "--mlflow-run-id",
        help="log each epoch's metrics to this MLflow run (rank 0; store: $MLFLOW_TRACKING_URI or the embedded one)",
    )
    return parser


def _epoch_logger(run_id: str):
    """(tracker, on_epoch_end) logging EpochRecord.metrics() at step = epoch; never fails training."""
    from mccl_core.tracking import ResilientTracker

    tracker = ResilientTracker()
    run = tracker.resume_parent_run(run_id=run_id)
    return tracker, lambda record: tracker.log_metrics(record.metrics(), step=record.epoch, run=run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (TrainerBusyError, CheckpointError, UnsafeCheckpointError) as error:
        # Conditions a person resolves (the message says how), not bugs: one line, no traceback.
        print(f"{TRAINER_ERROR_PREFIX}{error}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    data_cfg = DataConfig.from_dict(section(params, "data"))
    model_cfg = ModelConfig.from_dict(section(params, "model"))
    train_cfg = TrainConfig.from_dict(section(params, "train"))
    if args.output_dir is not None:
        train_cfg.output_dir = args.output_dir
    if args.restart:
        train_cfg.resume = False

    # Before any work (and before the rendezvous): a second trainer on the folder stops here.
    with trainer_lock(train_cfg.output_dir, is_main=is_global_rank_zero()):
        return _train(args, data_cfg, model_cfg, train_cfg)


def _train(args: argparse.Namespace, data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig) -> int:
    ctx = init_distributed(train_cfg.device)
    logging.basicConfig(
        level=logging.INFO if ctx.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {ctx.rank}] %(levelname)s %(name)s: %(message)s",
    )
    artifacts = TrainArtifacts(args.prototypes, args.backbone_init, args.label_embeddings)
    # Rank 0 first: it fills the label-embedding cache the other ranks then read.
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    inputs = prepare_inputs(data_cfg, model_cfg, train_cfg, artifacts)
    if ctx.enabled and ctx.is_main:
        dist.barrier()
    tracker, on_epoch_end = _epoch_logger(args.mlflow_run_id) if args.mlflow_run_id and ctx.is_main else (None, None)
    try:
        result = train(model_cfg, train_cfg, inputs, ctx=ctx, on_epoch_end=on_epoch_end)
    finally:
        shutdown_distributed()
        if tracker is not None:
            tracker.close()
    if ctx.is_main:
        final = result.history[-1].metrics() if result.history else {}
        if args.summary_json:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(json.dumps(final, indent=2))
        print(f"model bundle: {result.model_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
