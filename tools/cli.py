# The `cyncsim` command: one verb per subcommand, each a thin front end over the library.
#
# Each subcommand module exposes ``register(subparsers)`` and sets ``func(args, out) -> int``
# on its parser.  The top level turns a CyncError into one clear line on stderr and exit
# status 2, and Ctrl-C into exit status 130, never a traceback.
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from replay.errors import CyncError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from tools import inspect_cmd

    parser = argparse.ArgumentParser(
        prog="cyncsim",
        description="Record-replay simulator for GE Cync smart lights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (inspect_cmd,):
        module.register(sub)
    for name in ("import_cmd", "serve_cmd", "diff_cmd", "bench_cmd"):
        try:
            mod = __import__(f"tools.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"tools.{name}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        code: int = args.func(args, stream)
    except CyncError as exc:
        print(f"cyncsim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cyncsim {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
