"""The MCCL Kubeflow pipeline (KFP v2): validate -> extract -> cluster -> train -> evaluate -> register.

Parameters: one dict per ``params.yaml`` section (defaults = the repository's params.yaml at
compile time, so DVC and Kubeflow start from the same values), plus the run settings: where the
data lives (``data_root``; empty with the demo source generates the demo inside the validate
step), the MLflow server, the GPUs (``accelerator_type``, ``accelerators_per_node``) and
``num_nodes`` - above 1 the train step becomes a Training Operator PyTorchJob.

Caching: validate, extract and cluster are deterministic functions of their inputs and are
cached; train (a fresh model is the point of a new run), evaluate and register (registry side
effects) always run.
"""


from pathlib import Path

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Model

from mccl_core.params import load_params
from pipeline import components as c
from pipeline.image import pipeline_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = REPO / "params.yaml"
COMPILED = Path(__file__).resolve().parent / "mccl_pipeline.yaml"
PIPELINE_NAME = "mccl-intent-pipeline"
SECTIONS = ("demo", "data", "validate", "extract", "cluster", "model", "train", "launch", "evaluate", "register")


def _defaults() -> dict[str, dict]:
    params = load_params(DEFAULT_PARAMS)
    return {name: dict(params.get(name) or {}) for name in SECTIONS}


_D = _defaults()


@dsl.pipeline(name="evaluate-and-register", description="Official-protocol evaluation, then the MLflow registry")
def evaluate_and_register(
    evaluate_params: dict,
    register_params: dict,
    mlflow_tracking_uri: str,
    parent_run_id: str,
    validated: Input[Dataset],
    trained_model: Input[Model],
):
    """The steps after training, shared by the single-node and the PyTorchJob branch (a sub-DAG
    instead of ``dsl.OneOf`` over the two branches' models, which kfp.local cannot run)."""
    evaluation = c.evaluate(evaluate_params=evaluate_params, mlflow_tracking_uri=mlflow_tracking_uri,
                            parent_run_id=parent_run_id, validated=validated,
                            trained_model=trained_model).set_caching_options(False)  # fmt: skip
    evaluation.set_display_name("evaluate (official protocol)")
    registered = c.register(register_params=register_params, mlflow_tracking_uri=mlflow_tracking_uri,
                            parent_run_id=parent_run_id, trained_model=trained_model,
                            evaluation=evaluation.outputs["evaluation"]).set_caching_options(False)  # fmt: skip
    registered.set_display_name("register (MLflow)")


@dsl.pipeline(name=PIPELINE_NAME, description="MCCL image intent recognition: validate, extract, CPI, train, evaluate, register")
def mccl_pipeline(
    demo: dict = _D["demo"],
    data: dict = _D["data"],
    validate_params: dict = _D["validate"],
    extract_params: dict = _D["extract"],
    cluster_params: dict = _D["cluster"],
    model: dict = _D["model"],
    train_params: dict = _D["train"],
    launch: dict = _D["launch"],
    evaluate_params: dict = _D["evaluate"],
    register_params: dict = _D["register"],
    data_root: str = "",
    mlflow_tracking_uri: str = "",
    accelerator_type: str = "nvidia.com/gpu",
    accelerators_per_node: int = 1,
    num_nodes: int = 1,
    k8s_namespace: str = "kubeflow",
    staging_uri: str = "s3://mccl-pipeline/staging",
    image: str = pipeline_image(),
):
    validated = c.validate(demo=demo, data=data, validate_params=validate_params, data_root=data_root,
                           mlflow_tracking_uri=mlflow_tracking_uri).set_caching_options(True)  # fmt: skip
    validated.set_display_name("validate data")
    features = c.extract(extract_params=extract_params, model=model, train=train_params,
                         mlflow_tracking_uri=mlflow_tracking_uri,
                         validated=validated.outputs["validated"]).set_caching_options(True)  # fmt: skip
    features.set_display_name("extract backbone tokens")
    prototypes = c.cluster(cluster_params=cluster_params, model=model, mlflow_tracking_uri=mlflow_tracking_uri,
                           validated=validated.outputs["validated"],
                           features=features.outputs["features"]).set_caching_options(True)  # fmt: skip
    prototypes.set_display_name("CPI prototypes")

    with dsl.If(num_nodes > 1, name="multi-node"):
        multi = c.train_multinode(
            model=model, train_params=train_params, launch=launch, num_nodes=num_nodes,
            nproc_per_node=accelerators_per_node, accelerator_type=accelerator_type,
            accelerators_per_node=accelerators_per_node, image=image, namespace=k8s_namespace,
            staging_uri=staging_uri, job_name=f"mccl-train-{dsl.PIPELINE_JOB_ID_PLACEHOLDER}",
            mlflow_tracking_uri=mlflow_tracking_uri, validated=validated.outputs["validated"],
            prototypes=prototypes.outputs["prototypes"], backbone_init=features.outputs["backbone_init"],
        ).set_caching_options(False)  # fmt: skip
        multi.set_display_name("train (PyTorchJob)")
        evaluate_and_register(
            evaluate_params=evaluate_params, register_params=register_params, mlflow_tracking_uri=mlflow_tracking_uri,
            parent_run_id=multi.outputs["parent_run_id"], validated=validated.outputs["validated"],
            trained_model=multi.outputs["trained_model"],
        ).set_caching_options(False).set_display_name("evaluate + register")  # fmt: skip
    with dsl.Else(name="single-node"):
        single = c.train(
            model=model, train_params=train_params, launch=launch, nproc_per_node=accelerators_per_node,
            mlflow_tracking_uri=mlflow_tracking_uri, validate_run_id=validated.outputs["mlflow_run_id"],
            extract_run_id=features.outputs["mlflow_run_id"], cluster_run_id=prototypes.outputs["mlflow_run_id"],
            validated=validated.outputs["validated"], prototypes=prototypes.outputs["prototypes"],
            backbone_init=features.outputs["backbone_init"],
        ).set_caching_options(False)  # fmt: skip
        single.set_display_name("train (torchrun)")
        single.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerators_per_node)
        evaluate_and_register(
            evaluate_params=evaluate_params, register_params=register_params, mlflow_tracking_uri=mlflow_tracking_uri,
            parent_run_id=single.outputs["parent_run_id"], validated=validated.outputs["validated"],
            trained_model=single.outputs["trained_model"],
        ).set_caching_options(False).set_display_name("evaluate + register")  # fmt: skip


def compile_pipeline(path: Path = COMPILED) -> Path:
    """Write the pipeline spec YAML (what ``kfp.Client`` submits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=mccl_pipeline, package_path=str(path))
    return path
