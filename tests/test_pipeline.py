"""Kubeflow pipeline: the committed YAML is current, its structure, the components are adapters
over the step contract, the pod entry point run as a PyTorchJob pod (staging on a real S3 server;
manifests and the other launcher tests are in test_launch.py), the submit CLI without a cluster,
and the whole DAG run locally with kfp.local.SubprocessRunner."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipeline" / "mccl_pipeline.yaml"
STEPS = ("demo", "validate", "extract", "cluster", "train", "evaluate", "explain", "register")


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPILED.read_text())


def test_committed_pipeline_yaml_matches_a_fresh_compile(tmp_path, monkeypatch):
    monkeypatch.delenv("MCCL_IMAGE", raising=False)
    from pipeline.pipeline import compile_pipeline

    fresh = compile_pipeline(tmp_path / "fresh.yaml").read_bytes()
    # Byte for byte, header comment included (compile_pipeline sorts its dict defaults), so a
    # compile never dirties the git tree.
    assert fresh == COMPILED.read_bytes(), (
        "pipeline/mccl_pipeline.yaml is stale: run `mccl pipeline compile` and commit it"
    )


def test_compiled_header_is_the_same_in_every_process(tmp_path):
    """KFP prints dict defaults in protobuf-map order, which differs between processes (hash
    seeds); two compiles in processes with different seeds give the same bytes."""
    script = "import sys; from pipeline.pipeline import compile_pipeline; compile_pipeline(sys.argv[1])"
    outputs = []
    for seed in ("1", "2"):
        target = tmp_path / f"seed{seed}.yaml"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO, env=env, check=True, timeout=300)
        outputs.append(target.read_bytes())
    assert outputs[0] == outputs[1]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the DAG, including those inside the If/Else branches."""
    tasks: dict[str, dict] = {}
    for dag in [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]:
        tasks.update(dag["tasks"])
    return tasks


def test_pipeline_structure_caching_gpus_and_typed_artifacts(spec):
    from mccl_core.launch.image import IMAGE_REPOSITORY, IMAGE_TAG
    from mccl_core.steps.contract import spec as step_spec

    tasks = _tasks(spec)
    assert set(tasks) == set(STEPS)
    cached = {name: task.get("cachingOptions", {}).get("enableCache", False) for name, task in tasks.items()}
    assert cached == {name: step_spec(name).cacheable for name in STEPS}
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"}
    train_resources = executors["exec-train"]["container"]["resources"]
    assert "accelerator_type" in json.dumps(train_resources) and "accelerators_per_node" in json.dumps(train_resources)
    for name in (
        "accelerator_type",
        "accelerators_per_node",
        "mlflow_tracking_uri",
        "train_params",
        "model",
        "tracking",
    ):
        assert name in spec["root"]["inputDefinitions"]["parameters"]
    # The number of training processes is launch.nproc_per_node (params), as under DVC; the GPU
    # count only sizes the train pod.
    assert set(spec["components"]["comp-train"]["inputDefinitions"]["parameters"]) == {
        "model",
        "train_params",
        "launch",
        "tracking",
        "demo_run_id",
        "mlflow_tracking_uri",
        "validate_run_id",
        "extract_run_id",
        "cluster_run_id",
    }
    for name in STEPS:  # each step's output folder is typed as the step declares
        outputs = spec["components"][f"comp-{name}"]["outputDefinitions"]["artifacts"]
        assert outputs["out"]["artifactType"]["schemaTitle"] == f"system.{step_spec(name).output_kind}"
        inputs = spec["components"][f"comp-{name}"].get("inputDefinitions", {}).get("artifacts", {})
        assert set(inputs) == set(step_spec(name).input_names()), name
    artifact_types = {
        art["artifactType"]["schemaTitle"]
        for component in spec["components"].values()
        for art in component.get("outputDefinitions", {}).get("artifacts", {}).values()
    }
    assert {"system.Dataset", "system.Model", "system.Metrics", "system.Markdown", "system.HTML"} <= artifact_types
    # Defaults come from params.yaml (one source of truth for DVC and Kubeflow).
    from mccl_core.config import load_params

    defaults = spec["root"]["inputDefinitions"]["parameters"]["train_params"]["defaultValue"]
    assert defaults == load_params(REPO / "params.yaml")["train"]


def test_components_pass_exactly_the_sections_each_step_reads():
    """A component is argument plumbing: the params sections it hands to run_step are the step's."""
    import ast

    from mccl_core.steps.contract import spec as step_spec

    tree = ast.parse((REPO / "components" / "steps.py").read_text())
    for node in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        call = next(
            c for c in ast.walk(node) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "run_kfp_step"
        )
        assert call.args[0].value == node.name
        sections = {k.value for k in call.args[1].keys} - {"tracking"}
        assert sections == set(step_spec(node.name).sections), node.name
    text = (REPO / "components" / "steps.py").read_text() + (REPO / "pipeline" / "pipeline.py").read_text()
    for file_name in (".json", ".pt", ".safetensors", ".npz", "model/"):  # no artifact names in the adapters
        assert file_name not in text, file_name


def test_submit_without_a_reachable_endpoint_fails_clearly(capsys):
    from pipeline.cli import main

    assert main(["submit", "--host", "http://127.0.0.1:9", "--package", str(COMPILED), "--param", "num_nodes=2"]) == 1
    err = capsys.readouterr().err
    assert "endpoint http://127.0.0.1:9 is not reachable" in err


@pytest.mark.slow
def test_whole_dag_runs_locally_with_the_subprocess_runner(tmp_path, monkeypatch):
    """demo -> validate -> extract -> cluster -> train -> evaluate -> register, one MLflow parent."""
    from kfp import local
    from mlflow import MlflowClient

    from pipeline.pipeline import mccl_pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = copy.deepcopy(TINY_MODEL)
    mccl_pipeline(
        demo_params={"seed": 3, "n_train": 96, "n_val": 48, "n_test": 48, "image_size": 32, "workers": 1},
        data={"source": "demo", "root": "data/demo"},
        validate_params={"workers": 2},
        extract_params={"batch_size": 48, "tokens_per_image": 8, "shard_size": 64, "device": "cpu"},
        cluster_params={"device": "cpu"},
        model=model,
        train_params={"epochs": 1, "batch_size": 16, "lr": 1e-3, "image_size": 32, "num_workers": 0, "device": "cpu"},
        launch={"nproc_per_node": 1},
        evaluate_params={"batch_size": 48, "device": "cpu", "plots": True},
        register_params={"model_name": "mccl-kfp-test", "alias": "champion"},
        tracking={"experiment": "mccl-kfp"},
        mlflow_tracking_uri=tracking_uri,
        accelerators_per_node=1,
    )
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("mccl-kfp")  # the tracking section reaches Kubeflow too
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"pipeline", *STEPS}  # the demo step's run too, adopted by train
    parent_id = runs["pipeline"].info.run_id
    for step in STEPS:
        assert runs[step].data.tags.get("mlflow.parentRunId") == parent_id, step  # cached-step runs adopted
        assert runs[step].info.status == "FINISHED"
    assert runs["pipeline"].info.status == "FINISHED"  # every step ends it
    assert "official/test/macro_f1" in runs["evaluate"].data.metrics
    assert [m.step for m in client.get_metric_history(runs["train"].info.run_id, "train_loss")] == [0]
    version = client.get_model_version_by_alias("mccl-kfp-test", "champion")
    assert str(version.version) == "1" and float(version.tags["test_macro_f1"]) >= 0.0
    assert runs["register"].data.tags["mccl.dvc.data_hash"].startswith("sha256:")
    summaries = list((tmp_path / "kfp").rglob("validate/summary"))
    assert summaries and "Data validation: PASSED" in summaries[0].read_text()
    reports = list((tmp_path / "kfp").rglob("evaluate/report"))
    assert reports and "<h2>MCCL evaluation</h2>" in reports[0].read_text()
    explained = list((tmp_path / "kfp").rglob("explain/summary"))
    assert explained and "| pointing_random |" in explained[0].read_text()
    assert "pointing_attention" in runs["explain"].data.metrics


@pytest.mark.slow
def test_pytorchjob_pod_runs_the_train_step_from_staged_inputs(
    tiny_demo, tiny_demo_label_embeddings, tmp_path, monkeypatch
):
    """What the train step stages for a PyTorchJob, a pod (python -m mccl_core.launch.pytorchjob,
    with the PET_* environment of the Training Operator) downloads, trains and uploads (real S3)."""
    import subprocess
    import sys

    from services import SeaweedS3

    from mccl_core.launch.staging import download_prefix, upload_dir
    from mccl_core.steps.contract import run_step
    from mccl_core.tracking.steps import TrackingOptions

    off = TrackingOptions(enabled=False)
    params = {"data": {"source": "demo", "root": str(tiny_demo)}, "validate": {"workers": 2},
              "extract": {"batch_size": 64, "tokens_per_image": 8, "shard_size": 64, "device": "cpu"},
              "cluster": {"device": "cpu"}, "model": copy.deepcopy(TINY_MODEL),
              "train": {"epochs": 1, "batch_size": 16, "image_size": 32, "num_workers": 0, "device": "cpu"}}  # fmt: skip
    folders = {}
    for name, inputs in (("validate", {}), ("extract", {"validate"}), ("cluster", {"validate", "extract"})):
        folders[name] = tmp_path / name
        run_step(name, params, {k: folders[k] for k in inputs}, folders[name], off)
    server = SeaweedS3(tmp_path / "seaweed", "stagingkey", "stagingsecret123", buckets=["mccl"])
    server.start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        staged = tmp_path / "staged"
        for name in ("validate", "extract", "cluster"):
            shutil.copytree(folders[name], staged / name)
        (staged / "params.yaml").write_text(yaml.safe_dump({"model": params["model"], "train": params["train"]}))
        upload_dir(staged, "minio://mccl/run1/inputs")
        env = {**os.environ, **server.env(), "PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0",
               "OMP_NUM_THREADS": "2"}  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "mccl_core.launch.pytorchjob", "--staging-uri", "s3://mccl/run1",
                               "--workspace", str(tmp_path / "pod")], env=env, capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert download_prefix("s3://mccl/run1/outputs", tmp_path / "fetched") > 0
        history = json.loads((tmp_path / "fetched" / "history.json").read_text())
        assert [r["epoch"] for r in history] == [0]
        assert (tmp_path / "fetched" / "model" / "bundle.json").is_file()
        assert (tmp_path / "fetched" / "checkpoints" / "inputs.json").is_file()  # the resume guard's record
        # A restarted pod of the same job resumes from the uploaded checkpoint: nothing left to train.
        again = subprocess.run([sys.executable, "-m", "mccl_core.launch.pytorchjob", "--staging-uri", "s3://mccl/run1",
                                "--workspace", str(tmp_path / "pod2")], env=env, capture_output=True, text=True, check=False)  # fmt: skip
        assert again.returncode == 0, again.stderr[-4000:]
        assert "resuming from" in again.stderr and "same inputs" in again.stderr
    finally:
        server.stop()
