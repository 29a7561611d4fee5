# `make demo`: the main job on the built-in default.
#
# Reads the shared real captures (or says where it looked), prints what was decoded and
# learned, and shows the default model shipped inside the package.
from __future__ import annotations

import io
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
            buf = io.StringIO()
            code = cli(["inspect", "--no-progress", f], out=buf)
            if code:
                return code
            print(_summary_only(buf.getvalue()))
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "model.msgpack")
            print("\n== cyncsim import (learning a model from them)")
            code = cli(["import", "--no-progress", *files, "-o", out])
            if code:
                return code
    else:
        print(f"no shared captures in {shared_captures_dir()}; showing the shipped model")
    print(f"\n== cyncsim inspect {DEFAULT_MODEL_PATH.name} (the default model in the package)")
    buf = io.StringIO()
    code = cli(["inspect", "--no-progress", str(DEFAULT_MODEL_PATH)], out=buf)
    print("\n".join(buf.getvalue().splitlines()[:8]))
    return code


def _summary_only(text: str) -> str:
    """The summary of an inspect run: what follows its first blank line."""
    return text.split("\n\n", 1)[1] if "\n\n" in text else text


if __name__ == "__main__":
    sys.exit(main())
