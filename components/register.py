"""``mccl step register``: MLflow registry + ``champion`` alias only when better (section ``register``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components._cli import DEFAULT_VALIDATED, parser, run, tracking_options
from mccl_core.params import section


def build() -> argparse.ArgumentParser:
    p = parser("register", __doc__)
    p.add_argument("--validated", type=Path, default=DEFAULT_VALIDATED, help="for the data-hash tag")
    p.add_argument("--model", type=Path, default=Path("outputs/train/model"))
    p.add_argument("--metrics", type=Path, default=Path("outputs/evaluate/metrics.json"))
    p.add_argument("--out", type=Path, default=Path("outputs/register"))
    return p


def body(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from mccl_core.steps.common import ValidatedData
    from mccl_core.steps.register import RegisterConfig, run_register

    data_hash = ValidatedData.load(args.validated).data_hash if Path(args.validated).exists() else None
    result = run_register(
        RegisterConfig.from_dict(section(params, "register", required=False)),
        args.model,
        args.metrics,
        args.out,
        tracking_options(args, params),
        all_params=params,
        data_hash=data_hash,
    )
    state = "promoted to champion" if result.promoted else "registered as a candidate"
    print(f"{result.model_name} version {result.version} {state}: {result.reason}")


def main(argv: list[str] | None = None) -> int:
    return run(argv, build, body)


if __name__ == "__main__":
    raise SystemExit(main())
