"""The six pipeline steps as KFP v2 lightweight Python components.

Each component only moves KFP artifacts/parameters into :mod:`pipeline.runtime`, which calls the
same :mod:`mccl_core.steps` functions ``dvc repro`` runs; the image (:mod:`pipeline.image`) has the
project installed, so nothing is pip-installed at run time. Artifacts between steps are typed:
``Dataset`` (validated data, token shards), ``Model`` (initial backbone, CPI prototypes, trained
bundle), ``Metrics``, ``Markdown``/``HTML`` (human summaries).
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from pipeline.image import pipeline_image

IMAGE = pipeline_image()


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    demo: dict,
    data: dict,
    validate_params: dict,
    data_root: str,
    mlflow_tracking_uri: str,
    validated: Output[Dataset],
    summary: Output[Markdown],
    validation_metrics: Output[Metrics],
) -> NamedTuple("ValidateOutputs", [("mlflow_run_id", str)]):
    """Great Expectations over manifest + images; stops on bad records (or quarantines by policy)."""
    from collections import namedtuple

    from pipeline import runtime

    run_id, counts, text = runtime.validate(demo, data, validate_params, data_root, mlflow_tracking_uri, validated.path)
    with open(summary.path, "w", encoding="utf-8") as handle:
        handle.write(text)
    for key in ("records", "clean", "quarantined", "offending", "failed_expectations"):
        validation_metrics.log_metric(key, float(counts.get(key, 0)))
    return namedtuple("ValidateOutputs", ["mlflow_run_id"])(run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract(
    extract_params: dict,
    model: dict,
    train: dict,
    mlflow_tracking_uri: str,
    validated: Input[Dataset],
    features: Output[Dataset],
    backbone_init: Output[Model],
) -> NamedTuple("ExtractOutputs", [("mlflow_run_id", str)]):
    """Initial-backbone patch tokens of the training images -> Parquet shards (+ backbone_init)."""
    from collections import namedtuple

    from pipeline import runtime

    run_id, summary = runtime.extract(extract_params, model, train, validated.path, mlflow_tracking_uri,
                                      features.path, backbone_init.path)  # fmt: skip
    features.metadata.update({"images": summary["images"], "shards": summary["shards"]})
    return namedtuple("ExtractOutputs", ["mlflow_run_id"])(run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def cluster(
    cluster_params: dict,
    model: dict,
    mlflow_tracking_uri: str,
    validated: Input[Dataset],
    features: Input[Dataset],
    prototypes: Output[Model],
    allocation: Output[Markdown],
) -> NamedTuple("ClusterOutputs", [("mlflow_run_id", str)]):
    """CPI prototype bank + allocation table + label-embedding cache (in ``prototypes``)."""
    from collections import namedtuple

    from pipeline import runtime

    run_id, table = runtime.cluster(cluster_params, model, validated.path, features.path, mlflow_tracking_uri,
                                    prototypes.path)  # fmt: skip
    with open(allocation.path, "w", encoding="utf-8") as handle:
        handle.write(table)
    return namedtuple("ClusterOutputs", ["mlflow_run_id"])(run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    model: dict,
    train_params: dict,
    launch: dict,
    nproc_per_node: int,
    mlflow_tracking_uri: str,
    validate_run_id: str,
    extract_run_id: str,
    cluster_run_id: str,
    validated: Input[Dataset],
    prototypes: Input[Model],
    backbone_init: Input[Model],
    trained_model: Output[Model],
    training_metrics: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("parent_run_id", str)]):
    """torchrun with ``nproc_per_node`` processes (one per GPU); starts the MLflow parent run."""
    from collections import namedtuple

    from pipeline import runtime

    _, parent, final = runtime.train(
        model, train_params, launch, nproc_per_node, validated.path, prototypes.path, backbone_init.path,
        mlflow_tracking_uri, [validate_run_id, extract_run_id, cluster_run_id], trained_model.path,
    )  # fmt: skip
    for key, value in final.items():
        training_metrics.log_metric(key, float(value))
    return namedtuple("TrainOutputs", ["parent_run_id"])(parent)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_multinode(
    model: dict,
    train_params: dict,
    launch: dict,
    num_nodes: int,
    nproc_per_node: int,
    accelerator_type: str,
    accelerators_per_node: int,
    image: str,
    namespace: str,
    staging_uri: str,
    job_name: str,
    mlflow_tracking_uri: str,
    validated: Input[Dataset],
    prototypes: Input[Model],
    backbone_init: Input[Model],
    trained_model: Output[Model],
) -> NamedTuple("TrainOutputs", [("parent_run_id", str)]):
    """More than one node: the same training as a Kubeflow Training Operator PyTorchJob."""
    from collections import namedtuple

    from pipeline import runtime

    parent, _ = runtime.train_multinode(
        model, train_params, launch, num_nodes, nproc_per_node, accelerator_type, accelerators_per_node, image,
        namespace, staging_uri, job_name, validated.path, prototypes.path, backbone_init.path,
        mlflow_tracking_uri, trained_model.path,
    )  # fmt: skip
    return namedtuple("TrainOutputs", ["parent_run_id"])(parent)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    evaluate_params: dict,
    mlflow_tracking_uri: str,
    parent_run_id: str,
    validated: Input[Dataset],
    trained_model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Official protocol (val-tuned threshold, test F1/mAP) vs the label prior; plots in ``report``."""
    from pipeline import runtime

    values, page = runtime.evaluate(evaluate_params, validated.path, trained_model.path, mlflow_tracking_uri,
                                    parent_run_id, evaluation.path)  # fmt: skip
    for key, value in values.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(page)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    register_params: dict,
    mlflow_tracking_uri: str,
    parent_run_id: str,
    trained_model: Input[Model],
    evaluation: Input[Artifact],
    decision: Output[Markdown],
) -> NamedTuple("RegisterOutputs", [("version", str), ("promoted", bool)]):
    """MLflow registry; moves the champion alias only when test macro-F1 improves."""
    from collections import namedtuple

    from pipeline import runtime

    version, promoted, reason = runtime.register(register_params, trained_model.path, evaluation.path,
                                                 mlflow_tracking_uri, parent_run_id, decision.path + ".d")  # fmt: skip
    with open(decision.path, "w", encoding="utf-8") as handle:
        state = "promoted to champion" if promoted else "kept as a candidate"
        handle.write(f"# Model registry\n\nVersion **{version}** {state}.\n\n{reason}\n")
    return namedtuple("RegisterOutputs", ["version", "promoted"])(version, promoted)
