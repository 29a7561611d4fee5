# One exception tree for the whole project, rooted at CyncError.
#
# Every error carries a machine-readable ``reason`` and, where it makes sense, where it
# happened (a byte offset, a file name).  Foreign errors (OSError, dpkt, msgpack, ssl) are
# translated into these at the boundary that sees them, so a CLI can print one clear line.
from __future__ import annotations

__all__ = [
    "CaptureError",
    "ChaosConfigError",
    "CyncError",
    "HandshakeError",
    "ModelError",
    "PacketDecodeError",
]

DECODE_REASONS = frozenset(
    {
        "too_short",
        "length_mismatch",
        "invalid_checksum",
        "bad_marker",
        "bad_header",
        "bad_layout",
    }
)


class CyncError(Exception):
    """Base class of every error raised by cyncsim."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class PacketDecodeError(CyncError):
    """Bytes that are not a valid Cync packet.

    ``reason`` is one of ``too_short``, ``length_mismatch``, ``invalid_checksum``,
    ``bad_marker``, ``bad_header``, ``bad_layout``; ``offset`` is the byte offset of the
    problem inside the data handed to the decoder (or inside the stream, for a framer).
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        offset: int = 0,
        data: bytes = b"",
    ) -> None:
        super().__init__(f"{reason} at offset {offset}: {message}", reason=reason)
        self.offset = offset
        self.data = data


class CaptureError(CyncError):
    """A capture file that cannot be read at all (missing, unreadable, unknown format)."""

    def __init__(self, path: str, message: str, *, reason: str = "capture", offset: int = 0):
        where = f"{path}" if offset == 0 else f"{path} at offset {offset}"
        super().__init__(f"{where}: {message}", reason=reason)
        self.path = path
        self.offset = offset


class ModelError(CyncError):
    """A model file that cannot be loaded (corrupt, wrong version) or an unusable model."""

    def __init__(self, message: str, *, reason: str = "model", path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message, reason=reason)
        self.path = path


class ChaosConfigError(CyncError, ValueError):
    """A chaos setting outside its allowed range."""

    reason = "chaos_config"


class HandshakeError(CyncError):
    """The peer answered the connect sequence with something that is not the protocol."""

    reason = "handshake"
