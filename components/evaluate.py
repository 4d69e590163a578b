"""``mccl step evaluate``: official-protocol metrics, label-prior baseline, plots (section ``evaluate``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components._cli import DEFAULT_VALIDATED, parser, run, tracking_options
from mccl_core.params import section


def build() -> argparse.ArgumentParser:
    p = parser("evaluate", __doc__)
    p.add_argument("--validated", type=Path, default=DEFAULT_VALIDATED)
    p.add_argument("--model", type=Path, default=Path("outputs/train/model"), help="model bundle folder")
    p.add_argument("--out", type=Path, default=Path("outputs/evaluate"))
    return p


def body(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from mccl_core.steps.common import ValidatedData
    from mccl_core.steps.evaluate import EvaluateConfig, run_evaluate

    result = run_evaluate(
        EvaluateConfig.from_dict(section(params, "evaluate", required=False)),
        ValidatedData.load(args.validated),
        args.model,
        args.out,
        tracking_options(args, params),
        all_params=params,
    )
    m = result.metrics
    if m["protocol"] == "official":
        print(f"test macro-F1 {m['test_macro_f1']:.4f} (label prior {m['label_prior_test_macro_f1']:.4f}), "
              f"test mAP {m['test_map']:.4f} (label prior {m['label_prior_test_map']:.4f}), threshold {m['threshold']:.2f}")  # fmt: skip
    else:
        print(f"val accuracy {m['val_accuracy']:.4f} (label prior {m['label_prior_val_accuracy']:.4f})")


def main(argv: list[str] | None = None) -> int:
    return run(argv, build, body)


if __name__ == "__main__":
    raise SystemExit(main())
