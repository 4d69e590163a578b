"""`mccl experiment`: the variant runner (equal budget, model cache), each experiment on tiny
settings (CSV / Markdown / PNG with the right rows), MLflow parent + nested runs, and a run
without mlflow installed."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mccl_core.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _params(root: Path, tmp: Path, **extra) -> Path:
    params = {
        "data": {"source": "demo", "root": str(root)},
        "model": {
            "backbone": {"arch": "resnet18", "stages": ["layer3", "layer4"], "weights": "none"},
            "pki": {"dim": 16, "decoder_layers": 1, "heads": 2, "ff_dim": 32, "dropout": 0.0, "label_text": "onehot"},
            "cpi": {"k_max": 2, "max_patches_per_class": 500},
        },
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "image_size": 32, "num_workers": 0, "device": "cpu",
                  "max_steps_per_epoch": 1, "deterministic": True},
        "tracking": {"enabled": False},
        **extra,
    }  # fmt: skip
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """One model cache for the module: a variant trained by one test (same params, same
    fingerprint) is reused by the next, as `mccl experiment` runs share `--models-dir`."""
    return tmp_path_factory.mktemp("experiment-models")


def _main(*argv: str) -> int:
    from mccl_core.experiments.cli import main

    return main(list(argv))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _outputs(out: Path, name: str) -> list[dict[str, str]]:
    for ext in ("csv", "md", "png", "json"):
        assert (out / f"{name}.{ext}").stat().st_size > 0, ext
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    return _csv(out / f"{name}.csv")


# ------------------------------------------------------------------------------------------------
# Variants and params (no training)
# ------------------------------------------------------------------------------------------------


def test_stage_variants_follow_the_backbone_family():
    from mccl_core.experiments.experiments import stages_variants

    resnet = stages_variants({"model": {"backbone": {"arch": "resnet18"}}})
    assert [v.name for v in resnet] == ["L3-L4", "L2-L4", "L1-L4", "L1-L4+gate"]
    assert resnet[1].overrides["model.backbone.stages"] == ["layer2", "layer3", "layer4"]
    assert resnet[3].overrides["model.pki.stage_gate"] == "softmax"
    lite = stages_variants({"model": {"backbone": {"arch": "efficientnet_lite0"}}})
    assert lite[0].overrides["model.backbone.stages"] == ["stage3", "stage4"]


def test_variants_may_not_change_the_budget_and_set_applies():
    from mccl_core.config import apply_overrides
    from mccl_core.experiments.runner import Variant, resolve_params

    params = {"model": {"pki": {"dim": 8}}, "train": {"epochs": 1}}
    apply_overrides(params, ["train.epochs=3", "model.pki.label_text=name"])
    assert params == {"model": {"pki": {"dim": 8, "label_text": "name"}}, "train": {"epochs": 3}}
    resolved = resolve_params(params, Variant("g", {"model.pki.stage_gate": "softmax"}))
    assert resolved["model"]["pki"] == {"dim": 8, "label_text": "name", "stage_gate": "softmax"}
    with pytest.raises(ConfigError, match="equal budget"):
        resolve_params(params, Variant("bad", {"train": {"lr": 1.0}}))


def test_robustness_and_data_size_carry_the_mcc_off_arm():
    """MCCL against the plain backbone mixes MCC up with the decoder: MCC off separates them."""
    from mccl_core.experiments.experiments import data_size_variants, robustness_variants

    params = {"model": {"loss": {"kind": "bce"}}}
    variants = robustness_variants(params)
    assert [v.name for v in variants] == ["mccl", "no_mcc", "baseline_bce"]
    assert variants[1].overrides == {"model.mcc.enabled": False}
    assert [v.name for v in data_size_variants(params)] == ["mccl", "no_mcc", "baseline_bce"]


def test_model_cache_key_follows_the_labels_and_the_code(tiny_demo, tmp_path, monkeypatch):
    """The experiment cache shares the train step's fingerprint: editing a label file or the
    training code gives another key (a stale model is never reused); a run-only field does not."""
    import mccl_core.training.fingerprint as fingerprint_module
    from mccl_core.experiments.runner import resolve_configs

    params = yaml.safe_load(_params(tiny_demo, tmp_path).read_text())
    key = resolve_configs(params).fingerprint()
    assert resolve_configs(params).fingerprint() == key  # stable
    params["train"]["num_workers"] = 2
    assert resolve_configs(params).fingerprint() == key  # where it runs is not what it learns
    copy = tmp_path / "demo"
    shutil.copytree(tiny_demo, copy)
    params["data"]["root"] = str(copy)
    moved = resolve_configs(params).fingerprint()  # same labels, another folder: the config differs
    test_file = copy / "annotations" / "test.json"
    document = json.loads(test_file.read_text())
    document["annotations"][0]["category_ids"] = [(document["annotations"][0]["category_ids"][0] + 1) % 10]
    test_file.write_text(json.dumps(document))
    relabelled = resolve_configs(params).fingerprint()
    assert relabelled != moved
    monkeypatch.setattr(fingerprint_module, "training_code_hash", lambda: "edited")
    assert resolve_configs(params).fingerprint() != relabelled


def test_help_lists_every_experiment(capsys):
    """argparse %-formats help strings: the data-size summary's "10-100 %" once broke --help."""
    from mccl_core.experiments.cli import build_parser
    from mccl_core.experiments.experiments import EXPERIMENTS

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["data-size", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(f"{name}:" in text for name in EXPERIMENTS) and "10-100 % of the training split" in text


def test_unknown_variant_is_refused(tmp_path, capsys):
    assert _main("text", "--params", str(_params(tmp_path, tmp_path)), "--variants", "nope", "--no-tracking") == 2
    assert "unknown variant" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Experiments on the tiny demo
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stages_experiment_and_model_cache(tiny_demo, models_dir, tmp_path, caplog):
    """Stages table with the learned gate; then robustness reuses the identical MCCL model. The
    module's first test to train: both stage variants are new in the shared cache."""
    params = _params(tiny_demo, tmp_path)
    out = tmp_path / "exp"
    before = {p.name for p in models_dir.iterdir()}
    assert _main("stages", "--params", str(params), "--out", str(out / "stages"), "--no-tracking",
                 "--variants", "L3-L4,L1-L4+gate", "--models-dir", str(models_dir)) == 0  # fmt: skip
    rows = _outputs(out / "stages", "stages")
    assert [r["variant"] for r in rows] == ["L3-L4", "L1-L4+gate"]
    for row in rows:
        assert 0 <= float(row["test_macro_f1"]) <= 1 and 0 <= float(row["test_map"]) <= 1
        assert float(row["val_macro_f1"]) >= 0 and row["threshold"] and row["train_seconds"]
    assert rows[0]["stage_gate"] == "" and "layer1=" in rows[1]["stage_gate"]
    assert {"gate_layer1", "gate_layer4"} <= set(rows[1]) and float(rows[1]["gate_layer4"]) > 0
    assert "learned gate" in (out / "stages" / "stages.md").read_text()
    models = sorted(p.name for p in models_dir.iterdir())
    assert len(set(models) - before) == 2

    caplog.clear()
    with caplog.at_level("INFO", logger="mccl_core.experiments.runner"):
        assert _main("robustness", "--params", str(params), "--out", str(out / "robustness"), "--no-tracking",
                     "--variants", "mccl", "--corruptions", "jpeg30,down2", "--models-dir", str(models_dir)) == 0  # fmt: skip
    assert "reusing cached model" in caplog.text
    assert sorted(p.name for p in models_dir.iterdir()) == models  # nothing new trained
    rows = _outputs(out / "robustness", "robustness")
    assert [(r["variant"], r["corruption"]) for r in rows] == [("mccl", "clean"), ("mccl", "jpeg30"),
                                                                ("mccl", "down2")]  # fmt: skip
    assert float(rows[0]["drop_macro_f1"]) == 0.0
    assert (out / "robustness" / "robustness_map.png").is_file()


def test_text_experiment(tiny_demo, tiny_demo_label_embeddings, models_dir, tmp_path):
    from mccl_core.data import DataConfig, load_split
    from mccl_core.experiments.runner import label_embedding_cache
    from mccl_core.models import ModelConfig

    out = tmp_path / "exp" / "text"
    names = list(load_split(DataConfig(source="demo", root=tiny_demo), "train").class_names)
    cache = label_embedding_cache(tmp_path / "exp" / "cache", ModelConfig.from_dict({"pki": {}}), names)
    cache.parent.mkdir(parents=True)
    shutil.copy(tiny_demo_label_embeddings, cache)  # precomputed: no encoder needed
    assert _main("text", "--params", str(_params(tiny_demo, tmp_path)), "--out", str(out), "--no-tracking",
                 "--variants", "description,onehot", "--models-dir", str(models_dir)) == 0  # fmt: skip
    rows = _outputs(out, "text")
    assert [r["variant"] for r in rows] == ["description", "onehot"]
    assert "no second offline encoder was available" in (out / "text.md").read_text()


@dataclass
class _FakeResult:
    pairs: int
    attention: float
    assignment: float | None
    random: float
    centre: float


def test_pointing_experiment_against_the_api(tiny_demo, models_dir, tmp_path, monkeypatch):
    """The pointing table from pointing_game's documented API (a stand-in module here)."""
    calls = []

    def pointing_game(model, meta, data_cfg, split="test", device=None):
        calls.append(split)
        has_mcc = getattr(model, "clues", None) is not None
        return _FakeResult(12, 0.5, 0.25 if has_mcc else None, 0.1, 0.3)

    fake = types.ModuleType("mccl_core.explain.pointing")
    fake.pointing_game = pointing_game
    fake.PointingDataError = type("PointingDataError", (ValueError,), {})
    monkeypatch.setitem(sys.modules, "mccl_core.explain.pointing", fake)
    out = tmp_path / "exp" / "pointing"
    assert _main("pointing", "--params", str(_params(tiny_demo, tmp_path)), "--out", str(out), "--no-tracking",
                 "--models-dir", str(models_dir)) == 0  # fmt: skip
    rows = _outputs(out, "pointing")
    assert [r["variant"] for r in rows] == ["mccl", "no_mcc"] and calls == ["test", "test"]
    assert rows[0]["assignment_hit"] == "0.25" and rows[1]["assignment_hit"] == ""
    assert rows[0]["centre_hit"] == rows[1]["centre_hit"] == "0.3"  # the centre pointer beside the random one
    assert "| no_mcc | 0 | 0.500 | – |" in (out / "pointing.md").read_text()  # per-seed table
    assert "| no_mcc | 0 | 0.500 | – | 0.100 | 0.300 |" in (out / "pointing.md").read_text()  # summary: mean, no std
    assert f"Data: `demo` ({tiny_demo})" in (out / "pointing.md").read_text()  # says what it ran on


@pytest.mark.slow
def test_pointing_experiment_with_the_real_pointing_game(tiny_demo, models_dir, tmp_path):
    pytest.importorskip("mccl_core.explain.pointing")
    out = tmp_path / "exp" / "pointing"
    assert _main("pointing", "--params", str(_params(tiny_demo, tmp_path)), "--out", str(out), "--no-tracking",
                 "--variants", "mccl", "--models-dir", str(models_dir)) == 0  # fmt: skip
    (row,) = _outputs(out, "pointing")
    assert int(row["pairs"]) > 0 and 0 <= float(row["attention_hit"]) <= 1 and 0 < float(row["random_hit"]) < 1
    assert 0 <= float(row["assignment_hit"]) <= 1


@pytest.mark.slow
def test_tracking_parent_and_nested_runs(tiny_demo, models_dir, tmp_path, monkeypatch):
    """One parent run per experiment, one nested run per (variant, seed) with params and
    metrics, the seed summary on the parent and in the JSON (grouped per corruption)."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = _params(tiny_demo, tmp_path, tracking={"enabled": True, "experiment": "exp-test", "tracking_uri": uri})
    assert _main("robustness", "--params", str(params), "--out", str(tmp_path / "exp" / "robustness"),
                 "--corruptions", "noise0.10", "--models-dir", str(models_dir), "--seeds", "0,1",
                 "--variants", "mccl,baseline_asl") == 0  # fmt: skip
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exp-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "experiment:robustness"
    assert parents[0].info.status == "FINISHED"
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id),
                      key=lambda r: r.info.run_name)  # fmt: skip
    assert [r.info.run_name for r in children] == ["baseline_asl seed 0", "baseline_asl seed 1", "mccl seed 0",
                                                   "mccl seed 1"]  # fmt: skip
    for child in children:
        assert {"test_macro_f1", "test_map_clean", "test_macro_f1_noise0.10", "val_macro_f1"} <= set(child.data.metrics)
        assert child.data.params["train.epochs"] == "1" and "model.fingerprint" in child.data.params
        assert child.data.params["train.seed"] == child.data.tags["mccl.experiment.seed"] == child.info.run_name[-1]
    assert children[0].data.params["model.variant"] == "baseline"
    assert children[0].data.params["model.fingerprint"] != children[1].data.params["model.fingerprint"]
    parent_metrics = parents[0].data.metrics
    assert {"clean.mccl.test_map_mean", "clean.mccl.test_map_std", "noise0.10.baseline_asl.diff_map",
            "noise0.10.baseline_asl.diff_map_low"} <= set(parent_metrics)  # fmt: skip
    record = json.loads((tmp_path / "exp" / "robustness" / "robustness.json").read_text())
    assert record["mlflow_parent_run_id"] == parents[0].info.run_id and record["seeds"] == [0, 1]
    summary = {(r["group"], r["variant"]): r for r in record["summary"]}
    assert set(summary) == {(g, v) for g in ("clean", "noise0.10") for v in ("mccl", "baseline_asl")}
    assert summary[("clean", "baseline_asl")]["verdict_map"] in ("better", "worse", "within noise")
    assert summary[("clean", "mccl")]["test_map_mean"] == pytest.approx(parent_metrics["clean.mccl.test_map_mean"])
    assert "± " in (tmp_path / "exp" / "robustness" / "robustness.md").read_text()


@pytest.mark.slow
def test_runs_without_mlflow(tiny_demo, tmp_path):
    """--no-tracking never imports mlflow (nor great_expectations): the GPU machine has neither.
    Its own model cache: the training path itself must run without them."""
    params = _params(tiny_demo, tmp_path)
    out = tmp_path / "exp" / "stages"
    code = (
        "import sys; sys.modules['mlflow'] = None; sys.modules['great_expectations'] = None\n"
        "from mccl_core.experiments.cli import main\n"
        f"rc = main(['stages', '--params', {str(params)!r}, '--out', {str(out)!r}, '--no-tracking', "
        "'--variants', 'L3-L4'])\n"
        "assert 'mlflow' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "raise SystemExit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["variant"] for r in _outputs(out, "stages")] == ["L3-L4"]


def test_data_size_cuts_only_the_training_split_nested_and_keeps_every_class(tiny_demo):
    from mccl_core.data import DataConfig, load_split

    full = load_split(DataConfig(source="demo", root=tiny_demo), "train")
    cuts = {f: load_split(DataConfig(source="demo", root=tiny_demo, train_fraction=f), "train") for f in (0.1, 0.5)}
    ids = {f: {r.image_id for r in d.records} for f, d in cuts.items()}
    assert ids[0.1] < ids[0.5] < {r.image_id for r in full.records}  # nested
    assert len(ids[0.5]) >= round(0.5 * len(full)) and len(ids[0.1]) < len(ids[0.5])
    for cut in cuts.values():
        assert cut.label_matrix().sum(0).min() >= 1  # every class keeps an image
    for split in ("val", "test"):
        assert len(load_split(DataConfig(source="demo", root=tiny_demo, train_fraction=0.1), split)) == len(
            load_split(DataConfig(source="demo", root=tiny_demo), split)
        )
    with pytest.raises(ConfigError, match="train_fraction"):
        DataConfig(source="demo", root=tiny_demo, train_fraction=0)


def test_data_size_experiment(tiny_demo, models_dir, tmp_path):
    out = tmp_path / "exp" / "data-size"
    assert _main("data-size", "--params", str(_params(tiny_demo, tmp_path)), "--out", str(out), "--no-tracking",
                 "--variants", "mccl,baseline_asl", "--fractions", "0.5,1", "--models-dir", str(models_dir)) == 0  # fmt: skip
    rows = _outputs(out, "data-size")
    assert [(r["train_share"], r["variant"]) for r in rows] == [("50%", "mccl"), ("50%", "baseline_asl"),
                                                                ("100%", "mccl"), ("100%", "baseline_asl")]  # fmt: skip
    record = json.loads((out / "data-size.json").read_text())
    groups = [(r["group"], r["variant"]) for r in record["summary"]]
    assert groups == [("50%", "mccl"), ("50%", "baseline_asl"), ("100%", "mccl"), ("100%", "baseline_asl")]
    assert record["summary"][1]["verdict_map"] in ("better", "worse", "within noise")
    assert _main("data-size", "--params", str(_params(tiny_demo, tmp_path)), "--fractions", "0", "--list") == 2


def test_report_header_names_a_manifest_when_the_data_has_no_root(tmp_path):
    """Own data given as a manifest with absolute image paths has no root: the report names the manifest."""
    from mccl_core.experiments.experiments import ExperimentContext, _write
    from mccl_core.experiments.runner import ExperimentTracking

    params = {"data": {"source": "manifest", "manifest": "/photos/m.csv", "class_list": "/photos/classes.txt"},
              "train": {"epochs": 6, "batch_size": 32, "lr": 0.001, "image_size": 128, "seed": 0}}  # fmt: skip
    ctx = ExperimentContext("text", params, tmp_path / "text", tmp_path / "models", tmp_path / "cache",
                            ExperimentTracking(None, None))  # fmt: skip
    paths = _write(ctx, [], [("variant", "variant")], [], lambda path: path.write_bytes(b""))
    assert "Data: `manifest` (/photos/m.csv); equal budget" in paths[1].read_text()
