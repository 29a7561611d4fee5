# Rebuild the default model shipped in captures/ from the shared real captures: the MITM text
# logs (capture_*.txt) and the socat -v -x logs (socat/*.txt), in name order.
#
# Usage: python -m tools.build_default_model [CAPTURES_DIR]   (make model)
from __future__ import annotations

import sys
from pathlib import Path

from cyncsim.captures import DEFAULT_MODEL_PATH, shared_captures_dir
from cyncsim.replay.model import import_captures


def build(captures_dir: Path) -> bytes:
    files = sorted(str(p) for p in captures_dir.glob("capture_*.txt"))
    files += sorted(str(p) for p in captures_dir.glob("socat/*.txt"))
    if not files:
        raise SystemExit(f"no capture_*.txt files in {captures_dir}")
    return import_captures(files).dumps()


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else shared_captures_dir()
    data = build(src)
    DEFAULT_MODEL_PATH.write_bytes(data)
    print(f"wrote {DEFAULT_MODEL_PATH} ({len(data)} bytes) from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
