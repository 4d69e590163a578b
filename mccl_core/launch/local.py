"""The training processes on this machine: ``torchrun`` (or one plain process), supervised.

They run ``python -m mccl_core.training.cli`` in their own process group, which dies with the
caller (:mod:`mccl_core.launch.supervise`), and inherit the caller's trainer lock
(:mod:`mccl_core.training.lock`): a killed ``dvc repro`` leaves no trainer behind, and no second
trainer can start on the same folder.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from mccl_core.launch.config import LaunchConfig
from mccl_core.launch.supervise import run_streaming
from mccl_core.training.checkpoint import TRAINER_ERROR_PREFIX
from mccl_core.training.lock import handover_env

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """A training process exited with an error (the message says whether re-running resumes)."""


def torchrun_command(launch: LaunchConfig, train_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m mccl_core.training.cli <train_args>``.

    One process on one node runs the loop directly (``python -m mccl_core.training.cli``): the same
    code path without the elastic agent, whose workers live in their own session and would survive
    a SIGKILL of the pipeline (and race the re-run for the checkpoint).
    """
    if launch.nproc_per_node == 1 and launch.nnodes == 1:
        return [sys.executable, "-m", "mccl_core.training.cli", *train_args]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.nproc_per_node)]
    if launch.nnodes == 1:
        command.append("--standalone")
    elif launch.rdzv_backend == "static":
        host, _, port = launch.rdzv_endpoint.rpartition(":")
        command += ["--nnodes", str(launch.nnodes), "--node_rank", str(launch.node_rank),
                    "--master_addr", host, "--master_port", port]  # fmt: skip
    else:
        command += ["--nnodes", str(launch.nnodes), "--node_rank", str(launch.node_rank),
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", launch.rdzv_endpoint]  # fmt: skip
    return command + ["-m", "mccl_core.training.cli", *train_args]


def run_local_training(
    launch: LaunchConfig,
    train_args: list[str],
    last_checkpoint: Path,
    mlflow_run_id: str | None = None,
    tracking_uri: str = "",
    lock_fd: int | None = None,
) -> list[str]:
    """Run the training processes to the end; returns their output lines.

    Raises :class:`TrainingFailed` (see :func:`training_failure`) when they fail.
    """
    env = dict(os.environ)
    env.update(launch.env or {})
    if mlflow_run_id:
        train_args = [*train_args, "--mlflow-run-id", mlflow_run_id]
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    command = torchrun_command(launch, train_args)
    log.info("launching: %s", " ".join(command))
    env.setdefault("TQDM_MININTERVAL", "5")  # progress lines in logs, not a flood
    if lock_fd is not None:  # the trainer holds the caller's lock instead of locking against it
        env.update(handover_env(lock_fd))
    returncode, output = run_streaming(command, env, pass_fds=(lock_fd,) if lock_fd is not None else ())
    if returncode != 0:
        raise training_failure(returncode, output, last_checkpoint)
    return output


def training_failure(returncode: int, output: list[str], last: Path) -> TrainingFailed:
    """The error for a failed training process.

    When the trainer reported an error a person must resolve (its one ``mccl train: ...`` line: a
    refused or unreadable checkpoint, a busy folder), that line is the error - re-running would
    hit it again, so no "re-run resumes" hint and no second copy of the output. Otherwise (a
    crash) the output's tail, and re-running resumes from ``last`` if an epoch finished.
    """
    reported = [line for line in output if line.startswith(TRAINER_ERROR_PREFIX)]
    if reported:
        return TrainingFailed(f"training stopped (exit code {returncode}): {reported[-1][len(TRAINER_ERROR_PREFIX) :]}")
    return TrainingFailed(
        f"training failed (exit code {returncode}); re-running the step resumes from {last} if an epoch "
        "finished. Last output:\n" + "\n".join(output[-40:])
    )
