"""KFP component for scoring a new batch of images with a trained model (``mccl predict``).

Separate from the training DAG (:mod:`components.steps`): scoring a batch is what users do after
training, on a schedule of their own. A thin adapter over :mod:`mccl_core.serving.batch`, the
code of ``mccl predict``: the model is a registered ``models:/<name>@<alias>`` (or ``runs:/...``)
in the MLflow store at ``mlflow_tracking_uri``, the input a folder or manifest every pod sees, or
an ``s3://`` prefix (credentials from the pod's environment). The ``scores`` artifact is a folder
with ``scores.<format>`` and ``scores.bad.csv`` (unreadable images, never fatal).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from mccl_core.launch.image import pipeline_image

IMAGE = pipeline_image()


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def predict(
    model_uri: str,
    input_uri: str,
    mlflow_tracking_uri: str,
    top_clues: int,
    output_format: str,
    scores: Output[Dataset],
    batch_metrics: Output[Metrics],
) -> NamedTuple("PredictOutputs", [("scored", int), ("bad", int)]):  # type: ignore[valid-type]  # KFP's form
    """Score every image of ``input_uri`` with ``model_uri`` (threshold from the bundle)."""
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from mccl_core.serving.batch import list_inputs, predict_batch, resolve_bundle

    if output_format not in ("csv", "parquet"):
        raise ValueError(f"output_format must be csv or parquet, got {output_format!r}")
    out = Path(scores.path)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mccl-predict-") as tmp:
        bundle = resolve_bundle(model_uri, Path(tmp), mlflow_tracking_uri or None)
        images = list_inputs(input_uri, Path(tmp))
        result = predict_batch(bundle, images, out / f"scores.{output_format}", top_clues=top_clues, progress=False)
    batch_metrics.log_metric("scored", result.scored)
    batch_metrics.log_metric("bad", len(result.bad))
    PredictOutputs = namedtuple("PredictOutputs", ["scored", "bad"])
    return PredictOutputs(result.scored, len(result.bad))
