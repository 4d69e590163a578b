"""Kubeflow pipeline: the committed YAML is current, its structure, the components are adapters
over the step contract, and the submit CLI without a cluster. The whole DAG run locally with
kfp.local.SubprocessRunner is in test_dvc.py (one run, compared with `dvc repro`'s); the pods of
a TrainJob / PyTorchJob run on a real S3 server in test_launch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
