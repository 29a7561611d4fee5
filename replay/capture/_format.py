# Which capture format a file or stream holds, told from its first bytes, never its name.
#
# Shared by the whole-file readers (capture/__init__.py) and the stream reader
# (capture/stream.py): the magic numbers are declared here once, and ``refuse`` words the one
# error for bytes that are no capture at all.
from __future__ import annotations

from typing import NoReturn

from cyncsim.replay.capture.socat import looks_like_socat
from cyncsim.replay.capture.text import looks_like_text
from cyncsim.replay.errors import CaptureError

__all__ = [
    "HEAD_BYTES",
    "PCAPNG_MAGIC",
    "PCAP_MAGICS",
    "detect_format",
    "refuse",
    "refuse_model",
]

# classic pcap magic -> (struct byte order, timestamp units per second)
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_MSGPACK_HINT = b"cyncsim-model"
HEAD_BYTES = 256  # enough to tell every format apart


def detect_format(head: bytes) -> str:
    """``pcap``, ``pcapng``, ``text``, ``socat``, ``model`` or ``unknown`` from the first bytes."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_MAGIC:
        return "pcapng"
    if _MSGPACK_HINT in head[:64]:
        return "model"
    if looks_like_text(head):
        return "text"
    if looks_like_socat(head):
        return "socat"
    return "unknown"


def refuse(path: str, head: bytes) -> NoReturn:
    """The error for a file whose first bytes are no capture format."""
    if not head:
        raise CaptureError(path, "file is empty", reason="unknown_format")
    raise CaptureError(
        path,
        f"unknown format (first bytes {head[:8].hex(' ')}): expected pcap, pcapng, a MITM "
        "text log or a socat -v -x log",
        reason="unknown_format",
    )


def refuse_model(path: str) -> NoReturn:
    raise CaptureError(path, "is a cyncsim model file, not a capture", reason="not_a_capture")
