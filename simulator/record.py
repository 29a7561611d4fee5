# `--record FILE`: what a simulator sends and receives, as pcapng or as the MITM text log.
#
# Strategy: a Recorder owns the file; each connection gets a ConnectionRecord that is told
# the bytes as they cross the socket ("in" / "out" from the simulator's side) with the wall
# clock.  pcapng (any suffix but .txt): every connection is one TcpConversation of
# replay/capture/pcapwrite.py with its real addresses and ports (handshake, data segments,
# FIN or RST), buffered and appended as a new pcapng section every FLUSH_FRAMES frames and on
# close, so memory stays bounded and the file is valid after every flush.  Text (.txt): the
# MITM proxy's format, ``ISO-time DEV→CLOUD [conn:N] (n bytes)`` + hex line + blank line,
# which replay.capture.read_capture reads back as exact per-connection flows.  ``close()``
# flushes everything; a Recorder re-opened after close appends.
#
# Loss bound: the first write after a flush arms a timer on the running event loop, and the
# file is flushed (pcapng: one more section; both: the OS gets the bytes) FLUSH_AFTER_S later,
# so quiet traffic is on disk within about a second, and a SIGKILL loses at most the last
# FLUSH_AFTER_S seconds of traffic (plus however late the loop runs the timer), never more
# than FLUSH_FRAMES frames. Used without a running loop, every write goes straight through.
from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import BinaryIO, Literal

from cyncsim.replay.capture.model import CLOUD, DEVICE, Sender
from cyncsim.replay.capture.pcapwrite import Frame, TcpConversation, write_pcapng
from cyncsim.replay.errors import CaptureError

__all__ = ["FLUSH_AFTER_S", "FLUSH_FRAMES", "ConnectionRecord", "Recorder"]

logger = logging.getLogger("cyncsim.record")
FLUSH_FRAMES = 512
FLUSH_AFTER_S = 1.0  # the most a recording lags the wire when traffic is quiet
Way = Literal["in", "out"]


class ConnectionRecord:
    """One recorded connection; ``data(way, bytes, ts)`` with way "in" (read by the
    simulator) or "out" (written by it)."""

    __slots__ = ("_conv", "_ended", "_ours", "_rec", "number", "sides")

    def __init__(
        self,
        recorder: Recorder,
        number: int,
        *,
        ours: Sender,
        local: tuple[str, int],
        peer: tuple[str, int],
        we_dialled: bool,
        ts: float,
    ) -> None:
        self._rec = recorder
        self.number = number
        self._ours = ours
        self._ended = False
        client, server = (local, peer) if we_dialled else (peer, local)
        self.sides: dict[Sender, Literal["client", "server"]] = {
            ours: "client" if we_dialled else "server",
            (CLOUD if ours == DEVICE else DEVICE): "server" if we_dialled else "client",
        }
        self._conv: TcpConversation | None = None
        if recorder.fmt == "pcapng":
            self._conv = TcpConversation(
                client,
                server,
                isn_client=1000 + number * 7919,
                isn_server=500_000 + number * 104_729,
            )
            recorder.frames(self._conv.handshake(ts))

    def sender(self, way: Way) -> Sender:
        other: Sender = CLOUD if self._ours == DEVICE else DEVICE
        return self._ours if way == "out" else other

    def data(self, way: Way, data: bytes, ts: float) -> None:
        if self._ended or not data:
            return
        sender = self.sender(way)
        if self._conv is not None:
            self._rec.frames(self._conv.send(ts, self.sides[sender], data))
        else:
            self._rec.text(ts, sender, self.number, data)

    def closed(self, ts: float, *, reset: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        if self._conv is not None:
            ours = self.sides[self._ours]
            frames = [self._conv.reset(ts, ours)] if reset else self._conv.close(ts, ours)
            self._rec.frames(frames)


class Recorder:
    """Writes a recording to ``path``: pcapng, or MITM text when the suffix is ``.txt``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fmt = "text" if self.path.suffix.lower() == ".txt" else "pcapng"
        self._fh: BinaryIO | None = None
        self._frames: list[Frame] = []
        self._sections = 0
        self._opened_before = False
        self._next_conn = 0
        self._timer: asyncio.TimerHandle | None = None
        self.packets_written = 0

    @property
    def is_open(self) -> bool:
        return self._fh is not None

    def open(self) -> None:
        """Open the file (truncate the first time, append after a close); idempotent."""
        if self._fh is not None:
            return
        try:  # closed in close()
            self._fh = self.path.open("ab") if self._opened_before else self.path.open("wb")
        except OSError as exc:
            raise CaptureError(
                str(self.path), f"cannot open for recording: {exc.strerror}", reason="unwritable"
            ) from None
        self._opened_before = True
        self._sections = 0

    def connection(
        self,
        *,
        ours: Sender,
        local: tuple[str, int],
        peer: tuple[str, int],
        we_dialled: bool,
        ts: float,
    ) -> ConnectionRecord | None:
        """A record for a new connection (None when the recorder is closed)."""
        if self._fh is None:
            return None
        self._next_conn += 1
        return ConnectionRecord(
            self, self._next_conn, ours=ours, local=local, peer=peer, we_dialled=we_dialled, ts=ts
        )

    # ---------------------------------------------------------------- writers
    def frames(self, frames: list[Frame]) -> None:
        if self._fh is None:
            return
        self._frames.extend(frames)
        if len(self._frames) >= FLUSH_FRAMES:
            self.flush()
        else:
            self._flush_soon()

    def text(self, ts: float, sender: Sender, conn: int, data: bytes) -> None:
        if self._fh is None:
            return
        stamp = datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        arrow = "DEV→CLOUD" if sender == DEVICE else "CLOUD→DEV"
        line = f"{stamp} {arrow} [conn:{conn}] ({len(data)} bytes)\n{data.hex(' ')}\n\n"
        self._fh.write(line.encode("utf-8"))
        self.packets_written += 1
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush within FLUSH_AFTER_S: arm the timer (or, with no event loop, flush now)."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(FLUSH_AFTER_S, self.flush)

    def flush(self) -> None:
        """Write buffered frames (pcapng: as one more section) and flush the file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fh = self._fh
        if fh is None:
            return
        if self.fmt == "pcapng" and (self._frames or self._sections == 0):
            self.packets_written += write_pcapng(fh, self._frames)
            self._sections += 1
            self._frames.clear()
        fh.flush()

    def close(self) -> None:
        """Flush and close the file; safe twice."""
        if self._fh is None:
            return
        try:
            self.flush()
        finally:
            fh, self._fh = self._fh, None
            fh.close()
