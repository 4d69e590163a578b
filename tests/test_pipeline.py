"""Kubeflow pipeline: the committed YAML is current, its structure, the PyTorchJob manifest, the
submit CLI without a cluster, and the whole DAG run locally with kfp.local.SubprocessRunner."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipeline" / "mccl_pipeline.yaml"
STEPS = ("validate", "extract", "cluster", "train", "evaluate", "register")


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPILED.read_text())


def test_committed_pipeline_yaml_matches_a_fresh_compile(tmp_path, monkeypatch):
    monkeypatch.delenv("MCCL_IMAGE", raising=False)
    from pipeline.pipeline import compile_pipeline

    fresh = compile_pipeline(tmp_path / "fresh.yaml").read_text()
    # Compared as documents: KFP's header comment lists dict defaults in protobuf map order,
    # which changes from process to process; everything KFP reads is in the document.
    assert yaml.safe_load(fresh) == yaml.safe_load(COMPILED.read_text()), (
        "pipeline/mccl_pipeline.yaml is stale: run `mccl pipeline compile` and commit it"
    )
    body = lambda text: [line for line in text.splitlines() if not line.startswith("#")]
    assert body(fresh) == body(COMPILED.read_text())


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the DAG, including those inside the If/Else branches."""
    tasks: dict[str, dict] = {}
    for dag in [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]:
        tasks.update(dag["tasks"])
    return tasks


def test_pipeline_structure_caching_gpus_and_typed_artifacts(spec):
    from pipeline.image import IMAGE_REPOSITORY, IMAGE_TAG

    tasks = _tasks(spec)
    for step in STEPS:
        assert step in tasks, f"task {step} missing from the DAG"
    assert "train-multinode" in tasks
    cached = {name: task.get("cachingOptions", {}).get("enableCache", False) for name, task in tasks.items() if "dag" not in spec["components"][task["componentRef"]["name"]]}
    assert cached == {"validate": True, "extract": True, "cluster": True, "train": False,
                      "train-multinode": False, "evaluate": False, "register": False}  # fmt: skip
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"}
    train_resources = executors["exec-train"]["container"]["resources"]
    assert "accelerator_type" in json.dumps(train_resources) and "accelerators_per_node" in json.dumps(train_resources)
    for name in ("accelerator_type", "accelerators_per_node", "num_nodes", "mlflow_tracking_uri", "train_params", "model"):
        assert name in spec["root"]["inputDefinitions"]["parameters"]
    artifact_types = {
        art["artifactType"]["schemaTitle"]
        for component in spec["components"].values()
        for art in component.get("outputDefinitions", {}).get("artifacts", {}).values()
    }
    assert {"system.Dataset", "system.Model", "system.Metrics", "system.Markdown", "system.HTML"} <= artifact_types
    # Defaults come from params.yaml (one source of truth for DVC and Kubeflow).
    from mccl_core.params import load_params

    defaults = spec["root"]["inputDefinitions"]["parameters"]["train_params"]["defaultValue"]
    assert defaults == load_params(REPO / "params.yaml")["train"]


def test_pytorchjob_manifest_from_the_pipeline_parameters():
    from pipeline.pytorchjob import PyTorchJobConfig, build_pytorchjob, job_state

    manifest = build_pytorchjob(PyTorchJobConfig(
        name="mccl-train-1", namespace="team", image="reg/mccl:1", num_nodes=3, nproc_per_node=4,
        accelerator_type="nvidia.com/gpu", accelerators_per_node=4, staging_uri="s3://b/run1",
        mlflow_tracking_uri="http://mlflow:5000", mlflow_run_id="abc",
    ))  # fmt: skip
    assert manifest["kind"] == "PyTorchJob" and manifest["apiVersion"] == "kubeflow.org/v1"
    assert manifest["spec"]["nprocPerNode"] == "4"
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["image"] == "reg/mccl:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"][:3] == ["python", "-m", "pipeline.pytorchjob"] and "abc" in container["command"]
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(manifest)  # credentials come from a secret reference
    assert job_state({"status": {"conditions": [{"type": "Running", "status": "True"}]}}) is None
    assert job_state({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}) == "Succeeded"
    with pytest.raises(ValueError, match="num_nodes=1"):
        PyTorchJobConfig(name="x", namespace="n", image="i", num_nodes=1, nproc_per_node=1,
                         accelerator_type="nvidia.com/gpu", accelerators_per_node=1, staging_uri="s3://b/p")  # fmt: skip


def test_submit_without_a_reachable_endpoint_fails_clearly(capsys):
    from pipeline.cli import main

    assert main(["submit", "--host", "http://127.0.0.1:9", "--package", str(COMPILED), "--param", "num_nodes=2"]) == 1
    err = capsys.readouterr().err
    assert "endpoint http://127.0.0.1:9 is not reachable" in err


def test_whole_dag_runs_locally_with_the_subprocess_runner(tmp_path, monkeypatch):
    """validate (generating the tiny demo) -> extract -> cluster -> train -> evaluate -> register."""
    from kfp import local
    from mlflow import MlflowClient

    from pipeline.pipeline import mccl_pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = copy.deepcopy(TINY_MODEL)
    run = mccl_pipeline(
        demo={"seed": 3, "n_train": 96, "n_val": 48, "n_test": 48, "image_size": 32, "workers": 1},
        data={"source": "demo", "root": "unused-generated-in-validate"},
        validate_params={"workers": 2},
        extract_params={"batch_size": 48, "tokens_per_image": 8, "shard_size": 64, "device": "cpu"},
        cluster_params={"device": "cpu"},
        model=model,
        train_params={"epochs": 1, "batch_size": 16, "lr": 1e-3, "image_size": 32, "num_workers": 0, "device": "cpu"},
        launch={"nproc_per_node": 1},
        evaluate_params={"batch_size": 48, "device": "cpu", "plots": True},
        register_params={"model_name": "mccl-kfp-test", "alias": "champion"},
        mlflow_tracking_uri=tracking_uri,
        accelerators_per_node=1,
        num_nodes=1,
    )
    outputs = run.outputs if hasattr(run, "outputs") else {}
    del outputs
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("mccl")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"pipeline", *STEPS}
    parent_id = runs["pipeline"].info.run_id
    for step in STEPS:
        assert runs[step].data.tags.get("mlflow.parentRunId") == parent_id, step  # cached-step runs adopted
        assert runs[step].info.status == "FINISHED"
    assert runs["pipeline"].info.status == "FINISHED"  # ended by register
    assert "official/test/macro_f1" in runs["evaluate"].data.metrics
    assert [m.step for m in client.get_metric_history(runs["train"].info.run_id, "train_loss")] == [0]
    version = client.get_model_version_by_alias("mccl-kfp-test", "champion")
    assert str(version.version) == "1" and float(version.tags["test_macro_f1"]) >= 0.0
    summaries = list((tmp_path / "kfp").rglob("summary"))
    assert summaries and "Data validation: PASSED" in summaries[0].read_text()


def test_pytorchjob_staging_round_trip_through_s3(tmp_path, monkeypatch):
    """What the launcher uploads, a PyTorchJob pod downloads and relocates (real S3: SeaweedFS)."""
    from services import SeaweedS3

    from pipeline.pytorchjob import _relocate_params, node_command
    from pipeline.staging import download_prefix, upload_dir

    server = SeaweedS3(tmp_path / "seaweed", "stagingkey", "stagingsecret123", buckets=["mccl"])
    server.start()
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        staged = tmp_path / "staged"
        (staged / "data" / "annotations").mkdir(parents=True)
        (staged / "data" / "annotations" / "intentonomy_train2020.json").write_text("{}")
        (staged / "prototypes.safetensors").write_bytes(b"\x00" * 1000)
        (staged / "resolved_params.yaml").write_text(yaml.safe_dump({
            "data": {"source": "demo", "root": "data/demo",
                     "annotations": {"train": "data/annotations/intentonomy_train2020.json"}},
            "model": {}, "train": {"output_dir": "anything"}}))  # fmt: skip
        assert upload_dir(staged, "minio://mccl/runs/r1/inputs") == 3
        workspace = tmp_path / "pod"
        assert download_prefix("s3://mccl/runs/r1/inputs", workspace / "inputs") == 3
        assert download_prefix("s3://mccl/runs/r1/outputs/checkpoints", workspace / "ckpt") == 0  # first start
        assert (workspace / "inputs" / "prototypes.safetensors").read_bytes() == b"\x00" * 1000
        _relocate_params(workspace / "inputs" / "resolved_params.yaml", workspace)
        params = yaml.safe_load((workspace / "inputs" / "resolved_params.yaml").read_text())
        assert params["data"]["annotations"]["train"] == str(workspace / "inputs" / "data/annotations/intentonomy_train2020.json")
        assert params["train"]["output_dir"] == str(workspace / "outputs")
        command = node_command(workspace, "run123")
        assert command[1:4] == ["-m", "torch.distributed.run", "-m"] and command[-2:] == ["--mlflow-run-id", "run123"]
    finally:
        server.stop()
