# The cloud role of the replay engine: CloudEngine, the controller side of a connection.
#
# Strategy: the cloud answers what a device sends as the model's cloud did, in order (no
# service queue: each answer leaves at arrival + a latency sample, never before the one
# before), and builds 0x73 commands with its own message id and sequence counters; the
# exchange keys of what it sent are remembered (bounded) so the device's 0x7B is consumed.
from __future__ import annotations

import dataclasses
from collections import deque

from cyncsim.replay.engine._base import DEDUP_WINDOW, Engine
from cyncsim.replay.engine.actions import Action, Send
from cyncsim.replay.engine.state import DeviceState
from cyncsim.replay.engine.templates import RenderContext
from cyncsim.replay.engine.view import ModelView, frame_key
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.payloads import Command, build_command
from cyncsim.replay.protocol import CyncPacket, HelloPacket, PacketType, exchange_key
from cyncsim.replay.seeds import SeedTree

__all__ = ["CloudEngine"]


class CloudEngine(Engine):
    """The cloud / controller side: answers device requests as the model's cloud did, in
    order (each answer leaves no earlier than the one before), and builds commands.

    A 0x7B that answers a command this engine sent is consumed; only an unexpected one gets
    the learned 0x78, and only when the engine's own variant has that exchange.
    """

    role = "cloud"
    _queued = False

    def __init__(
        self,
        model: DeviceModel | ModelView,
        *,
        variant: str | None = None,
        seed: int | SeedTree | None = None,
        name: str = "cloud",
        time_scale: float = 1.0,
        wall_offset: float = 0.0,
    ) -> None:
        super().__init__(
            model,
            variant=variant,
            seed=seed,
            name=name,
            time_scale=time_scale,
            wall_offset=wall_offset,
        )
        self.device_id: bytes | None = None
        self.auth_code: bytes | None = None
        self._msg = 0
        self._seq = 0
        self._sent_ids: deque[bytes] = deque(maxlen=DEDUP_WINDOW * 4)
        self._ctx = RenderContext(b"\0" * 4, b"0" * 16, {}, 0, DeviceState(), {})
        self._handlers = {PacketType.HELLO: self._on_hello, PacketType.DATA_ACK: self._on_data_ack}

    def _context(self, now: float) -> RenderContext:
        self._ctx.wall = now + self.wall_offset
        return self._ctx

    def _on_hello(self, data: bytes, pkt: CyncPacket | None, now: float) -> list[Action]:
        if isinstance(pkt, HelloPacket):
            self.device_id, self.auth_code = pkt.device_id, pkt.auth_code
        return self._on_generic(data, pkt, now)

    def _on_data_ack(self, data: bytes, pkt: CyncPacket | None, now: float) -> list[Action]:
        if exchange_key(data) in self._sent_ids:
            self._count("acks")
            return []
        self._count("unexpected_acks")
        return self._on_generic(data, pkt, now)

    def command(self, command: Command, now: float, device_id: bytes | None = None) -> Send:
        """A 0x73 f8 command with the next message id and sequence byte (sent at ``now``)."""
        dev = device_id if device_id is not None else self.device_id
        if dev is None or len(dev) != 4:
            raise ValueError("no device id: pass device_id= or wait for the device's 0x23")
        self._msg = self._msg % 0xFFFF + 1
        mid = self._msg.to_bytes(2, "big") + b"\0"
        cmd = dataclasses.replace(command, ctr=self._seq % 0xFF + 1)
        self._seq = cmd.ctr
        pkt = build_command(dev, mid, cmd)
        assert pkt.frame is not None  # build_command always frames its command
        data = pkt.encode()
        self._sent_ids.append(exchange_key(data))
        self._last_out = max(self._last_out, now)
        return Send(now, data, frame_key(pkt.frame.kind, pkt.frame.opcode))

    def expect_ack(self, data: bytes) -> None:
        """Remember the exchange key of a raw 0x73 sent by the caller, so its 0x7B is
        consumed."""
        self._sent_ids.append(exchange_key(data))
