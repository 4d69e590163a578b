"""Demo step: the synthetic demo dataset the default pipeline runs on.

A thin wrapper over :func:`mccl_core.data.ensure_demo`, so that ``dvc repro`` (stage ``demo``,
output ``data/demo``) and the Kubeflow pipeline (a ``Dataset`` artifact handed to the later
steps) create exactly the same files from the ``demo`` params section.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mccl_core.config import section
from mccl_core.data import DemoConfig, ensure_demo
from mccl_core.data.demo import default_workers
from mccl_core.steps.contract import StepOutcome, StepSpec
from mccl_core.tracking.steps import TrackingOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoStepConfig:
    """The ``demo`` section: the dataset (:class:`DemoConfig`) plus ``workers`` (a run setting)."""

    demo: DemoConfig
    workers: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DemoStepConfig:
        values = section(params, "demo")
        workers = values.pop("workers", None)
        return cls(DemoConfig.from_dict(values), int(workers or default_workers()))


def run_demo(values: Mapping[str, Any], out_dir: Path) -> Path:
    """Generate (or keep, if already complete for the same config) the demo dataset in ``out_dir``."""
    cfg = DemoStepConfig.from_params({"demo": dict(values)})
    return _generate(cfg, Path(out_dir))


def _generate(cfg: DemoStepConfig, out_dir: Path) -> Path:
    path = ensure_demo(out_dir, cfg.demo, workers=cfg.workers)
    d = cfg.demo
    log.info("demo dataset ready in %s (%d/%d/%d images, %d px)", path, d.n_train, d.n_val, d.n_test, d.image_size)
    return path


def run(inputs: Mapping[str, Path], out_dir: Path, config: DemoStepConfig, tracking: TrackingOptions) -> StepOutcome:
    del inputs, tracking  # no inputs; generating data is not an MLflow run of its own
    path = _generate(config, out_dir)
    d = config.demo
    return StepOutcome(summary=f"demo dataset: {path} ({d.n_train}/{d.n_val}/{d.n_test} images, {d.image_size} px)")


SPEC = StepSpec(
    name="demo",
    description="generate the synthetic demo dataset (the default data)",
    sections=("demo",),
    inputs=(),
    output_kind="Dataset",
    load_config=DemoStepConfig.from_params,
    run=run,
    default_out="data/demo",
)
