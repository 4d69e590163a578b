"""`dvc repro` of the real dvc.yaml on a fresh clone-like copy (tiny demo): the whole pipeline,
a kill mid-training that the next repro resumes, cached re-runs, a clean git tree after a clone
and a repro, a bad record that stops the pipeline at validate, and the experiment loop: `dvc exp
run -S` sweeps compared with `dvc exp show` / `dvc metrics diff`, offline `dvc plots show`, and
the same runs compared in MLflow (no run left RUNNING)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL

from mccl_core.data import DataConfig

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROJECT_FILES = [
    "mccl_core",
    "components",
    "pipeline",
    "dvc.yaml",
    "params.yaml",
    "data.dvc",
    ".dvcignore",
    ".gitignore",
]
STAGES = ["demo", "validate", "extract", "cluster", "train", "evaluate", "explain", "register"]

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def _tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"].update(seed=3, n_train=96, n_val=48, n_test=48, image_size=32, workers=1)
    params["extract"].update(batch_size=48, tokens_per_image=8, shard_size=64, device="cpu")
    params["cluster"]["device"] = "cpu"
    params["model"] = TINY_MODEL | {"mcc": {"momentum": 0.99}}
    params["train"].update(epochs=2, batch_size=16, image_size=32, num_workers=0, device="cpu", ema_decay=0.9)
    params["evaluate"].update(batch_size=48, device="cpu")
    params["launch"]["env"] = {"OMP_NUM_THREADS": "2"}
    return params


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MCCL_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # the project's environment, as after activating it
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")  # fmt: skip
    return env


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def _dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _run([str(VENV_BIN / "dvc"), *args], cwd, check)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A fresh git clone of the project (no DVC cache, no remote, no data/real), tiny params;
    `dvc repro` killed once mid-training, then run again to the end."""
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    _run(["git", "init", "-q"], root)
    _dvc("init", "-q", cwd=root)
    for name in ("config", "offline_plots.html"):  # the project's DVC config: offline plots template
        shutil.copy(REPO / ".dvc" / name, root / ".dvc" / name)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-q", "-m", "project"], root)

    # 1st repro, SIGKILLed (with all its children) once the first training epoch is checkpointed.
    checkpoint = root / "outputs" / "train" / "checkpoints" / "last.pt"
    log = (root / "killed_repro.log").open("w")
    proc = subprocess.Popen([str(VENV_BIN / "dvc"), "repro"], cwd=root, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (
        f"repro ended before it could be killed:\n{(root / 'killed_repro.log').read_text()[-4000:]}"
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_lock = yaml.safe_load((root / "dvc.lock").read_text())

    resumed = _dvc("repro", cwd=root)
    return {"root": root, "killed_lock": killed_lock, "resumed": resumed.stdout + resumed.stderr}


def test_killed_repro_continues_from_what_was_done(project):
    root, output = project["root"], project["resumed"]
    # Stages finished before the kill were recorded and are not run again ...
    assert set(project["killed_lock"]["stages"]) == {"demo", "validate", "extract", "cluster"}
    for stage in ("demo", "validate", "extract", "cluster"):
        assert f"Stage '{stage}' didn't change, skipping" in output
    # ... and training resumed from its checkpoint instead of starting over.
    assert "resumed from" in output and "after epoch 1/2" in output
    history = json.loads((root / "outputs" / "train" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1]


def test_repro_ran_every_stage_with_metrics_plots_and_lock(project):
    root = project["root"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGES
    metrics = json.loads((root / "outputs" / "evaluate" / "metrics.json").read_text())
    assert metrics["protocol"] == "official" and 0.05 <= metrics["threshold"] <= 0.95
    assert 0.0 < metrics["test_macro_f1"] <= 1.0 and "label_prior_test_macro_f1" in metrics
    for plot in ("per_class_f1.png", "pr_curves.png"):
        assert (root / "outputs" / "evaluate" / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
    decision = json.loads((root / "outputs" / "register" / "register.json").read_text())
    assert decision["promoted"] is True and decision["version"] == "1"
    shown = json.dumps(json.loads(_dvc("metrics", "show", "--json", cwd=root).stdout))
    assert all(f"metrics/{stage}.json" in shown for stage in ("validate", "train", "evaluate"))
    headline = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert headline["test_macro_f1"] == pytest.approx(metrics["test_macro_f1"], rel=1e-5)
    assert set(headline) >= {"test_macro_f1", "test_micro_f1", "test_samples_f1", "test_map",
                             "val_macro_f1_at_threshold", "label_prior_test_macro_f1"}  # fmt: skip
    assert json.loads((root / "metrics" / "train.json").read_text())["epochs"] == 2
    # data.dvc tracks the (absent) real dataset; it did not stop the demo pipeline.
    assert not (root / "data" / "real").exists()


def test_mlflow_parent_run_with_a_nested_run_per_step(project):
    from mlflow import MlflowClient

    root = project["root"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mccl").experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    # The killed repro's parent (and its train run) were marked KILLED when the re-run, another
    # execution, started its own parent; nothing is left RUNNING.
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = next(r for r in parents if r.info.status == "KILLED")
    killed_steps = {r.info.run_name: r.info.status for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == killed.info.run_id}  # fmt: skip
    assert killed_steps == {"demo": "FINISHED", "validate": "FINISHED", "extract": "FINISHED", "cluster": "FINISHED",
                            "train": "KILLED"}  # fmt: skip
    parent = next(r for r in parents if r.info.status == "FINISHED")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    finished = {r.info.run_name for r in children if r.info.status == "FINISHED"}
    assert finished == {"train", "evaluate", "explain", "register"}  # the others were cached by DVC
    # The parent carries what a comparison needs: params, headline metrics, per-epoch curves.
    assert parent.data.metrics["test_macro_f1"] > 0 and "val_macro_f1_at_threshold" in parent.data.metrics
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "val_map")) == [0, 1]
    assert parent.data.tags["mccl.git.dirty"] == "false"
    assert parent.data.params["train.epochs"] == "2" and parent.data.params["model.backbone.arch"] == "resnet18"
    commit = _run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    train = next(r for r in children if r.info.run_name == "train" and r.info.status == "FINISHED")
    assert train.data.tags["mlflow.source.git.commit"] == commit
    assert train.data.tags["mccl.dvc.data_hash"].startswith("dvc:") and train.data.tags["mccl.dvc.data_hash"].endswith(
        ".dir"
    )
    # Both epochs are in the finished train run: epoch 0 back-filled, epoch 1 logged live.
    assert sorted(m.step for m in client.get_metric_history(train.info.run_id, "train_loss")) == [0, 1]
    assert {a.path for a in client.list_artifacts(train.info.run_id, "config")} == {"config/resolved_params.yaml"}
    evaluate = next(r for r in children if r.info.run_name == "evaluate")
    assert "official/test/macro_f1" in evaluate.data.metrics
    assert {a.path for a in client.list_artifacts(evaluate.info.run_id, "evaluation")} >= {
        "evaluation/metrics.json",
        "evaluation/per_class_f1.png",
        "evaluation/pr_curves.png",
    }
    cluster = next(r for r in runs if r.info.run_name == "cluster")  # ran in the killed execution
    assert "cpi/allocation.md" in {a.path for a in client.list_artifacts(cluster.info.run_id, "cpi")}


def test_second_repro_is_fully_cached(project):
    output = _dvc("repro", cwd=project["root"]).stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in output
    assert "Data and pipelines are up to date" in output


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp")}


def _numbers(payload, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON document, by dotted path (the values the two runs must share)."""
    out: dict[str, float] = {}
    if isinstance(payload, dict):
        for key, value in payload.items():
            out.update(_numbers(value, f"{prefix}{key}."))
    elif isinstance(payload, list):
        for i, value in enumerate(payload):
            out.update(_numbers(value, f"{prefix}{i}."))
    elif isinstance(payload, (int, float)) and not isinstance(payload, bool):
        out[prefix.rstrip(".")] = float(payload)
    return out


@pytest.mark.slow
def test_kubeflow_dag_gives_what_dvc_repro_gave(project, tmp_path, monkeypatch):
    """Parity of the two orchestrators: the same tiny demo through the KFP DAG (kfp.local) gives
    the same files in every step folder, the same metrics (1e-6) and the same registered tags."""
    from kfp import local
    from mlflow import MlflowClient

    from pipeline.pipeline import SECTION_PARAMETERS, mccl_pipeline

    root = project["root"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    for name in [k for k in os.environ if k.startswith(("MLFLOW_", "MCCL_"))]:
        monkeypatch.delenv(name)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Another experiment name: the tracking section reaches Kubeflow too. One GPU per node: the
    # GPU count only sizes the train pod, the number of training processes stays launch's.
    sections = {SECTION_PARAMETERS[k]: v for k, v in params.items() if k in SECTION_PARAMETERS}
    sections[SECTION_PARAMETERS["tracking"]] = {**params["tracking"], "experiment": "mccl-kfp"}
    mccl_pipeline(**sections, mlflow_tracking_uri=tracking_uri, accelerators_per_node=1)
    kfp_out = {p.parent.name: p for p in (tmp_path / "kfp").rglob("out") if p.is_dir()}
    assert set(kfp_out) == set(STAGES), kfp_out
    dvc_out = {name: root / "outputs" / name for name in STAGES if name != "demo"} | {"demo": root / "data" / "demo"}
    for name in STAGES:
        dvc_files, kfp_files = _files(dvc_out[name]), _files(kfp_out[name])
        if name == "train":  # the stale checkpoints set aside exist only where a run was resumed
            dvc_files = {f for f in dvc_files if not (f.startswith("checkpoints/") and ".stale" in f)}
        assert dvc_files == kfp_files, (name, dvc_files ^ kfp_files)
    for name, files in (("validate", ["metrics.json"]), ("extract", ["extract.json"]), ("cluster", ["cluster.json"]),
                        ("train", ["metrics.json", "history.json"]), ("evaluate", ["metrics.json", "report.json"])):  # fmt: skip
        for file in files:
            want = _numbers(json.loads((dvc_out[name] / file).read_text()))
            got = _numbers(json.loads((kfp_out[name] / file).read_text()))
            # Wall-clock timings differ between two runs; what was learned does not.
            timing = ("seconds", "per_second")
            want = {k: v for k, v in want.items() if not k.endswith(timing)}
            got = {k: v for k, v in got.items() if not k.endswith(timing)}
            assert set(want) == set(got), (name, file, set(want) ^ set(got))
            assert got == pytest.approx(want, abs=1e-6), (name, file)
    # The registered model carries the same tags (values of the run-specific ones aside).
    dvc_client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}", registry_uri=f"sqlite:///{root / 'mlflow.db'}")
    kfp_client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    model = params["register"]["model_name"]
    dvc_tags = dvc_client.get_model_version(model, "1").tags
    kfp_tags = kfp_client.get_model_version(model, "1").tags
    assert set(dvc_tags) == set(kfp_tags)
    for key in ("val_macro_f1", "test_macro_f1"):
        assert float(kfp_tags[key]) == pytest.approx(float(dvc_tags[key]), abs=1e-6)
    # One MLflow parent for the DAG, every step's run under it and finished (the demo step's too,
    # adopted by train); what each step reports is where a user looks for it.
    kfp_runs = {
        r.info.run_name: r
        for r in kfp_client.search_runs([kfp_client.get_experiment_by_name("mccl-kfp").experiment_id])
    }
    assert set(kfp_runs) == {"pipeline", *STAGES}
    parent_id = kfp_runs["pipeline"].info.run_id
    for step in STAGES:
        assert kfp_runs[step].data.tags.get("mlflow.parentRunId") == parent_id, step
        assert kfp_runs[step].info.status == "FINISHED", step
    assert kfp_runs["pipeline"].info.status == "FINISHED"  # every step ends it
    assert "official/test/macro_f1" in kfp_runs["evaluate"].data.metrics
    assert [m.step for m in kfp_client.get_metric_history(kfp_runs["train"].info.run_id, "train_loss")] == [0, 1]
    champion = kfp_client.get_model_version_by_alias(model, params["register"]["alias"])
    assert str(champion.version) == "1" and float(champion.tags["test_macro_f1"]) >= 0.0
    assert kfp_runs["register"].data.tags["mccl.dvc.data_hash"].startswith("sha256:")  # KFP keeps the data hash
    summaries = list((tmp_path / "kfp").rglob("validate/summary"))
    assert summaries and "Data validation: PASSED" in summaries[0].read_text()
    reports = list((tmp_path / "kfp").rglob("evaluate/report"))
    assert reports and "<h2>MCCL evaluation</h2>" in reports[0].read_text()
    explained = list((tmp_path / "kfp").rglob("explain/summary"))
    assert explained and "| pointing_random |" in explained[0].read_text()
    assert "pointing_attention" in kfp_runs["explain"].data.metrics


def _commit_all(root: Path, message: str) -> None:
    _run(["git", "add", "-A"], root)
    if _run(["git", "status", "--porcelain"], root).stdout.strip():
        _run(["git", "commit", "-q", "-m", message], root)


def test_clean_clone_plus_repro_leaves_git_status_clean(project, tmp_path):
    """What is committed (dvc.lock, metrics/) is exactly what a repro on a clean clone writes:
    declared outputs hold no timings, the compiled files are byte-stable, and DVC's own
    rewrites (data.dvc, params.yaml) are no-ops. MLflow therefore tags the runs clean."""
    from mlflow import MlflowClient

    root = project["root"]
    _commit_all(root, "pipeline results")
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    output = _dvc("repro", cwd=clone)
    text = output.stdout + output.stderr
    assert "Running stage 'train'" in text  # nothing was cached in the clone: every stage ran
    assert _run(["git", "status", "--porcelain"], clone).stdout == ""
    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mccl").experiment_id])
    assert {r.data.tags.get("mccl.git.dirty") for r in runs} == {"false"}
    assert {r.info.status for r in runs} == {"FINISHED"}


def _experiment_scores(root: Path) -> dict[str, float]:
    """test_macro_f1 of every experiment in `dvc exp show`, by its train.lr."""
    table = json.loads(_dvc("exp", "show", "--json", cwd=root).stdout)
    scores: dict[str, float] = {}
    for baseline in table:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                lr = data["params"]["params.yaml"]["data"]["train"]["lr"]
                scores[str(lr)] = data["metrics"]["metrics/evaluate.json"]["data"]["test_macro_f1"]
    return scores


def test_exp_run_sweep_retrains_only_what_depends_on_it_and_compares_with_numbers(project):
    """One retraining experiment (train.lr): the upstream stages are cached, train ... register
    run, the new version is registered without taking the champion unless it is better, and
    `dvc exp show` / `dvc metrics diff` compare it with numbers."""
    root = project["root"]
    _commit_all(root, "lock")
    output = _dvc("exp", "run", "-S", "train.lr=0.003", cwd=root)
    text = output.stdout + output.stderr
    for stage in ("demo", "validate", "extract", "cluster"):
        assert f"Stage '{stage}' didn't change, skipping" in text
    assert "Running stage 'train'" in text and "Running stage 'register'" in text
    decision = json.loads((root / "outputs" / "register" / "register.json").read_text())
    assert decision["version"] == "2"  # registered; champion moves only if it is better
    assert str(decision["champion_version"]) == "1"
    assert decision["promoted"] == (decision["selection_score"] > decision["champion_score"])
    assert _run(["git", "diff", "--", "data.dvc"], root).stdout == ""  # DVC's rewrite of it is a no-op
    scores = _experiment_scores(root)
    assert "0.003" in scores and all(0.0 <= v <= 1.0 for v in scores.values())
    text = _dvc("exp", "show", "--no-pager", "--md", cwd=root).stdout
    assert "test_macro_f1" in text and "0.003" in text and " ! " not in text
    # --all: a tiny model can land on the baseline's macro-F1, and plain `diff` lists changes only.
    diff = json.loads(_dvc("metrics", "diff", "HEAD", "--all", "--json", cwd=root).stdout)
    assert isinstance(diff["metrics/evaluate.json"]["test_macro_f1"]["new"], float)


def test_an_experiment_that_reruns_only_evaluate_leaves_no_running_run(project):
    from mlflow import MlflowClient

    root = project["root"]
    output = _dvc("exp", "run", "-S", "evaluate.batch_size=24", cwd=root)
    text = output.stdout + output.stderr
    assert "Running stage 'evaluate'" in text and "Running stage 'train'" not in text
    base_lr = str(yaml.safe_load((root / "params.yaml").read_text())["train"]["lr"])
    assert {"0.003", base_lr} <= set(_experiment_scores(root))  # two experiments side by side
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mccl").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    # Sweep runs are found by their headline metric through the MLflow API.
    best = client.search_runs([runs[0].info.experiment_id], "attributes.run_name = 'pipeline' and metrics.test_macro_f1 >= 0",
                              order_by=["metrics.test_macro_f1 DESC"])  # fmt: skip
    assert len(best) >= 3 and best[0].data.metrics["test_macro_f1"] >= best[-1].data.metrics["test_macro_f1"]
    assert {r.data.params["train.lr"] for r in best} >= {"0.003", base_lr}


def test_terminal_shows_our_lines_and_the_log_files_keep_the_rest(project):
    root = project["root"]
    log_text = (root / "outputs" / "logs" / "validate.log").read_text()
    output = _dvc("repro", "-f", "-s", "validate", cwd=root)
    text = output.stdout + output.stderr
    assert "great_expectations" not in text and "Skipping registering" not in text
    assert "validate:" in text  # the step's one summary line
    assert log_text  # the third-party lines went to the stage's log file
    cluster_log = (root / "outputs" / "logs" / "cluster.log").read_text()
    assert cluster_log.count("CPI allocation:") == 1


def test_dvc_plots_render_offline(project, tmp_path):
    """`dvc plots show` writes a page with Vega inlined (no URL to fetch), and the specs in it
    render to SVG with those inlined libraries (node, when installed)."""
    from html.parser import HTMLParser

    root = project["root"]
    out = tmp_path / "plots"
    _dvc("plots", "show", "-o", str(out), cwd=root)
    page = (out / "index.html").read_text()

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.urls: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.urls += [v for k, v in attrs if k in ("src", "href") and v]

    links = Links()
    links.feed(page)
    assert not [u for u in links.urls if "://" in u or u.startswith("//")], links.urls
    assert "vega@5.20.2" in page and "cdn.jsdelivr" not in page
    specs = re.findall(r"var spec = (\{.*?\});\s*vegaEmbed", page, flags=re.S)
    assert len(specs) >= 3  # train curves, threshold curve, per-class F1 (+ the cross-stage plot)
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the specs were not rendered")
    scripts = re.findall(r"<script>(/\* vega.*?)</script>", page, flags=re.S)
    (tmp_path / "libs.js").write_text("\n".join(scripts[:2]))  # vega, vega-lite (embed needs a DOM)
    (tmp_path / "specs.json").write_text("[" + ",".join(specs) + "]")
    render = tmp_path / "render.js"
    render.write_text(
        "const vm = require('vm'); const fs = require('fs');\n"
        f"vm.runInThisContext(fs.readFileSync({json.dumps(str(tmp_path / 'libs.js'))}, 'utf8'));\n"
        f"const specs = JSON.parse(fs.readFileSync({json.dumps(str(tmp_path / 'specs.json'))}, 'utf8'));\n"
        "(async () => { for (const s of specs) {\n"
        "  const vg = s.$schema && s.$schema.includes('vega-lite') ? vegaLite.compile(s).spec : s;\n"
        "  const svg = await new vega.View(vega.parse(vg), {renderer: 'none'}).toSVG();\n"
        "  console.log(svg.length, (svg.match(/<path/g) || []).length); } })()"
        ".catch(e => { console.error(e); process.exit(1); });\n"
    )
    proc = subprocess.run([node, str(render)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rendered = [tuple(map(int, line.split())) for line in proc.stdout.split("\n") if line.strip()]
    assert len(rendered) == len(specs) and all(size > 1000 and paths > 0 for size, paths in rendered)


def test_bad_record_stops_the_pipeline_at_validate(project):
    root = project["root"]
    broken = root / "data" / "broken"
    shutil.copytree(root / "data" / "demo", broken)
    train = json.loads((DataConfig(source="demo", root=broken).annotation_file("train")).read_text())
    victim = train["images"][7]
    (broken / victim["filename"]).write_bytes(b"not an image at all")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["root"] = "data/broken"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    extract_before = (root / "outputs" / "extract" / "extract.json").stat().st_mtime_ns

    proc = _dvc("repro", cwd=root, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "failed to reproduce 'validate'" in text
    assert victim["id"] in text and "not an image" in text
    assert "Running stage 'extract'" not in text and "Running stage 'train'" not in text
    assert (root / "outputs" / "extract" / "extract.json").stat().st_mtime_ns == extract_before
    report = json.loads((root / "outputs" / "validate" / "report.json").read_text())
    assert [r["image_id"] for r in report["offending_records"]] == [victim["id"]]


def _manifest_from_demo(root: Path) -> Path:
    """The tiny demo as "your own data": images, a CSV manifest and a class list in one folder."""
    mine = root / "data" / "mine"
    (mine / "img").mkdir(parents=True)
    rows, names = ["image_path,labels,split"], []
    for split in ("train", "val", "test"):
        data = json.loads((DataConfig(source="demo", root=root / "data" / "demo").annotation_file(split)).read_text())
        by_id = {c["id"]: c["name"] for c in data["categories"]}
        names = [c["name"] for c in data["categories"]]
        files = {i["id"]: i["filename"] for i in data["images"]}
        for annotation in data["annotations"]:
            source = root / "data" / "demo" / files[annotation["image_id"]]
            shutil.copy(source, mine / "img" / source.name)
            ids = annotation.get("category_ids")
            if ids is None:  # train: soft labels over the categories in id order
                ids = [i for i, p in enumerate(annotation["category_ids_softprob"]) if p > 0]
            labels = "|".join(by_id[c] for c in ids)
            rows.append(f"img/{source.name},{labels},{split}")
    (mine / "m.csv").write_text("\n".join(rows) + "\n")
    (mine / "classes.txt").write_text("\n".join(names) + "\n")
    return mine


def test_own_manifest_data_as_the_readme_writes_it_and_a_label_edit_reruns_validate(project):
    """Runs last: it switches the project to manifest data (the demo stage then renders nothing)."""
    root = project["root"]
    mine = _manifest_from_demo(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"] = {"source": "manifest", "root": "data/mine", "manifest": "data/mine/m.csv",
                      "class_list": "data/mine/classes.txt"}  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = _dvc("repro", "demo", "validate", cwd=root)  # the two stages `dvc repro` runs first
    assert "Running stage 'demo'" in output.stdout and "Running stage 'validate'" in output.stdout
    assert list((root / "data" / "demo").iterdir()) == [root / "data" / "demo" / "NOT_USED.txt"]
    assert "up to date" in _dvc("status", "validate", cwd=root).stdout
    lines = (mine / "m.csv").read_text().splitlines()
    path, labels, split = lines[1].split(",")
    names = (mine / "classes.txt").read_text().split()
    lines[1] = ",".join([path, next(n for n in names if n not in labels.split("|")), split])
    (mine / "m.csv").write_text("\n".join(lines) + "\n")
    status = _dvc("status", "validate", cwd=root).stdout
    assert "changed deps" in status and "data/mine" in status, status
