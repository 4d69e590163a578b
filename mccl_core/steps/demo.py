"""Demo step: the synthetic demo dataset the default pipeline runs on.

A thin wrapper over :func:`mccl_core.data.ensure_demo`, so that ``dvc repro`` (stage ``demo``,
output ``data/demo``) and the Kubeflow pipeline (a ``Dataset`` artifact handed to the later
steps) create exactly the same files from the ``demo`` params section.

With another ``data.source`` (your own dataset) nothing reads the demo, so the step renders
nothing: it leaves a one-line note in its output folder instead of 4,000 images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mccl_core.config import from_dict
from mccl_core.data import DemoConfig, ensure_demo
from mccl_core.data.demo import default_workers
from mccl_core.steps.contract import StepOutcome, StepSpec
from mccl_core.steps.layout import NOT_USED_FILE
from mccl_core.tracking.steps import TrackingOptions, tracked_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoStepConfig:
    """The ``demo`` section: the dataset (:class:`DemoConfig`) plus ``workers`` (a run setting),
    and ``data.source`` (the demo is rendered only when the pipeline uses it)."""

    demo: DemoConfig
    workers: int
    data_source: str = "demo"

    @classmethod
    def from_sections(cls, sections: Mapping[str, Mapping[str, Any]]) -> DemoStepConfig:
        """The step loader's hook (:meth:`~mccl_core.steps.contract.StepSpec.load_config`):
        ``demo.workers`` is a run setting, not part of the dataset's config, and only
        ``data.source`` of the data section matters here."""
        values = dict(sections["demo"])
        workers = values.pop("workers", None)
        source = str((sections.get("data") or {}).get("source", "demo"))
        return cls(from_dict(DemoConfig, values, "demo"), int(workers or default_workers()), source)


def run_demo(values: Mapping[str, Any], out_dir: Path) -> Path:
    """Generate (or keep, if already complete for the same config) the demo dataset in ``out_dir``."""
    cfg = DemoStepConfig.from_sections({"demo": values})
    return _generate(cfg, Path(out_dir))


def _generate(cfg: DemoStepConfig, out_dir: Path) -> Path:
    (out_dir / NOT_USED_FILE).unlink(missing_ok=True)  # the pipeline switched back to the demo
    path = ensure_demo(out_dir, cfg.demo, workers=cfg.workers)
    d = cfg.demo
    log.info("demo dataset ready in %s (%d/%d/%d images, %d px)", path, d.n_train, d.n_val, d.n_test, d.image_size)
    return path


def _skip(source: str, out_dir: Path) -> Path:
    """An output folder that says why it is empty (DVC and Kubeflow both need the folder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [p for p in out_dir.iterdir() if p.name != NOT_USED_FILE]:  # a demo from before the switch
        import shutil

        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    note = out_dir / NOT_USED_FILE
    note.write_text(f"data.source is {source!r}: the pipeline does not use the demo dataset, so none was rendered.\n",
                    encoding="utf-8")  # fmt: skip
    return note


def run(inputs: Mapping[str, Path], out_dir: Path, config: DemoStepConfig, tracking: TrackingOptions) -> StepOutcome:
    del inputs  # the first step: nothing upstream
    d = config.demo
    params = {"demo": {**d.to_dict(), "workers": config.workers}, "data": {"source": config.data_source}}
    with tracked_step("demo", tracking, params) as run:
        if config.data_source != "demo":
            _skip(config.data_source, Path(out_dir))
            run.set_tags({"mccl.demo.rendered": "false"})
            return StepOutcome(summary=f"demo dataset not rendered (data.source is {config.data_source!r})",
                               mlflow_run_id=run.run_id or "")  # fmt: skip
        path = _generate(config, out_dir)
        images = {"demo_train_images": d.n_train, "demo_val_images": d.n_val, "demo_test_images": d.n_test}
        run.log_metrics({k: float(v) for k, v in images.items()})
        return StepOutcome(summary=f"demo dataset: {path} ({d.n_train}/{d.n_val}/{d.n_test} images, {d.image_size} px)",
                           mlflow_run_id=run.run_id or "")  # fmt: skip


SPEC = StepSpec(
    name="demo",
    description="generate the synthetic demo dataset (the default data)",
    sections=("demo", "data"),
    config=DemoStepConfig,
    optional_sections=("data",),
    inputs=(),
    output_kind="Dataset",
    run=run,
    default_out="data/demo",
)
