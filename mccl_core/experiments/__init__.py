"""The paper's open questions as one-command experiments (``mccl experiment <name>``): a variant
runner with a model cache and MLflow parent/child runs (:mod:`.runner`), the experiments
(:mod:`.experiments`) and their CLI (:mod:`.cli`). See ``docs/experiments.md``."""

from mccl_core.experiments.runner import (
    TrainedModel,
    Variant,
    experiment_tracking,
    label_prior_row,
    load_trained,
    official_row,
    resolve_params,
    train_or_reuse,
)

__all__ = [
    "TrainedModel",
    "Variant",
    "experiment_tracking",
    "label_prior_row",
    "load_trained",
    "official_row",
    "resolve_params",
    "train_or_reuse",
]
