"""``mccl step <name> [args...]``: run one pipeline step (see ``components/<name>.py``)."""

from __future__ import annotations

import importlib
import sys

from components import STEPS

USAGE = "usage: mccl step {" + ",".join(STEPS) + "} [args...]   (mccl step <name> --help for a step's options)"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in STEPS:
        print(f"mccl step: unknown step {name!r}\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"components.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
