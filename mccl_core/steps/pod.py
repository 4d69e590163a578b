"""Entry point of every training pod (TrainJob or PyTorchJob): ``python -m mccl_core.steps.pod``.

The pod's program runs the train step itself (so it lives with the steps); what it needs around
the step - the launch section from the operator's environment, the checkpoint uploader, the
output upload - is :mod:`mccl_core.launch.node`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from mccl_core.launch.node import (
    CHECKPOINTS,
    OPERATOR_RANK_ENV,
    PARAMS_FILE,
    WORKSPACE,
    CheckpointUploader,
    launch_from_env,
    upload_outputs,
)

log = logging.getLogger(__name__)


def node_main(argv: list[str] | None = None) -> int:
    """Entry point of every training pod: download the staged inputs, run the train step."""
    import yaml

    from mccl_core.launch.staging import download_prefix
    from mccl_core.steps.contract import run_step
    from mccl_core.steps.errors import StepError
    from mccl_core.tracking.steps import TrackingOptions

    parser = argparse.ArgumentParser(prog="python -m mccl_core.steps.pod", description=node_main.__doc__)
    parser.add_argument("--staging-uri", required=True, help="the run's staging prefix (inputs/, outputs/)")
    parser.add_argument("--workspace", type=Path, default=Path(WORKSPACE))
    parser.add_argument("--upload-interval", type=float, default=30.0,
                        help="seconds between checkpoint uploads of node 0 (default 30)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Kubernetes stops a pod with SIGTERM: exit through the finally blocks (training group stopped,
    # last checkpoint uploaded) instead of dying on the spot.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    staging, workspace = args.staging_uri.rstrip("/"), args.workspace
    inputs_dir, out_dir = workspace / "inputs", workspace / "outputs"
    launch = launch_from_env()
    for name in OPERATOR_RANK_ENV:
        os.environ.pop(name, None)
    download_prefix(f"{staging}/inputs", inputs_dir)
    # A restarted pod resumes from node 0's last upload (the step's guard checks it is this run's).
    download_prefix(f"{staging}/outputs/{CHECKPOINTS}", out_dir / CHECKPOINTS)
    params = yaml.safe_load((inputs_dir / PARAMS_FILE).read_text())
    params["launch"] = {**launch, "env": (params.get("launch") or {}).get("env")}
    inputs = {
        name: inputs_dir / name for name in ("validate", "extract", "cluster", "demo") if (inputs_dir / name).is_dir()
    }
    is_node0 = launch["node_rank"] == 0
    uploader = (
        CheckpointUploader(out_dir / CHECKPOINTS, f"{staging}/outputs/{CHECKPOINTS}", args.upload_interval).start()
        if is_node0
        else None
    )
    try:
        # MLflow: the launcher owns the train run and back-fills the epochs from history.json.
        run_step("train", params, inputs, out_dir, TrackingOptions(enabled=False, project_dir=workspace))
    except (StepError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    finally:
        if uploader is not None:
            try:
                uploader.stop(final_sync=True)
            except Exception as error:  # noqa: BLE001 - do not hide the training's own outcome
                log.warning("final checkpoint upload failed: %s", error)
    if is_node0:
        upload_outputs(out_dir, f"{staging}/outputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(node_main())
