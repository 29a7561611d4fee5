# The `cyncsim` command: one verb per subcommand, each a thin front end over the library.
#
# Start-up is kept fast by importing only the subcommand that runs: COMMANDS names each verb's
# module and one-line help, `--help` lists them without importing any, and the chosen verb's
# module adds its own arguments through ``register(subparsers, help_text)`` and sets
# ``func(args, out) -> int``. The top level turns a CyncError into one clear line on stderr
# and exit status 2, and Ctrl-C into exit status 130, never a traceback.
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = ["COMMANDS", "build_parser", "main"]

# verb -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": (
        "cyncsim.tools.inspect_cmd",
        "decode captures (pcap, pcapng, MITM text, socat; - reads stdin) or show a model",
    ),
    "import": ("cyncsim.tools.import_cmd", "learn a device model from captures"),
    "serve": (
        "cyncsim.tools.serve_cmd",
        "run simulated devices on loopback (listen, or dial a controller)",
    ),
    "diff": (
        "cyncsim.tools.diff_cmd",
        "check captures against a reference model or captures (conformance)",
    ),
    "replay": ("cyncsim.tools.replay_cmd", "replay captured devices or controller against a peer"),
    "validate": (
        "cyncsim.tools.validate_cmd",
        "check the model's predictions on held-out real traffic (predictive checks)",
    ),
    "bench": ("cyncsim.tools.bench_cmd", "run benchmark suites (tables, JSON)"),
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The verb on the command line: the first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the verb named in ``argv`` (all of them when None) is imported."""
    parser = argparse.ArgumentParser(
        prog="cyncsim",
        description="Record-replay simulator for GE Cync smart lights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = _chosen(argv) if argv is not None else None
    for verb, (module, help_text) in COMMANDS.items():
        if argv is None or verb == chosen:
            importlib.import_module(module).register(sub, help_text)
        else:
            sub.add_parser(verb, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    stream = out if out is not None else sys.stdout
    from cyncsim.replay.errors import CyncError

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
