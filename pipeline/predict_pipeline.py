"""A one-step Kubeflow pipeline that scores a new batch with a registered model (``mccl predict``).

Kept apart from the training DAG (:mod:`pipeline.pipeline`, unchanged): a batch is scored on its
own schedule, against whatever model holds the alias at the time. Compile with
``python -m pipeline.predict_pipeline`` (writes ``pipeline/mccl_predict_pipeline.yaml``).
"""

from pathlib import Path

from kfp import compiler, dsl

from components.predict import predict
from pipeline.pipeline import stable_header

COMPILED = Path(__file__).resolve().parent / "mccl_predict_pipeline.yaml"
PIPELINE_NAME = "mccl-predict-batch"


@dsl.pipeline(
    name=PIPELINE_NAME, description="Score a folder, manifest or s3:// prefix of images with a registered MCCL model"
)
def mccl_predict_pipeline(
    input_uri: str,
    model_uri: str = "models:/mccl-intent@champion",
    mlflow_tracking_uri: str = "",
    top_clues: int = 0,
    output_format: str = "csv",
) -> None:
    task = predict(model_uri=model_uri, input_uri=input_uri, mlflow_tracking_uri=mlflow_tracking_uri,
                   top_clues=top_clues, output_format=output_format)  # fmt: skip
    task.set_caching_options(False)  # the alias may point to another model by the next run


def compile_predict_pipeline(path: Path = COMPILED) -> Path:
    """Write the spec YAML, byte-stable like the training pipeline's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=mccl_predict_pipeline, package_path=str(path))
    path.write_text(stable_header(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"compiled pipeline: {compile_predict_pipeline()}")
