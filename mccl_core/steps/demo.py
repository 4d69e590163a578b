"""Generator stage: the synthetic demo dataset the default pipeline runs on.

A thin wrapper over :func:`mccl_core.data.ensure_demo` so that DVC (stage ``demo``) and the
Kubeflow validate component create exactly the same files from the ``demo`` params section.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mccl_core.data import DemoConfig, ensure_demo
from mccl_core.data.demo import default_workers

log = logging.getLogger(__name__)


def demo_config(section: dict[str, Any]) -> DemoConfig:
    """``DemoConfig`` from the ``demo`` params section (``workers`` is a run setting, not data)."""
    values = {k: v for k, v in section.items() if k != "workers"}
    return DemoConfig.from_dict(values)


def run_demo(section: dict[str, Any], out_dir: Path) -> Path:
    """Generate (or keep, if already complete for the same config) the demo dataset in ``out_dir``."""
    workers = int(section.get("workers") or default_workers())
    cfg = demo_config(section)
    path = ensure_demo(Path(out_dir), cfg, workers=workers)
    log.info("demo dataset ready in %s (%d/%d/%d images, %d px)", path, cfg.n_train, cfg.n_val, cfg.n_test, cfg.image_size)
    return path
