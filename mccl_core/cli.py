"""``mccl``: one console script in front of the project's command-line tools.

Each subcommand is a module with ``main(argv) -> int``, imported only when it runs (``mccl score``
must not pay for torch). The library's own commands are listed here; orchestration packages add
theirs as ``mccl.commands`` entry points (the Kubeflow package registers ``mccl pipeline``), so
the library never imports them.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("mccl_core.data.cli", "generate the demo dataset, download Intentonomy images, check images"),
    "score": ("mccl_core.metrics.score", "score a predictions file the official Intentonomy way"),
    "train": ("mccl_core.training.cli", "train MCCL (use torchrun for several processes)"),
    "predict": ("mccl_core.serving.batch", "score a folder, manifest or s3:// prefix of images (CSV / Parquet)"),
    "serve": ("mccl_core.serving.app", "serve a logged model (MLflow's scoring server, error bodies without echoes)"),
    "explain": ("mccl_core.explain.cli", "explain one image's intents: attention and prototype maps (PNG + JSON)"),
    "experiment": ("mccl_core.experiments.cli", "the open-question experiments: stages, text, robustness, pointing"),
    "mdid": ("mccl_core.steps.mdid_protocol", "mdid protocol: the 5 MDID splits through the steps, mean +- std"),
    "step": (
        "mccl_core.steps.cli",
        "run one pipeline step (demo, validate, extract, cluster, train, evaluate, explain, register)",
    ),
}
PLUGIN_GROUP = "mccl.commands"


def _commands() -> dict[str, tuple[str, str]]:
    commands = dict(SUBCOMMANDS)
    for entry in entry_points(group=PLUGIN_GROUP):
        module = entry.value.split(":")[0]
        commands.setdefault(entry.name, (module, f"(from {module})"))
    return commands


def _usage(commands: dict[str, tuple[str, str]]) -> str:
    lines = ["usage: mccl <command> [args...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in commands.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not args or args[0] in {"-h", "--help"}:
        print(_usage(commands))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"mccl: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
