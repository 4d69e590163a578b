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
* ``label_prior``: training label frequencies, no pixels.

For the MCC variants it also reports, on the test images, how the trained model assigns patches to
prototypes: the mean normalised per-patch assignment entropy (1 = uniform), the normalised
entropy of the prototype usage over the whole split, and how often a patch's top prototype
belongs to a true class of its image ("owner hit").

Model choices are read from the params file; the numbers printed are test numbers and must not be
used to tune anything (tune on val: the ``val_macro_f1`` column).

    python bench/ablations.py                                  # params.yaml (the demo), all variants
    python bench/ablations.py --variants mccl,no_mcc --set train.epochs=4 --set model.mcc.temperature=0.2
    python bench/ablations.py --params my_params.yaml --out outputs/bench/ablations_mine
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mccl_core.config import load_params, section
from mccl_core.data import DataConfig, load_split
from mccl_core.metrics import official_protocol
from mccl_core.metrics.baselines import LabelPriorPredictor
from mccl_core.models import ModelConfig
from mccl_core.steps.demo import run_demo
from mccl_core.steps.extract import ExtractStepConfig
from mccl_core.training.config import TrainConfig
from mccl_core.training.distributed import DistContext, resolve_device
from mccl_core.training.loop import predict_scores, train
from mccl_core.training.run import prepare_inputs

log = logging.getLogger("ablations")

#: name -> overrides of the params file's ``model`` section.
VARIANTS: dict[str, dict[str, Any]] = {
    "mccl": {},
    "no_cpi": {"use_cpi": False},
    "no_mcc": {"mcc": {"enabled": False}},
    "no_gcn": {"pki": {"use_gcn": False}},
    "baseline_bce": {"variant": "baseline", "loss": {"kind": "bce"}},
    "baseline_asl": {"variant": "baseline", "loss": {"kind": "asl"}},
}
LABEL_PRIOR = "label_prior"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _set(params: dict[str, Any], assignment: str) -> None:
    """``train.epochs=4`` -> params["train"]["epochs"] = 4 (YAML-typed value)."""
    key, _, raw = assignment.partition("=")
    if not raw:
        raise SystemExit(f"--set expects key=value, got {assignment!r}")
    *parents, leaf = key.split(".")
    node = params
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = yaml.safe_load(raw)


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


def run_variant(name: str, params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    data_cfg = DataConfig.from_dict(section(params, "data"))
    model_cfg = ModelConfig.from_dict(_merge(section(params, "model"), VARIANTS[name]))
    train_values = dict(section(params, "train"))
    train_values.update(output_dir=str(out_dir / name), resume=False)
    train_cfg = TrainConfig.from_dict(train_values)
    extract_cfg = ExtractStepConfig.from_dict(dict(section(params, "extract", required=False))).extract_config()
    start = time.perf_counter()
    inputs = prepare_inputs(data_cfg, model_cfg, train_cfg, extract_cfg=extract_cfg)
    result = train(model_cfg, train_cfg, inputs)
    train_seconds = time.perf_counter() - start

    from mccl_core.models.bundle import load_bundle

    device = resolve_device(train_cfg.device)
    model, meta = load_bundle(result.model_path, device)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    splits = {s: load_split(data_cfg, s, transform=meta.eval_transform()) for s in ("val", "test")}
    scores = {s: predict_scores(model, d, ctx, 64, progress=False) for s, d in splits.items()}
    truth = {s: d.label_matrix() for s, d in splits.items()}
    official = official_protocol(truth["val"], scores["val"], truth["test"], scores["test"])
    row = {
        "variant": name,
        "loss": model_cfg.loss_kind,
        "val_macro_f1": official.selection.tuning_macro_f1,
        "threshold": official.threshold,
        "test_macro_f1": official.report.macro_f1,
        "test_micro_f1": official.report.micro_f1,
        "test_map": official.average_precision.map,
        "train_seconds": train_seconds,
        "history": [r.metrics() for r in result.history],
    }
    row.update(assignment_stats(model, splits["test"], device))
    return row


def label_prior_row(params: dict[str, Any]) -> dict[str, Any]:
    data_cfg = DataConfig.from_dict(section(params, "data"))
    truth = {s: load_split(data_cfg, s).label_matrix() for s in ("train", "val", "test")}
    prior = LabelPriorPredictor().fit(truth["train"])
    official = official_protocol(
        truth["val"], prior.predict(len(truth["val"])), truth["test"], prior.predict(len(truth["test"]))
    )
    return {"variant": LABEL_PRIOR, "loss": "-", "val_macro_f1": official.selection.tuning_macro_f1,
            "threshold": official.threshold, "test_macro_f1": official.report.macro_f1,
            "test_micro_f1": official.report.micro_f1, "test_map": official.average_precision.map}  # fmt: skip


def format_table(rows: list[dict[str, Any]]) -> str:
    stages = sorted({k.split("/")[0] for r in rows for k in r if k.endswith("/assignment_entropy")})

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    head = ["variant", "loss", "val macro-F1", "test macro-F1", "test mAP"]
    head += [f"{s} assign. entropy / usage entropy / owner hit" for s in stages]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["variant"],
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    for assignment in args.set:
        _set(params, assignment)
    data = section(params, "data")
    if data.get("source") == "demo":
        run_demo(section(params, "demo"), Path(data["root"]))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name != LABEL_PRIOR and name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; valid: {[*VARIANTS, LABEL_PRIOR]}")
        log.info("variant %s", name)
        row = label_prior_row(params) if name == LABEL_PRIOR else run_variant(name, params, args.out)
        rows.append(row)
        (args.out / "ablations.json").write_text(json.dumps({"params_overrides": args.set, "rows": rows}, indent=2))
        print(format_table(rows), flush=True)
    (args.out / "ablations.md").write_text(format_table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
