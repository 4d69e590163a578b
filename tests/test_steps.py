"""Pipeline steps as library functions: validation (fail / quarantine), token shards, CPI, tracking."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_MODEL

from mccl_core.data import DataConfig, load_split
from mccl_core.models import ModelConfig, PrototypeBank
from mccl_core.models.archs import IMAGENET_MEAN, IMAGENET_STD
from mccl_core.steps import StepError
from mccl_core.steps.cluster import ClusterStepConfig, run_cluster
from mccl_core.steps.common import ValidatedData
from mccl_core.steps.extract import ExtractStepConfig, run_extract
from mccl_core.steps.validate import ValidateConfig, run_validate
from mccl_core.tracking.steps import TrackingOptions, tracked_step
from mccl_core.training.token_shards import iter_token_shards

REPO = Path(__file__).resolve().parents[1]
NO_TRACKING = TrackingOptions(enabled=False)


@pytest.fixture()
def demo_copy(tiny_demo, tmp_path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo, root)
    return root


def _annotations(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _break_records(root: Path) -> tuple[str, str]:
    """Corrupt one train image file and give one val record an unknown label id."""
    train = _annotations(root, "train")
    corrupt_id = train["images"][5]["id"]
    (root / train["images"][5]["filename"]).write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    val = _annotations(root, "val")
    bad_label_id = val["annotations"][3]["image_id"]
    val["annotations"][3]["category_ids"] = [0, 42]
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    return corrupt_id, bad_label_id


def test_validate_passes_and_writes_clean_handle(tiny_demo, tmp_path):
    out = tmp_path / "validate"
    result = run_validate(ValidateConfig(workers=2), DataConfig(source="demo", root=tiny_demo), out, NO_TRACKING)
    assert result.n_records == 192 and result.n_quarantined == 0
    report = json.loads((out / "report.json").read_text())
    assert report["success"] and report["counts"]["clean"] == 192
    assert "PASSED" in (out / "summary.md").read_text()
    assert (out / "quarantine.csv").read_text().splitlines() == [
        "image_id,image_path,split,label_ids,row_number,checks,reason"
    ]
    handle = ValidatedData.load(out)
    assert handle.splits == ["train", "val", "test"] and handle.data_hash.startswith("sha256:")
    assert [len(load_split(handle.data, s)) for s in handle.splits] == [96, 48, 48]


def test_validate_fail_policy_names_the_bad_records(demo_copy, tmp_path):
    corrupt_id, bad_label_id = _break_records(demo_copy)
    out = tmp_path / "validate"
    with pytest.raises(StepError) as caught:
        run_validate(
            ValidateConfig(policy="fail", workers=2), DataConfig(source="demo", root=demo_copy), out, NO_TRACKING
        )
    message = str(caught.value)
    assert corrupt_id in message and bad_label_id in message
    assert "label ids out of range [0, 10): [42]" in message
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is False and report["usable"] is False
    assert {r["image_id"] for r in report["offending_records"]} == {corrupt_id, bad_label_id}
    assert "FAILED" in (out / "summary.md").read_text()
    assert not (out / "validated_data.json").exists()  # nothing for later steps to consume


def test_quarantine_sets_records_aside_and_later_steps_skip_them(demo_copy, tmp_path):
    corrupt_id, bad_label_id = _break_records(demo_copy)
    out = tmp_path / "validate"
    result = run_validate(
        ValidateConfig(policy="quarantine", workers=2), DataConfig(source="demo", root=demo_copy), out, NO_TRACKING
    )
    assert result.n_records == 192 and result.n_quarantined == 2
    with (out / "quarantine.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["image_id"]: r["split"] for r in rows} == {corrupt_id: "train", bad_label_id: "val"}
    assert all(r["reason"] for r in rows)
    assert "quarantined: 2" in (out / "summary.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["quarantined"] == 2 and report["counts"]["clean"] == 190

    handle = ValidatedData.load(out)
    assert handle.counts["per_split"] == {"train": 95, "val": 47, "test": 48}
    train_ids = {r.image_id for r in load_split(handle.data, "train").records}
    val_ids = {r.image_id for r in load_split(handle.data, "val").records}
    assert corrupt_id not in train_ids and bad_label_id not in val_ids and len(train_ids) == 95

    # The extract step (a consumer) reads through the handle: the quarantined image never reaches it.
    extracted = run_extract(
        ExtractStepConfig(batch_size=32, tokens_per_image=8, shard_size=64, device="cpu"),
        handle,
        ModelConfig.from_dict(TINY_MODEL),
        32,
        0,
        tmp_path / "extract",
        NO_TRACKING,
    )
    shard_ids = set()
    for path in sorted(extracted.features_dir.glob("tokens-*-layer3.parquet")):
        shard_ids |= set(pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist())
    assert shard_ids == train_ids


@pytest.mark.slow
def test_token_shards_are_fixed_size_float16_and_resume(tiny_demo, tmp_path):
    handle = run_validate(
        ValidateConfig(workers=2), DataConfig(source="demo", root=tiny_demo), tmp_path / "v", NO_TRACKING
    ).validated
    model_cfg = ModelConfig.from_dict(TINY_MODEL)
    cfg = ExtractStepConfig(batch_size=32, tokens_per_image=8, shard_size=40, device="cpu")
    out = tmp_path / "extract"
    first = run_extract(cfg, handle, model_cfg, 32, 0, out, NO_TRACKING)
    assert first.summary["shards"] == 3 and first.summary["shards_reused"] == 0
    table = pq.read_table(out / "features" / "tokens-00000-layer3.parquet")
    tokens_type = table.schema.field("tokens").type
    # layer3 of a 32 px image is 2 x 2 = 4 positions (< 8 requested), 256 channels
    assert str(tokens_type) == "fixed_size_list<element: halffloat>[1024]"
    assert table.num_rows == 40 and set(table.column("num_tokens").to_pylist()) == {4}
    # layer2 is 4 x 4 = 16 positions: 8 of them are sampled per image
    layer2 = pq.read_table(out / "features" / "tokens-00000-layer2.parquet")
    assert set(layer2.column("num_tokens").to_pylist()) == {8}

    # Backbone saved = the backbone the tokens came from: recompute image 0's tokens.
    from mccl_core.data import build_transforms
    from mccl_core.training.run import initial_backbone

    backbone = initial_backbone(model_cfg, 0)
    backbone.load_state_dict(torch.load(first.backbone_init, weights_only=True))
    image = load_split(handle.data, "train", build_transforms(32, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD))[
        0
    ]["image"]
    with torch.no_grad():
        layer3 = backbone.eval().forward_features(image[None])[-1]  # stages shallow -> deep: layer2, layer3
    expected = torch.nn.functional.normalize(layer3.flatten(2).transpose(1, 2), dim=-1)[0]
    _, stages, labels = next(iter_token_shards(out / "features"))
    assert stages["layer3"].shape == (40, 4, 256) and labels.shape == (40, 10)
    torch.testing.assert_close(stages["layer3"][0], expected, atol=2e-3, rtol=0)  # float16 storage

    # Resume: a deleted shard is rewritten, the others are kept untouched.
    kept = out / "features" / "tokens-00000-layer2.parquet"
    mtime = kept.stat().st_mtime_ns
    (out / "features" / "tokens-00001-layer3.parquet").unlink()
    manifest = (out / "features" / "features.json").read_bytes()
    second = run_extract(cfg, handle, model_cfg, 32, 0, out, NO_TRACKING)
    assert second.summary["shards_reused"] == 2 and kept.stat().st_mtime_ns == mtime
    # the folder DVC hashes says what the shards are, not how this run got them
    assert (out / "features" / "features.json").read_bytes() == manifest
    # Other inputs (token count) -> old shards are not mixed in.
    third = run_extract(
        ExtractStepConfig(batch_size=32, tokens_per_image=2, shard_size=40, device="cpu"),
        handle,
        model_cfg,
        32,
        0,
        out,
        NO_TRACKING,
    )
    assert third.summary["shards_reused"] == 0
    assert pq.read_table(kept).column("num_tokens")[0].as_py() == 2  # 2 of layer2's 16 positions

    # CPI over the shards: one bank, allocation table as CSV + Markdown, label embeddings.
    result = run_cluster(
        ClusterStepConfig(device="cpu"), handle, model_cfg, out / "features", tmp_path / "cluster", NO_TRACKING
    )
    bank = PrototypeBank.load(result.prototypes)
    with result.allocation_csv.open() as handle_csv:
        rows = list(csv.DictReader(handle_csv))
    assert [int(r["prototypes"]) for r in rows] == [r.prototypes for r in bank.allocation]
    assert sum(int(r["train_images"]) > 0 for r in rows) == 10
    assert bank.stages == ("layer2", "layer3") and result.summary["label_embedding_dim"] == 384


def test_tracked_step_nests_runs_under_one_parent_and_ends_every_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from mccl_core.tracking.steps import finish_parent_run

    monkeypatch.delenv("MCCL_PIPELINE_EXECUTION", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    options = TrackingOptions(project_dir=tmp_path, run_ref=tmp_path / "outputs" / "mlflow_run.json")
    with tracked_step(
        "validate", options, {"validate": {"policy": "fail"}}, {"validate": {"policy": "fail"}}, "sha256:x"
    ) as first:
        first.log_metrics({"records": 3})
        first.log_headline({"clean": 3})
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Every step ends its run and the parent: nothing stays RUNNING between steps.
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"
    with tracked_step("extract", options, {"extract": {"batch_size": 8}}) as second:
        assert client.get_run(first.parent_run_id).info.status == "RUNNING"  # while a step works
        second.log_metrics({"loss": 0.5}, step=0)
        second.log_metrics({"loss": 0.25}, step=1)
    assert first.parent_run_id == second.parent_run_id is not None
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params == {"validate.policy": "fail"}
    # Headline metrics and per-epoch series reach the parent (the runs' compare view); plain
    # step metrics stay on the step run.
    assert parent.data.metrics == {"clean": 3.0, "loss": 0.25}
    assert [m.value for m in client.get_metric_history(parent.info.run_id, "loss")] == [0.5, 0.25]
    step = client.get_run(first.run_id)
    assert step.data.tags["mlflow.parentRunId"] == first.parent_run_id
    assert step.data.tags["mccl.dvc.data_hash"] == "sha256:x" and step.data.params == {"validate.policy": "fail"}
    assert step.data.metrics == {"records": 3.0, "clean": 3.0}

    with pytest.raises(RuntimeError), tracked_step("train", options):
        raise RuntimeError("boom")
    assert client.get_run(first.parent_run_id).info.status == "FAILED"  # follows its latest child
    with tracked_step("register", options) as last:
        finish_parent_run(last)
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"
    with tracked_step("validate", options) as next_pipeline:  # a complete pipeline is not reused
        pass
    assert next_pipeline.parent_run_id not in (None, first.parent_run_id)


def test_each_pipeline_execution_gets_its_own_parent_and_closes_an_abandoned_one(tmp_path, monkeypatch):
    """Under DVC the execution is the `dvc` process; here the orchestrator names it."""
    from mlflow import MlflowClient

    options = TrackingOptions(project_dir=tmp_path, run_ref=tmp_path / "outputs" / "mlflow_run.json")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MCCL_PIPELINE_EXECUTION", "repro-1")
    with tracked_step("validate", options) as first:
        pass
    with tracked_step("extract", options) as second:
        pass
    assert first.parent_run_id == second.parent_run_id
    # A killed execution leaves its parent and the step in flight RUNNING ...
    with tracked_step("train", options) as killed:
        client.update_run(killed.parent_run_id, status="RUNNING")
        killed_run_id = killed.run_id
    client.update_run(killed_run_id, status="RUNNING")
    client.update_run(first.parent_run_id, status="RUNNING")
    # ... and the next execution starts its own parent and marks those KILLED.
    monkeypatch.setenv("MCCL_PIPELINE_EXECUTION", "repro-2")
    with tracked_step("train", options) as rerun:
        pass
    assert rerun.parent_run_id != first.parent_run_id
    assert client.get_run(first.parent_run_id).info.status == "KILLED"
    assert client.get_run(killed_run_id).info.status == "KILLED"
    runs = client.search_runs([client.get_run(first.run_id).info.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_pipeline_execution_is_the_dvc_process_above_the_step(tmp_path):
    """Two commands started by one `dvc`-named process share the execution id; another such
    process gives another id (a stand-in script called `dvc` runs them, as DVC runs stages)."""
    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text(
        "import subprocess, sys\n"
        "probe = 'from mccl_core.tracking.steps import pipeline_execution_id as e; print(e())'\n"
        "for _ in range(2):\n"
        "    subprocess.run(['sh', '-c', f'{sys.executable} -c \"{probe}\"'], check=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MCCL_PIPELINE_EXECUTION"} | {"DVC_STAGE": "train"}
    ids = []
    for _ in range(2):
        out = subprocess.run([sys.executable, str(fake_dvc)], env=env, capture_output=True, text=True, check=True)
        ids.append(out.stdout.split())
    assert ids[0][0] == ids[0][1] and ids[0][0].startswith("dvc:")
    assert ids[1][0] == ids[1][1] and ids[1][0] != ids[0][0]


@pytest.mark.slow
def test_step_cli_fails_with_the_records_and_exit_code_1(demo_copy, tmp_path):
    corrupt_id, bad_label_id = _break_records(demo_copy)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"data": {"source": "demo", "root": str(demo_copy)}, "validate": {"workers": 2}}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mccl_core.cli",
            "step",
            "validate",
            "--params",
            str(params),
            "--no-tracking",
            "--out",
            str(tmp_path / "v"),
        ],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "ERROR: data validation failed" in proc.stderr and corrupt_id in proc.stderr and bad_label_id in proc.stderr


def test_mccl_step_dispatch_lists_the_steps(capsys):
    from mccl_core.steps.cli import main

    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "demo,validate,extract,cluster,train,evaluate,explain,register" in capsys.readouterr().out
    assert main(["nope"]) == 2


def test_step_cli_options_come_from_the_step_spec(capsys):
    from mccl_core.steps.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--validate", "--extract", "--cluster", "--demo", "--out", "--set", "--params"):
        assert option in text
    assert "model, train, launch" in text


def test_run_step_checks_inputs_and_params_by_name(tmp_path):
    from mccl_core.config import ConfigError, apply_overrides
    from mccl_core.steps.contract import run_step

    with pytest.raises(StepError, match="needs the output folder of step 'validate'"):
        run_step("extract", {}, {}, tmp_path, NO_TRACKING)
    with pytest.raises(StepError, match="takes inputs"):
        run_step("cluster", {}, {"validate": tmp_path, "extract": tmp_path, "train": tmp_path}, tmp_path, NO_TRACKING)
    with pytest.raises(StepError, match="does not exist"):
        run_step("evaluate", {}, {"validate": tmp_path / "nope", "train": tmp_path}, tmp_path, NO_TRACKING)
    with pytest.raises(ConfigError, match="evaluate.batch_sise"):
        run_step(
            "evaluate",
            {"evaluate": {"batch_sise": 3}},
            {"validate": tmp_path, "train": tmp_path},
            tmp_path,
            NO_TRACKING,
        )
    assert apply_overrides({"train": {"lr": 1}}, ["train.lr=3e-4", "model.mcc.temperature=0.1"]) == {
        "train": {"lr": 3e-4},
        "model": {"mcc": {"temperature": 0.1}},
    }
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        apply_overrides({}, ["lr=3"])


def test_one_config_loader_coerces_kfp_floats_and_names_bad_keys():
    from mccl_core.config import ConfigError
    from mccl_core.launch.config import LaunchConfig
    from mccl_core.steps.train import SPEC as TRAIN_SPEC

    # Kubeflow hands dict parameters over as protobuf Structs: every number is a float.
    params = {
        "model": {"backbone": {"arch": "resnet18", "weights": "none", "stages": ["layer4"]}, "cpi": {"k_min": 2.0}},
        "train": {"epochs": 3.0, "lr": 1, "image_size": 64.0},
        "launch": {"nproc_per_node": 2.0},
    }
    cfg = TRAIN_SPEC.load_config(params)
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int and cfg.train.lr == 1.0
    assert cfg.model.cpi.k_min == 2 and type(cfg.model.cpi.k_min) is int and cfg.launch.nproc_per_node == 2
    with pytest.raises(ConfigError, match=r"train.epochs=2.5: expected an integer"):
        TRAIN_SPEC.load_config({**params, "train": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match="launch.kubernetes.namespce"):
        LaunchConfig.from_dict({"kubernetes": {"namespce": "x"}})
    with pytest.raises(ConfigError, match="pytorchjob is for >= 2 nodes"):
        LaunchConfig.from_dict({"backend": "pytorchjob"})


def _dead_server() -> str:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_tracking_server_does_not_fail_a_step_but_is_reported(tiny_demo, tmp_path, caplog):
    options = TrackingOptions(project_dir=tmp_path, tracking_uri=_dead_server(), run_ref=tmp_path / "ref.json")
    result = run_validate(ValidateConfig(workers=2), DataConfig(source="demo", root=tiny_demo), tmp_path / "v", options)
    assert result.n_records == 192 and result.mlflow_run_id is None
    journal = tmp_path / "outputs" / "mlflow_not_logged.jsonl"
    kinds = {json.loads(line)["kind"] for line in journal.read_text().splitlines()}
    assert {"runs", "params", "metrics", "artifacts"} <= kinds
    assert "not logged to MLflow" in caplog.text


def test_register_fails_clearly_without_the_registry(tmp_path):
    from mccl_core.steps.register import RegisterConfig, run_register

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"threshold": 0.3, "selection_score": 0.5}))
    uri = _dead_server()
    with pytest.raises(StepError, match=f"model registry at {uri} is unreachable"):
        run_register(RegisterConfig(), tmp_path / "bundle", metrics, tmp_path / "out",
                     TrackingOptions(project_dir=tmp_path, tracking_uri=uri))  # fmt: skip
    with pytest.raises(StepError, match="needs MLflow tracking"):
        run_register(RegisterConfig(), tmp_path / "bundle", metrics, tmp_path / "out", NO_TRACKING)


def test_train_launch_command():
    from mccl_core.launch.config import LaunchConfig
    from mccl_core.launch.local import torchrun_command

    single = torchrun_command(LaunchConfig(), ["--params", "p.yaml"])
    assert single == [sys.executable, "-m", "mccl_core.training.cli", "--params", "p.yaml"]
    four = torchrun_command(LaunchConfig(nproc_per_node=4), ["--params", "p.yaml"])
    assert four[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone"]
    assert four[-4:] == ["-m", "mccl_core.training.cli", "--params", "p.yaml"]
    nodes = torchrun_command(LaunchConfig(nproc_per_node=2, nnodes=3, node_rank=1, rdzv_endpoint="n0:29400"), [])
    assert "--standalone" not in nodes and nodes[nodes.index("--rdzv_endpoint") + 1] == "n0:29400"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        LaunchConfig(nnodes=2)
    assert LaunchConfig(backend="pytorchjob", nnodes=2).world_size == 2


def test_cpi_tokens_equal_the_tokens_of_the_first_training_forward(tiny_demo, tiny_demo_label_embeddings, tmp_path):
    """CPI clusters what training sees: extract-step tokens == the model's own forward at step 0
    (BatchNorm on running statistics in both; with batch statistics they would differ)."""
    from mccl_core.models import build_model
    from mccl_core.training.config import TrainConfig
    from mccl_core.training.loop import set_train_mode
    from mccl_core.training.run import TrainArtifacts, eval_transform, prepare_inputs

    handle = run_validate(
        ValidateConfig(workers=2), DataConfig(source="demo", root=tiny_demo), tmp_path / "v", NO_TRACKING
    ).validated
    model_cfg = ModelConfig.from_dict({
        **TINY_MODEL, "mcc": {"enabled": False},
        "backbone": {"arch": "efficientnet_lite0", "stages": ["stage3", "stage4"], "weights": "package"},
    })  # fmt: skip
    extracted = run_extract(ExtractStepConfig(batch_size=16, tokens_per_image=0, shard_size=96, device="cpu"),
                            handle, model_cfg, 64, 0, tmp_path / "extract", NO_TRACKING)  # fmt: skip
    _, shard_tokens, _ = next(iter_token_shards(extracted.features_dir))

    train_cfg = TrainConfig(image_size=64, output_dir=tmp_path / "train")
    assert train_cfg.freeze_bn_stats  # the default
    inputs = prepare_inputs(handle.data, model_cfg, train_cfg,
                            TrainArtifacts(None, extracted.backbone_init, tiny_demo_label_embeddings))  # fmt: skip
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, len(inputs.class_names), inputs.label_embeddings, inputs.cooccurrence, None)
    model.backbone.load_state_dict(inputs.backbone_state)  # what train() does before step 0
    images = torch.stack(
        [load_split(handle.data, "train", eval_transform(model_cfg, 64))[i]["image"] for i in range(16)]
    )

    def tokens(freeze: bool) -> list[torch.Tensor]:
        set_train_mode(model, freeze)
        with torch.no_grad():
            maps = model.forward_features(images)
        return [torch.nn.functional.normalize(m.flatten(2).transpose(1, 2), dim=-1) for m in maps]

    for stage, ours in zip(("stage3", "stage4"), tokens(freeze=True)):
        torch.testing.assert_close(shard_tokens[stage][:16], ours, atol=2e-3, rtol=0)  # float16 storage
    batch_stat_tokens = tokens(freeze=False)[0]  # the old mode: batch statistics
    cosine = (batch_stat_tokens * shard_tokens["stage3"][:16]).sum(-1).mean()
    assert cosine < 0.99


def test_validation_limits_are_never_laxer_than_the_loader():
    assert ValidateConfig(max_pixels=1000).limits(500).max_pixels == 500
    assert ValidateConfig(max_pixels=1000).limits(5000).max_pixels == 1000
    assert ValidateConfig(max_pixels=1000).limits(None).max_pixels == 1000


def test_the_pipeline_and_one_process_train_the_same_model_from_the_same_seed(tiny_demo, tmp_path):
    """extract -> cluster (the dvc / Kubeflow path) and CPI in the training process (`mccl
    experiment`, `bench/ablations.py`) build the same prototype bank bit for bit, and the model
    built from it starts from the same weights whichever path ran first. MCCL amplifies the
    smallest difference: float16 rounding of the shards (<= 3e-5 in the prototypes) and one
    throwaway timm model drawing from the global generator made `dvc repro` and the runner train
    different models for the demo's seed 0 (test macro-F1 0.744 against 0.945)."""
    from mccl_core.models import build_model
    from mccl_core.models.backbone import _full_model_keys
    from mccl_core.training.config import TrainConfig
    from mccl_core.training.run import TrainArtifacts, prepare_inputs

    model_cfg = ModelConfig.from_dict({
        **TINY_MODEL, "backbone": {"arch": "efficientnet_lite0", "stages": ["stage3", "stage4"], "weights": "package"},
    })  # fmt: skip
    handle = run_validate(
        ValidateConfig(workers=2), DataConfig(source="demo", root=tiny_demo), tmp_path / "v", NO_TRACKING
    ).validated
    extract_cfg = ExtractStepConfig(batch_size=32, tokens_per_image=8, shard_size=40, device="cpu")
    extracted = run_extract(extract_cfg, handle, model_cfg, 32, 0, tmp_path / "extract", NO_TRACKING)
    clustered = run_cluster(ClusterStepConfig(device="cpu"), handle, model_cfg, extracted.features_dir,
                            tmp_path / "cluster", NO_TRACKING)  # fmt: skip
    train_cfg = TrainConfig(image_size=32, output_dir=tmp_path / "train", device="cpu")
    pipeline = prepare_inputs(handle.data, model_cfg, train_cfg,
                              TrainArtifacts(clustered.prototypes, extracted.backbone_init, clustered.label_embeddings))  # fmt: skip
    _full_model_keys.cache_clear()  # a fresh process: the package weights' key list not built yet
    in_process = prepare_inputs(handle.data, model_cfg, train_cfg, TrainArtifacts(label_embeddings=clustered.label_embeddings),
                                extract_cfg=extract_cfg.extract_config())  # fmt: skip
    for stage in model_cfg.backbone.stages:
        assert torch.equal(in_process.prototype_bank.prototypes[stage], pipeline.prototype_bank.prototypes[stage])
        assert torch.equal(in_process.prototype_bank.owners[stage], pipeline.prototype_bank.owners[stage])

    def initial_weights(inputs, cold_cache: bool) -> list[torch.Tensor]:
        if cold_cache:
            _full_model_keys.cache_clear()
        torch.manual_seed(0)  # what train() does before build_model
        model = build_model(model_cfg, len(inputs.class_names), inputs.label_embeddings, inputs.cooccurrence,
                            inputs.prototype_bank)  # fmt: skip
        return [p.detach().clone() for p in model.parameters()]

    cold, warm = initial_weights(pipeline, cold_cache=True), initial_weights(in_process, cold_cache=False)
    assert len(cold) == len(warm) and all(torch.equal(a, b) for a, b in zip(cold, warm))
