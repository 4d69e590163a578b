"""Scoring a new batch outside the training DAG: the KFP component (run for real on a bundle and a
folder of photos), its one-step pipeline (committed YAML = a fresh compile) and the DVC-stage
example in docs/ (its command parses as ``mccl predict`` arguments, its outs are what it writes)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import sklearn.datasets
import yaml
from conftest import TINY_MODEL
from kfp.dsl import Dataset, Metrics

from mccl_core.data import DataConfig, cooccurrence_counts, load_split
from mccl_core.models import ModelConfig, load_label_embeddings
from mccl_core.models.bundle import read_meta, write_meta
from mccl_core.serving import build_untrained_bundle
from mccl_core.serving.batch import BAD_SUFFIX, _parser

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipeline" / "mccl_predict_pipeline.yaml"
EXAMPLE = REPO / "docs" / "examples" / "predict" / "dvc.yaml"
PHOTOS = Path(sklearn.datasets.__file__).parent / "images"


def test_committed_predict_pipeline_yaml_matches_a_fresh_compile(tmp_path, monkeypatch):
    monkeypatch.delenv("MCCL_IMAGE", raising=False)
    from pipeline.predict_pipeline import compile_predict_pipeline

    fresh = compile_predict_pipeline(tmp_path / "fresh.yaml").read_bytes()
    assert fresh == COMPILED.read_bytes(), (
        "pipeline/mccl_predict_pipeline.yaml is stale: run `python -m pipeline.predict_pipeline` and commit it"
    )
    spec = yaml.safe_load(fresh)
    [task] = spec["root"]["dag"]["tasks"].values()
    assert task["componentRef"]["name"] == "comp-predict" and task["cachingOptions"] == {}
    executor = spec["deploymentSpec"]["executors"]["exec-predict"]["container"]
    assert "from mccl_core.serving.batch import list_inputs, predict_batch, resolve_bundle" in executor["command"][-1]
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "input_uri", "model_uri", "mlflow_tracking_uri", "top_clues", "output_format"
    }  # fmt: skip
    # The training DAG does not grow a predict step.
    assert "comp-predict" not in (REPO / "pipeline" / "mccl_pipeline.yaml").read_text()


def test_the_component_scores_a_folder_and_lists_bad_images(tiny_demo, tiny_demo_label_embeddings, tmp_path):
    from components.predict import predict

    train = load_split(DataConfig(source="demo", root=tiny_demo), "train")
    model_cfg = ModelConfig.from_dict({
        **TINY_MODEL, "backbone": {"arch": "efficientnet_lite0", "stages": ["stage3", "stage4"], "weights": "package"},
    })  # fmt: skip
    bundle = build_untrained_bundle(
        tmp_path / "bundle", model_cfg, train.class_names, load_label_embeddings(tiny_demo_label_embeddings),
        cooccurrence_counts(train.label_matrix()), image_size=64, class_descriptions=train.class_descriptions,
    )  # fmt: skip
    meta = read_meta(bundle)
    meta.threshold = 0.5
    write_meta(bundle, meta)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTOS / "china.jpg", photos / "china.jpg")
    shutil.copy(PHOTOS / "flower.jpg", photos / "flower.jpg")
    (photos / "broken.jpg").write_text("not an image")

    scores = Dataset(name="scores", uri=str(tmp_path / "artifacts" / "scores"), metadata={})
    metrics = Metrics(name="batch_metrics", uri=str(tmp_path / "artifacts" / "metrics"), metadata={})
    outputs = predict.python_func(model_uri=str(bundle), input_uri=str(photos), mlflow_tracking_uri="",
                                  top_clues=0, output_format="csv", scores=scores, batch_metrics=metrics)  # fmt: skip
    assert (outputs.scored, outputs.bad) == (2, 1) and metrics.metadata == {"scored": 2, "bad": 1}
    table = pd.read_csv(Path(scores.path) / "scores.csv")
    assert sorted(Path(p).name for p in table["image_path"]) == ["china.jpg", "flower.jpg"]
    assert set(meta.class_names) <= set(table.columns) and "intents" in table.columns
    bad = pd.read_csv(Path(scores.path) / f"scores{BAD_SUFFIX}")
    assert [Path(p).name for p in bad["image_path"]] == ["broken.jpg"]
    with pytest.raises(ValueError, match="output_format must be csv or parquet"):
        predict.python_func(model_uri=str(bundle), input_uri=str(photos), mlflow_tracking_uri="", top_clues=0,
                            output_format="xlsx", scores=scores, batch_metrics=metrics)  # fmt: skip


def test_dvc_stage_example_runs_mccl_predict_and_declares_what_it_writes():
    example = yaml.safe_load(EXAMPLE.read_text())
    stage = example["stages"]["predict"]
    argv = shlex.split(stage["cmd"])
    assert argv[:2] == ["mccl", "predict"]
    args = _parser().parse_args(argv[2:])  # a real `mccl predict` command line
    assert args.model == "models:/mccl-intent@champion" and stage["deps"] == [args.input]
    assert stage["outs"] == [str(args.output), str(args.output.with_name(args.output.stem + BAD_SUFFIX))]
    assert stage["always_changed"] is True
    # Only an example: the project's own dvc.yaml never scores a batch.
    assert "predict" not in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "examples/predict/dvc.yaml" in (REPO / "docs" / "predict.md").read_text()
