"""``mccl step validate``: Great Expectations over the manifest and images (sections ``data``, ``validate``).

Fails (exit code 1, offending records listed) on bad data, or with ``validate.policy: quarantine``
sets the bad records aside in ``quarantine.csv`` and writes clean annotation files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components._cli import DEFAULT_VALIDATED, parser, run, tracking_options
from mccl_core.params import section


def build() -> argparse.ArgumentParser:
    p = parser("validate", __doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_VALIDATED, help="output folder (default: outputs/validate)")
    p.add_argument("--policy", choices=("fail", "quarantine"), help="override validate.policy")
    return p


def body(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from mccl_core.data import DataConfig
    from mccl_core.steps.validate import ValidateConfig, run_validate

    cfg_values = dict(section(params, "validate", required=False))
    if args.policy:
        cfg_values["policy"] = args.policy
    result = run_validate(
        ValidateConfig.from_dict(cfg_values),
        DataConfig.from_dict(section(params, "data")),
        args.out,
        tracking_options(args, params),
        all_params=params,
        project_dir=args.project_dir,
    )
    print(f"validation passed: {result.n_records} records, {result.n_quarantined} quarantined "
          f"(report: {result.report_path}, summary: {result.summary_path})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run(argv, build, body)


if __name__ == "__main__":
    raise SystemExit(main())
