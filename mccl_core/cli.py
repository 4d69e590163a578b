"""``mccl``: one console script in front of the project's command-line tools.

Each subcommand is a module with ``main(argv) -> int``; they are imported lazily so that
``mccl score`` does not pay for importing torch-heavy training code.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("mccl_core.data.cli", "generate the demo dataset, download Intentonomy images"),
    "score": ("mccl_core.metrics.score", "score a predictions file the official Intentonomy way"),
    "train": ("mccl_core.training.cli", "train MCCL (use torchrun for several processes)"),
    "step": ("components.__main__", "run one pipeline step (validate, extract, cluster, train, evaluate, register)"),
    "pipeline": ("pipeline.cli", "compile or submit the Kubeflow pipeline"),
}


def _usage() -> str:
    lines = ["usage: mccl <command> [args...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"mccl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
