"""One KFP component per pipeline step (see :mod:`components.runner` for the plumbing).

Artifacts between steps are the steps' output folders, typed as the step declares
(``StepSpec.output_kind``): ``Dataset`` (demo, validate, extract), ``Model`` (cluster, train),
``Artifact`` (evaluate, register); each component also shows what its step reports (``Metrics``,
``Markdown``, ``HTML``). Parameters are the ``params.yaml`` sections the step reads.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from mccl_core.launch.image import pipeline_image

IMAGE = pipeline_image()


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def demo(demo_params: dict, data: dict, tracking: dict, mlflow_tracking_uri: str, out: Output[Dataset]) -> NamedTuple(
    "DemoOutputs", [("mlflow_run_id", str)]
):
    """Generate the synthetic demo dataset (the default data; nothing when data.source is another)."""
    from collections import namedtuple

    from components.runner import run_kfp_step

    outcome = run_kfp_step("demo", {"demo": demo_params, "data": data, "tracking": tracking}, {}, out.path,
                           mlflow_tracking_uri)  # fmt: skip
    return namedtuple("DemoOutputs", ["mlflow_run_id"])(outcome.mlflow_run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    data: dict,
    validate_params: dict,
    tracking: dict,
    mlflow_tracking_uri: str,
    demo: Input[Dataset],
    out: Output[Dataset],
    summary: Output[Markdown],
    validation_metrics: Output[Metrics],
) -> NamedTuple("ValidateOutputs", [("mlflow_run_id", str)]):
    """Great Expectations over manifest + images; stops on bad records (or quarantines by policy)."""
    from collections import namedtuple

    from components.runner import run_kfp_step

    outcome = run_kfp_step("validate", {"data": data, "validate": validate_params, "tracking": tracking},
                           {"demo": demo}, out.path, mlflow_tracking_uri, metrics=validation_metrics,
                           markdown_path=summary.path)  # fmt: skip
    return namedtuple("ValidateOutputs", ["mlflow_run_id"])(outcome.mlflow_run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract(
    extract_params: dict,
    model: dict,
    train_params: dict,
    tracking: dict,
    mlflow_tracking_uri: str,
    validate: Input[Dataset],
    demo: Input[Dataset],
    out: Output[Dataset],
) -> NamedTuple("ExtractOutputs", [("mlflow_run_id", str)]):
    """Initial-backbone patch tokens of the training images -> Parquet shards (+ the initial backbone)."""
    from collections import namedtuple

    from components.runner import run_kfp_step

    outcome = run_kfp_step("extract", {"extract": extract_params, "model": model, "train": train_params, "tracking": tracking},
                           {"validate": validate, "demo": demo}, out.path, mlflow_tracking_uri)  # fmt: skip
    return namedtuple("ExtractOutputs", ["mlflow_run_id"])(outcome.mlflow_run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def cluster(
    cluster_params: dict,
    model: dict,
    tracking: dict,
    mlflow_tracking_uri: str,
    validate: Input[Dataset],
    extract: Input[Dataset],
    out: Output[Model],
    allocation: Output[Markdown],
) -> NamedTuple("ClusterOutputs", [("mlflow_run_id", str)]):
    """CPI prototype bank + allocation table + label-embedding cache."""
    from collections import namedtuple

    from components.runner import run_kfp_step

    outcome = run_kfp_step("cluster", {"cluster": cluster_params, "model": model, "tracking": tracking},
                           {"validate": validate, "extract": extract}, out.path, mlflow_tracking_uri,
                           markdown_path=allocation.path)  # fmt: skip
    return namedtuple("ClusterOutputs", ["mlflow_run_id"])(outcome.mlflow_run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    model: dict,
    train_params: dict,
    launch: dict,
    tracking: dict,
    mlflow_tracking_uri: str,
    demo_run_id: str,
    validate_run_id: str,
    extract_run_id: str,
    cluster_run_id: str,
    validate: Input[Dataset],
    extract: Input[Dataset],
    cluster: Input[Model],
    demo: Input[Dataset],
    out: Output[Model],
    training_metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("parent_run_id", str)]):
    """The train step (torchrun here, or a PyTorchJob with launch.backend: pytorchjob); starts the MLflow parent run."""
    from collections import namedtuple

    from components.runner import run_kfp_step

    outcome = run_kfp_step("train", {"model": model, "train": train_params, "launch": launch, "tracking": tracking},
                           {"validate": validate, "extract": extract, "cluster": cluster, "demo": demo}, out.path,
                           mlflow_tracking_uri, start_parent=True,
                           adopt_run_ids=(demo_run_id, validate_run_id, extract_run_id, cluster_run_id), metrics=training_metrics)  # fmt: skip
    return namedtuple("TrainOutputs", ["parent_run_id"])(outcome.parent_run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    evaluate_params: dict,
    tracking: dict,
    mlflow_tracking_uri: str,
    parent_run_id: str,
    validate: Input[Dataset],
    train: Input[Model],
    demo: Input[Dataset],
    out: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Official protocol (val-tuned threshold, test F1/mAP) vs the label prior; plots in ``report``."""
    from components.runner import run_kfp_step

    run_kfp_step("evaluate", {"evaluate": evaluate_params, "tracking": tracking},
                 {"validate": validate, "train": train, "demo": demo}, out.path, mlflow_tracking_uri,
                 parent_run_id=parent_run_id, metrics=metrics, html_path=report.path)  # fmt: skip


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def explain(
    explain_params: dict,
    tracking: dict,
    mlflow_tracking_uri: str,
    parent_run_id: str,
    validate: Input[Dataset],
    train: Input[Model],
    evaluate: Input[Artifact],
    demo: Input[Dataset],
    out: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Prototype gallery, example explanations and the pointing game (demo clue boxes)."""
    from components.runner import run_kfp_step

    run_kfp_step("explain", {"explain": explain_params, "tracking": tracking},
                 {"validate": validate, "train": train, "evaluate": evaluate, "demo": demo}, out.path,
                 mlflow_tracking_uri, parent_run_id=parent_run_id, metrics=metrics, markdown_path=summary.path)  # fmt: skip


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    register_params: dict,
    tracking: dict,
    mlflow_tracking_uri: str,
    parent_run_id: str,
    validate: Input[Dataset],
    train: Input[Model],
    evaluate: Input[Artifact],
    out: Output[Artifact],
    decision: Output[Markdown],
) -> NamedTuple("RegisterOutputs", [("version", str), ("promoted", bool)]):
    """MLflow registry; moves the champion alias only when the validation macro-F1 improves."""
    from collections import namedtuple

    from components.runner import run_kfp_step

    outcome = run_kfp_step("register", {"register": register_params, "tracking": tracking},
                           {"validate": validate, "train": train, "evaluate": evaluate}, out.path,
                           mlflow_tracking_uri, parent_run_id=parent_run_id, markdown_path=decision.path)  # fmt: skip
    return namedtuple("RegisterOutputs", ["version", "promoted"])(
        str(int(outcome.metrics["version"])), bool(outcome.metrics["promoted"])
    )
