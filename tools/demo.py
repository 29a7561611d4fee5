# `make demo`: the main job on the built-in default.
#
# Reads the shared real captures (or says where it looked), prints what was decoded and
# learned, and shows the default model shipped inside the package.
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from captures import DEFAULT_MODEL_PATH, shared_captures_dir
from tools.cli import main as cli


def main() -> int:
    files = sorted(str(p) for p in shared_captures_dir().glob("capture_*.txt"))
    if files:
        print(f"== cyncsim inspect (summary of {len(files)} shared captures)")
        for f in files:
            code = cli(["inspect", "--no-progress", f], out=_Tail())
            if code:
                return code
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "model.msgpack")
            print("\n== cyncsim import (learning a model from them)")
            code = cli(["import", "--no-progress", *files, "-o", out])
            if code:
                return code
    else:
        print(f"no shared captures in {shared_captures_dir()}; showing the shipped model")
    print(f"\n== cyncsim inspect {DEFAULT_MODEL_PATH.name} (the default model in the package)")
    return cli(["inspect", "--no-progress", str(DEFAULT_MODEL_PATH)], out=_Head(6))


class _Tail:
    """Keep only the summary lines of an inspect run (they follow the first blank line)."""

    def __init__(self) -> None:
        self._on = False

    def write(self, text: str) -> int:
        for line in text.splitlines(keepends=True):
            if not line.strip():
                self._on = True
            if self._on:
                sys.stdout.write(line)
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()


class _Head:
    def __init__(self, n: int) -> None:
        self._left = n

    def write(self, text: str) -> int:
        for line in text.splitlines(keepends=True):
            if self._left > 0:
                sys.stdout.write(line)
                self._left -= 1
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
