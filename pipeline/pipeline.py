"""The MCCL Kubeflow pipeline (KFP v2): demo -> validate -> extract -> cluster -> train -> evaluate -> explain | register.

Parameters: one dict per ``params.yaml`` section (defaults = the repository's params.yaml at
compile time, so DVC and Kubeflow start from the same values), plus the run settings: the MLflow
server and the train pod's GPUs (``accelerator_type``, ``accelerators_per_node``; 0 for a pod
that only launches a PyTorchJob, ``launch.backend: pytorchjob``).

Data: the demo step always runs (cached); with ``data.source: demo`` the later steps read its
dataset artifact, otherwise it renders nothing and ``data.root`` must be a path every step's pod
sees (a mounted volume).

Caching: demo, validate, extract and cluster are deterministic functions of their inputs and are
cached; train (a fresh model is the point of a new run), evaluate, explain and register (registry side
effects) always run.
"""

import ast
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from components import steps as c
from mccl_core.config import load_params

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = REPO / "params.yaml"
COMPILED = Path(__file__).resolve().parent / "mccl_pipeline.yaml"
PIPELINE_NAME = "mccl-intent-pipeline"
#: params.yaml section -> pipeline parameter name (``*_params`` where the bare name is a step's).
SECTION_PARAMETERS = {
    "demo": "demo_params", "data": "data", "validate": "validate_params", "extract": "extract_params",
    "cluster": "cluster_params", "model": "model", "train": "train_params", "launch": "launch",
    "evaluate": "evaluate_params", "explain": "explain_params", "register": "register_params", "tracking": "tracking",
}  # fmt: skip


def _defaults() -> dict[str, dict]:
    params = load_params(DEFAULT_PARAMS)
    return {name: dict(params.get(name) or {}) for name in SECTION_PARAMETERS}


_D = _defaults()


@dsl.pipeline(
    name=PIPELINE_NAME, description="MCCL image intent recognition: validate, extract, CPI, train, evaluate, register"
)
def mccl_pipeline(
    demo_params: dict = _D["demo"],
    data: dict = _D["data"],
    validate_params: dict = _D["validate"],
    extract_params: dict = _D["extract"],
    cluster_params: dict = _D["cluster"],
    model: dict = _D["model"],
    train_params: dict = _D["train"],
    launch: dict = _D["launch"],
    evaluate_params: dict = _D["evaluate"],
    explain_params: dict = _D["explain"],
    register_params: dict = _D["register"],
    tracking: dict = _D["tracking"],
    mlflow_tracking_uri: str = "",
    accelerator_type: str = "nvidia.com/gpu",
    accelerators_per_node: int = 1,
):
    demo = c.demo(demo_params=demo_params, data=data, tracking=tracking,
                  mlflow_tracking_uri=mlflow_tracking_uri).set_caching_options(True)  # fmt: skip
    demo.set_display_name("demo dataset")
    validated = c.validate(data=data, validate_params=validate_params, tracking=tracking,
                           mlflow_tracking_uri=mlflow_tracking_uri, demo=demo.outputs["out"]).set_caching_options(True)  # fmt: skip
    validated.set_display_name("validate data")
    features = c.extract(extract_params=extract_params, model=model, train_params=train_params, tracking=tracking,
                         mlflow_tracking_uri=mlflow_tracking_uri, validate=validated.outputs["out"],
                         demo=demo.outputs["out"]).set_caching_options(True)  # fmt: skip
    features.set_display_name("extract backbone tokens")
    prototypes = c.cluster(cluster_params=cluster_params, model=model, tracking=tracking,
                           mlflow_tracking_uri=mlflow_tracking_uri, validate=validated.outputs["out"],
                           extract=features.outputs["out"]).set_caching_options(True)  # fmt: skip
    prototypes.set_display_name("CPI prototypes")
    trained = c.train(
        model=model, train_params=train_params, launch=launch, tracking=tracking, mlflow_tracking_uri=mlflow_tracking_uri,
        demo_run_id=demo.outputs["mlflow_run_id"], validate_run_id=validated.outputs["mlflow_run_id"], extract_run_id=features.outputs["mlflow_run_id"],
        cluster_run_id=prototypes.outputs["mlflow_run_id"], validate=validated.outputs["out"],
        extract=features.outputs["out"], cluster=prototypes.outputs["out"], demo=demo.outputs["out"],
    ).set_caching_options(False)  # fmt: skip
    trained.set_display_name("train")
    trained.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerators_per_node)
    evaluation = c.evaluate(evaluate_params=evaluate_params, tracking=tracking, mlflow_tracking_uri=mlflow_tracking_uri,
                            parent_run_id=trained.outputs["parent_run_id"], validate=validated.outputs["out"],
                            train=trained.outputs["out"], demo=demo.outputs["out"]).set_caching_options(False)  # fmt: skip
    evaluation.set_display_name("evaluate (official protocol)")
    explained = c.explain(explain_params=explain_params, tracking=tracking, mlflow_tracking_uri=mlflow_tracking_uri,
                          parent_run_id=trained.outputs["parent_run_id"], validate=validated.outputs["out"],
                          train=trained.outputs["out"], evaluate=evaluation.outputs["out"],
                          demo=demo.outputs["out"]).set_caching_options(False)  # fmt: skip
    explained.set_display_name("explain (gallery, pointing game)")
    registered = c.register(register_params=register_params, tracking=tracking, mlflow_tracking_uri=mlflow_tracking_uri,
                            parent_run_id=trained.outputs["parent_run_id"], validate=validated.outputs["out"],
                            train=trained.outputs["out"], evaluate=evaluation.outputs["out"]).set_caching_options(False)  # fmt: skip
    registered.set_display_name("register (MLflow)")


def _sorted_literal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_literal(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_literal(v) for v in value]
    return value


def stable_header(text: str) -> str:
    """KFP's header comment prints dict defaults in protobuf-map order, which changes from one
    process to the next; print them with sorted keys so that the same pipeline compiles to the
    same bytes (the committed YAML stays clean)."""
    lines = []
    for line in text.splitlines(keepends=True):
        head, sep, rest = line.partition("[Default: ")
        if line.startswith("#") and sep and rest.rstrip().endswith("]"):
            try:
                value = ast.literal_eval(rest.rstrip()[:-1])
            except (ValueError, SyntaxError):
                lines.append(line)
                continue
            line = f"{head}{sep}{_sorted_literal(value)!r}]\n"
        lines.append(line)
    return "".join(lines)


def compile_pipeline(path: Path = COMPILED) -> Path:
    """Write the pipeline spec YAML (what ``kfp.Client`` submits), byte-stable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=mccl_pipeline, package_path=str(path))
    path.write_text(stable_header(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path
