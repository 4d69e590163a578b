"""The ablation table with one command: MCCL and its switches at equal budget, on one dataset.

Every variant trains with the same data, seed, epochs, batch, learning rate and image size (the
``train`` section of the params file), is evaluated with the official protocol (one threshold
tuned on val, applied to test) and is listed next to the label prior:

* ``mccl``: the params file's model;
* ``no_cpi``: ``use_cpi: false`` (random prototypes with the same allocation);
* ``no_mcc``: ``mcc.enabled: false`` (raw tokens to the decoder);
* ``no_gcn``: ``pki.use_gcn: false`` (projected label embeddings as queries);
* ``baseline_bce`` / ``baseline_asl``: the plain backbone (pool + linear) with BCE and with the
  same ASL as MCCL - the fair comparison at equal loss is ``baseline_asl``;
* ``linear_probe``: ``baseline_asl`` on a frozen backbone (``backbone.frozen: true``), the floor;
* ``label_prior``: training label frequencies, no pixels.

For the MCC variants it also reports, on the test images, how the trained model assigns patches to
prototypes: the mean normalised per-patch assignment entropy (1 = uniform), the normalised
entropy of the prototype usage over the whole split, and how often a patch's top prototype
belongs to a true class of its image ("owner hit").

With ``--seeds 0,1,2`` every variant trains once per seed (``train.seed``, ``extract.seed`` and
``model.cpi.seed``; :mod:`mccl_core.experiments.seeds`) and the table reports mean ± std over the
seeds, and against ``--reference`` (default ``mccl``) the paired difference with a 95 % bootstrap
interval over seeds and test images and a verdict: better / worse / within noise.

Model choices are read from the params file; the numbers printed are test numbers and must not be
used to tune anything (tune on val: the ``val_macro_f1`` column).

    python bench/ablations.py --seeds 0,1,2                    # params.yaml (the demo), all variants
    python bench/ablations.py --variants mccl,no_mcc --set train.epochs=4 --set model.mcc.temperature=0.2
    python bench/ablations.py --params my_params.yaml --out outputs/bench/ablations_mine

Variants run through :mod:`mccl_core.experiments.runner` (the runner behind ``mccl experiment``):
trained models are cached under ``<out>/models/<fingerprint>/`` (a re-run with the same configs
evaluates without training again), label embeddings under ``<out>/cache/``, and with tracking on
(params ``tracking.enabled``, no ``--no-tracking``) one MLflow parent run holds a nested run per
variant and seed, and the summary (``<variant>.test_macro_f1_mean`` ...) on the parent.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from mccl_core.config import ConfigError, apply_overrides, load_params, section
from mccl_core.experiments.runner import (
    Variant,
    experiment_tracking,
    label_prior_row,
    label_prior_scores,
    load_trained,
    official_row,
    resolve_configs,
    resolve_params,
    train_or_reuse,
)
from mccl_core.experiments.seeds import SeedRun, parse_seeds, summarise, summary_table, with_seed

log = logging.getLogger("ablations")

#: name -> overrides of the params file's ``model`` section.
VARIANTS: dict[str, dict[str, Any]] = {
    "mccl": {},
    "no_cpi": {"use_cpi": False},
    "no_mcc": {"mcc": {"enabled": False}},
    "no_gcn": {"pki": {"use_gcn": False}},
    "baseline_bce": {"variant": "baseline", "loss": {"kind": "bce"}},
    "baseline_asl": {"variant": "baseline", "loss": {"kind": "asl"}},
    "linear_probe": {"variant": "baseline", "loss": {"kind": "asl"}, "backbone": {"frozen": True}},
}
LABEL_PRIOR = "label_prior"


@torch.no_grad()
def assignment_stats(model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 64) -> dict[str, float]:
    """Per-stage patch-assignment diagnostics of a trained MCC model on ``dataset`` (eval mode)."""
    clues = getattr(model, "clues", None)
    if clues is None:
        return {}
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    sums: dict[str, dict[str, float]] = {}
    usage: dict[str, torch.Tensor] = {}
    for batch in loader:
        labels = batch["labels"].to(device)
        output = model(batch["image"].to(device))
        for stage, assign in zip(output.clue_state.stages, output.clue_state.assignments):
            k = assign.shape[-1]
            entropy = -(assign * assign.clamp_min(1e-12).log()).sum(-1) / math.log(k)  # [B, N]
            owners = getattr(clues, f"owners_{stage}")
            top_owner = owners[assign.argmax(-1)]  # [B, N]
            hit = labels.gather(1, top_owner)  # 1 where the top prototype's class is a true label
            acc = sums.setdefault(stage, {"entropy": 0.0, "hit": 0.0, "patches": 0.0})
            acc["entropy"] += float(entropy.sum())
            acc["hit"] += float(hit.sum())
            acc["patches"] += entropy.numel()
            usage[stage] = usage.get(stage, 0) + assign.sum((0, 1))
    out = {}
    for stage, acc in sums.items():
        q = usage[stage] / usage[stage].sum()
        out[f"{stage}/assignment_entropy"] = acc["entropy"] / acc["patches"]
        out[f"{stage}/usage_entropy"] = float(-(q[q > 0] * q[q > 0].log()).sum() / math.log(len(q)))
        out[f"{stage}/owner_hit"] = acc["hit"] / acc["patches"]
    return out


def run_variant(name: str, params: dict[str, Any], out_dir: Path, tracking: Any = None, seed: int | None = None
                ) -> SeedRun:  # fmt: skip
    """Train (or reuse) variant ``name``, evaluate it with the official protocol, add the
    assignment diagnostics; logged as a nested run when ``tracking`` is on."""
    variant = Variant(name, {"model": VARIANTS[name]})
    resolved = resolve_params(params, variant)
    trained = train_or_reuse(resolved, out_dir / "models", out_dir / "cache", name)
    loaded = load_trained(trained, resolved)
    truth_val, scores_val, _ = loaded.scores("val")
    truth_test, scores_test, test_set = loaded.scores("test")
    configs = resolve_configs(resolved)
    row: dict[str, Any] = {"variant": name, "seed": configs.train.seed, "loss": configs.model.loss_kind}
    row.update(official_row(truth_val, scores_val, truth_test, scores_test))
    row.update(train_seconds=trained.train_seconds, cached=trained.cached, history=trained.history)
    row.update(assignment_stats(loaded.model, test_set, loaded.device))
    if tracking is not None:
        tracking.log_variant(variant, resolved, trained, row, seed=seed)
    return SeedRun(name, configs.train.seed, row, truth_test, scores_test)


def label_prior_run(params: dict[str, Any]) -> SeedRun:
    """The label prior as a seedless run (``seed == -1``): paired with every seed of the reference."""
    scores = label_prior_scores(params)
    return SeedRun(LABEL_PRIOR, -1, label_prior_row(params, scores), *scores["test"])


def format_table(rows: list[dict[str, Any]]) -> str:
    stages = sorted({k.split("/")[0] for r in rows for k in r if k.endswith("/assignment_entropy")})

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    head = ["variant", "seed", "loss", "val macro-F1", "test macro-F1", "test mAP"]
    head += [f"{s} assign. entropy / usage entropy / owner hit" for s in stages]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["variant"],
            str(row.get("seed", "-")),
            row["loss"],
            cell(row, "val_macro_f1"),
            cell(row, "test_macro_f1"),
            cell(row, "test_map"),
        ]
        for stage in stages:
            keys = (f"{stage}/assignment_entropy", f"{stage}/usage_entropy", f"{stage}/owner_hit")
            cells.append(" / ".join(cell(row, k) for k in keys) if keys[0] in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", default=",".join([*VARIANTS, LABEL_PRIOR]))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params value for every variant, e.g. train.epochs=4")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/ablations"))
    parser.add_argument("--seeds", default="", help="comma-separated seeds, e.g. 0,1,2 (default: train.seed)")
    parser.add_argument("--reference", default="mccl", help="the variant the others are compared against")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = apply_overrides(load_params(args.params), args.set)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in names:
        if name != LABEL_PRIOR and name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; valid: {[*VARIANTS, LABEL_PRIOR]}")
    try:
        seeds = parse_seeds(args.seeds, int(section(params, "train").get("seed", 0)))
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    reference = args.reference if args.reference in names else None
    data = section(params, "data")
    if data.get("source") == "demo":
        from mccl_core.steps.demo import run_demo

        run_demo(section(params, "demo"), Path(data["root"]))
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[SeedRun] = []
    with experiment_tracking("ablations", params, enabled=not args.no_tracking) as tracking:
        for seed in seeds:  # seed-major: a stopped run leaves every variant at the first seeds
            for name in [n for n in names if n != LABEL_PRIOR]:
                log.info("variant %s, seed %d", name, seed)
                runs.append(run_variant(name, with_seed(params, seed), args.out, tracking, seed))
                write_report(args.out, args.set, seeds, reference, runs)
        if LABEL_PRIOR in names:
            runs.append(label_prior_run(params))
        summaries = write_report(args.out, args.set, seeds, reference, runs)
        tracking.log_summary([s.row() for s in summaries])
    return 0


def write_report(out: Path, overrides: list[str], seeds: list[int], reference: str | None,
                 runs: list[SeedRun]) -> list[Any]:  # fmt: skip
    """``ablations.json`` (every run and the summary) and ``ablations.md`` (summary, then runs)."""
    summaries = summarise(runs, reference)
    rows = [r.row for r in runs]
    payload = {"params_overrides": overrides, "seeds": seeds, "reference": reference,
               "summary": [s.row() for s in summaries], "rows": rows}  # fmt: skip
    (out / "ablations.json").write_text(json.dumps(payload, indent=2))
    text = (f"Seeds {','.join(map(str, seeds))}: mean ± std over seeds; Δ = mean paired difference against "
            f"`{reference}` with a 95 % bootstrap interval (seeds and test images resampled).\n\n"
            f"{summary_table(summaries, reference)}\n\nPer seed:\n\n{format_table(rows)}\n")  # fmt: skip
    (out / "ablations.md").write_text(text)
    print(text, flush=True)
    return summaries


if __name__ == "__main__":
    raise SystemExit(main())
