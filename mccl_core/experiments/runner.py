"""Run model variants at equal budget, evaluate them with the official protocol, cache the
trained models and log everything to MLflow under one parent run.

A :class:`Variant` is a name plus overrides of the params mapping (nested mappings or dotted
keys, e.g. ``{"model.pki.stage_gate": "softmax"}``). Every variant of one experiment trains with
the same ``data``, ``train`` (seed, epochs, batch, lr, image size) and ``extract`` sections:
variant overrides may only touch ``model`` (equal budget); ``--set`` values apply to all.

Caching: the trained model of a variant lives in ``<models_dir>/<fingerprint>/`` where the
fingerprint hashes the *resolved* data, model, train and extract configs (every default filled
in, output paths left out). A variant whose fingerprint already has a finished model there is
not trained again - the log says ``reusing cached model`` - so the default MCCL model is
trained once for all experiments that share ``models_dir``.

Tracking: with ``tracking.enabled`` (params) and without ``--no-tracking``, the experiment opens
one parent run ``experiment:<name>`` in the params' MLflow experiment and one nested run per
variant holding the variant's resolved params (dotted names), its fingerprint and its metrics
(and the per-epoch curves), so the MLflow UI's compare view lines the variants up. Without
tracking, mlflow is never imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mccl_core.config import ConfigError, expand_dotted, flatten, from_dict, merge, section, to_plain

log = logging.getLogger(__name__)

#: Sections a variant may not change (equal budget across the variants of one experiment).
BUDGET_SECTIONS = ("data", "train", "extract")
#: Metric columns every evaluated row holds.
OFFICIAL_KEYS = ("val_macro_f1", "threshold", "test_macro_f1", "test_micro_f1", "test_map")
DONE_MARKER = "trained.json"


@dataclass(frozen=True)
class Variant:
    """A named set of params overrides (nested or dotted keys) over the experiment's params."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


# --------------------------------------------------------------------------------------------
# Params handling
# --------------------------------------------------------------------------------------------


def resolve_params(params: Mapping[str, Any], variant: Variant) -> dict[str, Any]:
    """The params of ``variant``: its overrides merged over ``params``; refuses budget changes."""
    overrides = expand_dotted(variant.overrides)
    touched = sorted(set(overrides) & set(BUDGET_SECTIONS))
    if touched:
        raise ConfigError(f"variant {variant.name!r} overrides {touched}: variants may only change the model "
                          "(equal budget); use --set to change data/train for every variant")  # fmt: skip
    return merge(params, overrides)


@dataclass
class ResolvedConfigs:
    data: Any  # DataConfig
    model: Any  # ModelConfig
    train: Any  # TrainConfig
    extract: Any  # ExtractConfig

    def fingerprint(self, project_dir: Path | None = None) -> str:
        """sha256 (16 hex) of the train step's :func:`~mccl_core.training.fingerprint.training_fingerprint`:
        the resolved model and train configs (run-only fields left out), the data's *contents*
        (DVC hash or label files, as the validate step tags them), the training code, and the
        data and extract configs. An edit to the code or the labels trains a new model."""
        from mccl_core.hashing import sha256_of
        from mccl_core.steps.validate import data_hash_of
        from mccl_core.training.fingerprint import training_fingerprint
        from mccl_core.validation.schema import SPLITS

        data_hash = data_hash_of(self.data, list(SPLITS), Path(project_dir or Path.cwd()))
        payload = training_fingerprint(self.model, self.train, data_hash, data_config=to_plain(self.data),
                                       extract=to_plain(self.extract))  # fmt: skip
        return sha256_of(payload)[:16]


def resolve_configs(resolved: Mapping[str, Any], output_dir: Path | None = None) -> ResolvedConfigs:
    from mccl_core.data import DataConfig
    from mccl_core.models import ModelConfig
    from mccl_core.steps.extract import ExtractStepConfig
    from mccl_core.training.config import TrainConfig

    train_values = dict(section(resolved, "train"))
    train_values.update(resume=False)
    if output_dir is not None:
        train_values["output_dir"] = str(output_dir)
    extract = from_dict(ExtractStepConfig, section(resolved, "extract", required=False), "extract").extract_config()
    return ResolvedConfigs(
        data=DataConfig.from_dict(section(resolved, "data")),
        model=ModelConfig.from_dict(section(resolved, "model")),
        train=TrainConfig.from_dict(train_values),
        extract=extract,
    )


# --------------------------------------------------------------------------------------------
# Training with a cache, evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class TrainedModel:
    fingerprint: str
    model_path: Path
    history: list[dict[str, float]]
    #: The last epoch's learned stage-gate weights (empty without a gate).
    stage_gate: dict[str, float]
    train_seconds: float
    cached: bool


def label_embedding_cache(cache_dir: Path, model_cfg: Any, class_names: list[str]) -> Path:
    """Shared cache file of the label embeddings of ``pki.label_text`` mode for these classes."""
    digest = hashlib.sha256("\n".join(class_names).encode()).hexdigest()[:8]
    return cache_dir / f"label_embeddings_{model_cfg.pki.label_text}_{digest}.npz"


def train_or_reuse(resolved: Mapping[str, Any], models_dir: Path, cache_dir: Path, name: str = "") -> TrainedModel:
    """Train the model of ``resolved`` params into ``models_dir/<fingerprint>``, or reuse it."""
    configs = resolve_configs(resolved)
    fingerprint = configs.fingerprint()
    out = Path(models_dir) / fingerprint
    marker = out / DONE_MARKER
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        model_path = out / record["model_path"]
        if model_path.is_dir():
            log.info("variant %s: reusing cached model %s (fingerprint %s)", name, model_path, fingerprint)
            return TrainedModel(fingerprint, model_path, record["history"], record["stage_gate"],
                                float(record["train_seconds"]), cached=True)  # fmt: skip
    from mccl_core.data import load_split
    from mccl_core.training.loop import train
    from mccl_core.training.run import TrainArtifacts, prepare_inputs

    configs = resolve_configs(resolved, output_dir=out)
    class_names = list(load_split(configs.data, "train").class_names)
    artifacts = TrainArtifacts(label_embeddings=label_embedding_cache(Path(cache_dir), configs.model, class_names))
    log.info("variant %s: training (fingerprint %s) into %s", name, fingerprint, out)
    start = time.perf_counter()
    inputs = prepare_inputs(configs.data, configs.model, configs.train, artifacts, extract_cfg=configs.extract)
    result = train(configs.model, configs.train, inputs)
    seconds = time.perf_counter() - start
    history = [r.metrics() for r in result.history]
    gate = {k: float(v) for k, v in (result.history[-1].stage_gate if result.history else {}).items()}
    model_path = Path(result.model_path)
    record = {"model_path": str(model_path.resolve().relative_to(out.resolve())), "history": history,
              "stage_gate": gate, "train_seconds": seconds, "variant": name}  # fmt: skip
    marker.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return TrainedModel(fingerprint, model_path, history, gate, seconds, cached=False)


def official_row(truth_val: Any, scores_val: Any, truth_test: Any, scores_test: Any) -> dict[str, float]:
    """Official protocol: one threshold tuned on val, applied to test."""
    from mccl_core.metrics import official_protocol

    official = official_protocol(truth_val, scores_val, truth_test, scores_test)
    return {
        "val_macro_f1": float(official.selection.tuning_macro_f1),
        "threshold": float(official.threshold),
        "test_macro_f1": float(official.report.macro_f1),
        "test_micro_f1": float(official.report.micro_f1),
        "test_map": float(official.average_precision.map),
    }


def label_prior_scores(params: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``split -> (truth, scores)`` of the label prior (training label frequencies, no pixels) on val and test."""
    from mccl_core.data import DataConfig, load_split
    from mccl_core.metrics.baselines import LabelPriorPredictor
    from mccl_core.validation.schema import EVAL_SPLITS, SPLITS

    data_cfg = DataConfig.from_dict(section(params, "data"))
    truth = {s: load_split(data_cfg, s).label_matrix() for s in SPLITS}
    prior = LabelPriorPredictor().fit(truth["train"])
    return {s: (truth[s], prior.predict(len(truth[s]))) for s in EVAL_SPLITS}


def label_prior_row(params: Mapping[str, Any], scores: Mapping[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """The label prior under the official protocol (``scores``: from :func:`label_prior_scores`)."""
    scores = scores or label_prior_scores(params)
    row: dict[str, Any] = {"variant": "label_prior", "loss": "-"}
    row.update(official_row(*scores["val"], *scores["test"]))
    return row


@dataclass
class LoadedModel:
    model: Any
    meta: Any
    device: Any
    data_cfg: Any

    def scores(self, split: str, transform: Callable[[Any], Any] | None = None) -> tuple[Any, Any, Any]:
        """``(truth, scores, dataset)`` of ``split`` with ``transform`` (default: the bundle's eval transform)."""
        from mccl_core.data import load_split
        from mccl_core.data.transforms import eval_transform_for
        from mccl_core.training.distributed import DistContext
        from mccl_core.training.loop import predict_scores

        dataset = load_split(self.data_cfg, split, transform=transform or eval_transform_for(self.meta))
        ctx = DistContext(rank=0, world_size=1, local_rank=0, device=self.device)
        return dataset.label_matrix(), predict_scores(self.model, dataset, ctx, 64, progress=False), dataset


def load_trained(trained: TrainedModel, resolved: Mapping[str, Any]) -> LoadedModel:
    from mccl_core.models.bundle import load_bundle
    from mccl_core.training.distributed import resolve_device

    configs = resolve_configs(resolved)
    device = resolve_device(configs.train.device)
    model, meta = load_bundle(trained.model_path, device)
    return LoadedModel(model, meta, device, configs.data)


# --------------------------------------------------------------------------------------------
# Tracking: one parent run per experiment, a nested run per variant
# --------------------------------------------------------------------------------------------


def numeric_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k.replace("/", "_"): float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}  # fmt: skip


class ExperimentTracking:
    """The experiment's MLflow parent run (``None`` tracker: tracking off, mlflow never imported)."""

    def __init__(self, tracker: Any, parent: Any) -> None:
        self.tracker = tracker
        self.parent = parent

    @property
    def enabled(self) -> bool:
        return self.tracker is not None

    @property
    def parent_run_id(self) -> str | None:
        return getattr(self.parent, "run_id", None)

    def log_variant(self, variant: Variant, resolved: Mapping[str, Any], trained: TrainedModel | None,
                    metrics: Mapping[str, Any], tags: Mapping[str, Any] | None = None,
                    seed: int | None = None) -> str | None:  # fmt: skip
        """A nested run for ``variant`` (and ``seed``): resolved params, fingerprint, metrics,
        per-epoch curves."""
        if self.tracker is None:
            return None
        run_tags = {"mccl.experiment.variant": variant.name, **(tags or {})}
        name = variant.name
        if seed is not None:
            run_tags["mccl.experiment.seed"] = str(seed)
            name = f"{variant.name} seed {seed}"
        with self.tracker.step_run(name, parent=self.parent, tags=run_tags) as run:
            params = {k: v for k, v in flatten(dict(resolved)).items() if not k.startswith("tracking.")}
            params["variant"] = variant.name
            params["variant.overrides"] = json.dumps(to_plain(dict(variant.overrides)), sort_keys=True, default=str)
            if trained is not None:
                params["model.fingerprint"] = trained.fingerprint
                params["model.cached"] = trained.cached
            self.tracker.log_params(params, run=run)
            self.tracker.log_metrics(numeric_metrics(metrics), run=run)
            for epoch, record in enumerate(trained.history if trained is not None else []):
                self.tracker.log_metrics(numeric_metrics(record), step=epoch, run=run)
            return run.run_id

    def log_summary(self, rows: list[Mapping[str, Any]]) -> None:
        """The per-variant summary (mean, std, paired difference) as parent-run metrics named
        ``<variant>.<metric>`` (``<group>.<variant>.<metric>`` when grouped)."""
        if self.tracker is None:
            return
        metrics: dict[str, float] = {}
        for row in rows:
            prefix = ".".join(str(row[k]) for k in ("group", "variant") if row.get(k))
            prefix = re.sub(r"[^0-9A-Za-z_\-. /]", "_", prefix)  # MLflow's metric-name alphabet
            metrics.update({f"{prefix}.{k}": v for k, v in numeric_metrics(row).items() if k != "n_seeds"})
        self.tracker.log_metrics(metrics, run=self.parent)

    def log_artifacts(self, paths: list[Path]) -> None:
        if self.tracker is None:
            return
        for path in paths:
            if Path(path).is_file():
                self.tracker.log_artifact(Path(path), None, run=self.parent)


@contextmanager
def experiment_tracking(name: str, params: Mapping[str, Any], enabled: bool = True,
                        project_dir: Path | None = None) -> Iterator[ExperimentTracking]:  # fmt: skip
    """Open the parent run of experiment ``name`` (params' ``tracking`` section says where)."""
    from mccl_core.tracking.steps import TrackingOptions

    options = TrackingOptions.from_params(params, enabled=enabled, project_dir=project_dir or Path.cwd())
    if not options.enabled:
        yield ExperimentTracking(None, None)
        return
    from mccl_core.tracking.tracker import ResilientTracker

    with ResilientTracker(options.tracker_config()) as tracker:
        parent = tracker.start_parent_run(f"experiment:{name}", tags={"mccl.experiment": name})
        tracker.log_params({k: v for k, v in flatten(dict(params)).items() if not k.startswith("tracking.")},
                           run=parent)  # fmt: skip
        tracker.set_provenance_tags(None, run=parent)
        log.info("MLflow parent run %s (experiment %r)", parent.run_id, options.experiment)
        status: Literal["FINISHED", "FAILED"] = "FAILED"
        try:
            yield ExperimentTracking(tracker, parent)
            status = "FINISHED"
        finally:
            tracker.end_run(parent, status=status)
            if tracker.not_logged:
                log.warning("experiment %s: %s", name, tracker.not_logged.describe())
