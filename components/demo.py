"""``mccl step demo``: generate the synthetic demo dataset (params section ``demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components._cli import parser, run
from mccl_core.params import section


def build() -> argparse.ArgumentParser:
    p = parser("demo", __doc__)
    p.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder (default: data/demo)")
    return p


def body(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from mccl_core.steps.demo import run_demo

    run_demo(section(params, "demo"), args.out)


def main(argv: list[str] | None = None) -> int:
    return run(argv, build, body)


if __name__ == "__main__":
    raise SystemExit(main())
