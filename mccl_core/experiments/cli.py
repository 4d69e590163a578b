"""``mccl experiment stages|text|robustness|pointing|data-size``: one command per open question.

    mccl experiment stages                                   # params.yaml, all variants
    mccl experiment stages --seeds 0,1,2                     # one model per (variant, seed), mean ± std
    mccl experiment data-size --seeds 0,1,2 --fractions 0.1,0.25,0.5,1
    mccl experiment text --set train.epochs=2 --variants description,onehot
    mccl experiment robustness --params profiles/x.yaml --out outputs/experiments/robustness_x
    mccl experiment pointing --no-tracking

Outputs go to ``--out`` (default ``outputs/experiments/<name>``); trained models are cached in
``--models-dir`` (default ``<out>/../models``, shared by the experiments) and label embeddings
in ``--cache-dir`` (default ``<out>/../cache``). With ``--seeds`` the table gives mean ± std over
the seeds and, against ``--reference`` (default: the first variant), the paired difference with
a 95 % bootstrap interval and a verdict (better / worse / within noise).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mccl_core.config import ConfigError, apply_overrides, load_params, section


def build_parser() -> argparse.ArgumentParser:
    from mccl_core.experiments.experiments import EXPERIMENTS

    parser = argparse.ArgumentParser(prog="mccl experiment", description=__doc__.split("\n\n")[0])
    # argparse %-formats help strings: a summary's "10 %" would break --help
    summaries = "; ".join(f"{e.name}: {e.summary}" for e in EXPERIMENTS.values()).replace("%", "%%")
    parser.add_argument("name", choices=sorted(EXPERIMENTS), help=summaries)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params value for every variant, e.g. train.epochs=4")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="default outputs/experiments/<name>")
    parser.add_argument("--variants", default="", help="comma-separated subset of the experiment's variants")
    parser.add_argument("--seeds", default="", help="comma-separated seeds, e.g. 0,1,2 (default: train.seed)")
    parser.add_argument("--reference", default=None, help="variant the others are compared against (default: first)")
    parser.add_argument("--models-dir", type=Path, default=None, help="model cache (default <out>/../models)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="label-embedding cache (default <out>/../cache)")
    parser.add_argument("--corruptions", default="", help="robustness only: comma-separated subset, e.g. jpeg30,down4")
    parser.add_argument("--fractions", default="", help="data-size only: shares of the training split, e.g. 0.25,1")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow (mlflow is not imported)")
    parser.add_argument("--prepare-cache", action="store_true",
                        help="only write the label-embedding caches (description, name) to --cache-dir, e.g. "
                             "before carrying them to a machine without the sentence encoder")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the variants and their overrides, run nothing")
    return parser


def prepare_label_caches(params: dict, cache_dir: Path) -> list[Path]:
    """Encode the configured dataset's label texts (``description`` and ``name`` modes) into the
    shared cache, so later runs (and machines without the encoder) reuse them."""
    from mccl_core.data import DataConfig, load_split
    from mccl_core.experiments.runner import label_embedding_cache
    from mccl_core.models import ModelConfig, build_label_embeddings

    train = load_split(DataConfig.from_dict(section(params, "data")), "train")
    names = list(train.class_names)
    paths = []
    for mode in ("description", "name"):
        model_cfg = ModelConfig.from_dict({"pki": {"label_text": mode}})
        path = label_embedding_cache(cache_dir, model_cfg, names)
        build_label_embeddings(mode, names, train.class_descriptions, path)
        paths.append(path)
    return paths


def parse_fractions(text: str) -> list[float]:
    """``"0.25,1"`` -> ``[0.25, 1.0]`` (each in (0, 1]); empty -> ``[]`` (the experiment's default)."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--fractions: {item!r} is not a number (expected e.g. 0.1,0.25,0.5,1)") from None
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"--fractions: {value} is not in (0, 1]")
        out.append(value)
    return out


def main(argv: list[str] | None = None) -> int:
    from mccl_core.experiments.experiments import EXPERIMENTS, ExperimentContext, run_data_size, run_robustness, select
    from mccl_core.experiments.runner import experiment_tracking
    from mccl_core.experiments.seeds import parse_seeds

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = apply_overrides(load_params(args.params), args.set)
        experiment = EXPERIMENTS[args.name]
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        variants = select(experiment.variants(params), wanted)
        seeds = parse_seeds(args.seeds, int(section(params, "train", required=False).get("seed", 0)))
        fractions = parse_fractions(args.fractions)
        if args.reference is not None and args.reference not in {v.name for v in variants}:
            raise ConfigError(
                f"--reference {args.reference!r} is not among the variants run: {[v.name for v in variants]}"
            )
    except ConfigError as error:
        print(f"error: {error}")
        return 2
    if args.list:
        for variant in variants:
            print(f"{variant.name}: {dict(variant.overrides)}")
        return 0
    out = args.out or Path("outputs/experiments") / args.name
    models_dir = args.models_dir or out.parent / "models"
    cache_dir = args.cache_dir or out.parent / "cache"
    data = section(params, "data")
    if data.get("source") == "demo" and params.get("demo"):  # render (or keep) the configured demo
        from mccl_core.steps.demo import run_demo

        run_demo(section(params, "demo"), Path(data["root"]))
    if args.prepare_cache:
        for path in prepare_label_caches(params, cache_dir):
            print(f"label embeddings: {path}")
        return 0
    with experiment_tracking(args.name, params, enabled=not args.no_tracking) as tracking:
        ctx = ExperimentContext(args.name, params, out, models_dir, cache_dir, tracking, seeds, args.reference)
        if args.name == "robustness" and args.corruptions:
            paths = run_robustness(ctx, variants, [c.strip() for c in args.corruptions.split(",") if c.strip()])
        elif args.name == "data-size" and fractions:
            paths = run_data_size(ctx, variants, fractions)
        else:
            paths = experiment.run(ctx, variants)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
