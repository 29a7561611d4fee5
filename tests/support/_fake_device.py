# A small fake Cync device for controller-side tests: a real asyncio TCP (optionally TLS) peer
# on loopback that speaks the device side of PROTOCOL.md sections 4-9.
#
# Strategy: asyncio streams plus the project's framer and packet builders, one connection at a
# time.  Listen mode sends the 0x23 hello to every controller that connects; dial mode connects
# out and sends it.  Every 0x73 is answered with a 0x7B echoing bytes 5-11, then (first copy of
# a message id only, so retransmissions are not executed twice) an f9 result and a 0x83
# ``fa db 13`` status; 0xA3 gets the 0xAB answer.  Knobs cover the controller's failure paths
# (drop the first N commands, never ack, duplicate or late acks, answer a batch out of order,
# hold the hello back); everything the controller sends is recorded for assertions.
from __future__ import annotations

import asyncio
import contextlib
import random
import ssl

from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.payloads import (
    LightStateCommand,
    PowerCommand,
    StatusReport,
    build_control_answer,
    build_data_ack,
    build_hello,
    build_report,
    build_result,
    decode_command,
)
from cyncsim.replay.protocol import CyncPacket, FramedPacket, FrameKind, IdPacket, PacketType
from tests.support._packets import AUTH, DEV

__all__ = ["FakeDevice"]


class FakeDevice:
    def __init__(
        self,
        *,
        device_id: bytes = DEV,
        auth_code: bytes = AUTH,
        hello: bytes | None = None,  # raw bytes sent instead of the 0x23 (b"": send nothing)
        drop_first: int = 0,  # ignore the first N 0x73 received (no 0x7B)
        ack: bool = True,  # False: never answer a 0x73
        duplicate_acks: bool = False,  # send every 0x7B twice
        reorder_batch: int = 0,  # collect N commands, then answer them in shuffled order
        ack_delay: float = 0.0,  # seconds before answering a command
        send_results: bool = True,
        send_status: bool = True,
        seed: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.device_id = device_id
        self.auth_code = auth_code
        self.hello = hello
        self.drop_first = drop_first
        self.ack = ack
        self.duplicate_acks = duplicate_acks
        self.reorder_batch = reorder_batch
        self.ack_delay = ack_delay
        self.send_results = send_results
        self.send_status = send_status
        self.tls = tls
        self.hello_gate: asyncio.Event | None = None  # set: each new connection waits on it
        self.received: list[CyncPacket] = []  # everything from the controller, all connections
        self.commands: list[FramedPacket] = []  # every 0x73, retransmissions included
        self.executed: dict[bytes, FramedPacket] = {}  # bytes 5-11 -> first copy, in order
        self.acks_sent = 0
        self.connections = 0
        self.nodes: dict[int, StatusReport] = {}
        self._rng = random.Random(seed)
        self._batch: list[FramedPacket] = []
        self._data_counter = 0
        self._report_counter = 0
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------- lifecycle
    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._run, host, port, ssl=self.tls)
        return self.port

    @property
    def port(self) -> int:
        assert self._server is not None, "not listening"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def dial(self, port: int, host: str = "127.0.0.1") -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=self.tls)
        task = asyncio.create_task(self._run(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drop_connection(self) -> None:
        """Close the current connection (the controller sees EOF)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_connection()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeDevice:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- sending on demand
    async def send(self, data: bytes | CyncPacket) -> None:
        assert self._writer is not None, "no controller connected"
        self._writer.write(data if isinstance(data, bytes) else data.encode())
        await self._writer.drain()

    def report(self, node: int, on: bool, msg_counter: int | None = None) -> FramedPacket:
        """A 0x83 fa db 13 status for ``node`` (own 0x83 counter unless given)."""
        if msg_counter is None:
            self._report_counter += 1
            msg_counter = self._report_counter
        status = StatusReport(node, on, 100 if on else 0, 50, (0, 0, 0))
        return build_report(self.device_id, _msg_id(msg_counter), status)

    # ----------------------------------------------------------------------- inspection
    @property
    def connected(self) -> bool:
        return self._writer is not None

    def of_type(self, ptype: int) -> list[CyncPacket]:
        return [p for p in self.received if p.type == ptype]

    # ------------------------------------------------------------------------ internals
    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connections += 1
        framer = PacketFramer(strict=False)
        try:
            if self.hello_gate is not None:
                await self.hello_gate.wait()
            hello = self.hello
            if hello is None:
                hello = build_hello(self.device_id, self.auth_code).encode()
            if hello:
                writer.write(hello)
                await writer.drain()
            while data := await reader.read(4096):
                for pkt in framer.feed(data):
                    await self._on_packet(writer, pkt)
        except OSError:
            pass  # connection reset by the controller
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    async def _on_packet(self, writer: asyncio.StreamWriter, pkt: CyncPacket) -> None:
        self.received.append(pkt)
        if pkt.type == PacketType.DATA and isinstance(pkt, FramedPacket):
            await self._on_command(writer, pkt)
        elif pkt.type == PacketType.CONTROL and isinstance(pkt, IdPacket):
            writer.write(build_control_answer(pkt).encode())
            await writer.drain()

    async def _on_command(self, writer: asyncio.StreamWriter, cmd: FramedPacket) -> None:
        self.commands.append(cmd)
        if len(self.commands) <= self.drop_first or not self.ack:
            return
        batch = [cmd]
        if self.reorder_batch:
            self._batch.append(cmd)
            if len(self._batch) < self.reorder_batch:
                return
            batch, self._batch = self._batch, []
            self._rng.shuffle(batch)
        for c in batch:
            await self._answer(writer, c)

    async def _answer(self, writer: asyncio.StreamWriter, cmd: FramedPacket) -> None:
        if self.ack_delay:
            await asyncio.sleep(self.ack_delay)
        ack = build_data_ack(cmd).encode()
        out = [ack, ack] if self.duplicate_acks else [ack]
        self.acks_sent += len(out)
        key = cmd.device_id + cmd.msg_id
        frame = cmd.frame
        if key not in self.executed and frame is not None and frame.kind == FrameKind.REQUEST:
            self.executed[key] = cmd
            if self.send_results:
                self._data_counter += 1
                result = build_result(self.device_id, _msg_id(self._data_counter), frame)
                out.append(result.encode())
            command = decode_command(frame)
            if command is not None:
                status = self._apply(command)
                if self.send_status:
                    self._report_counter += 1
                    report = build_report(self.device_id, _msg_id(self._report_counter), status)
                    out.append(report.encode())
        writer.write(b"".join(out))
        await writer.drain()

    def _apply(self, command: PowerCommand | LightStateCommand) -> StatusReport:
        old = self.nodes.get(command.target, StatusReport(command.target, False, 0, 0, (0, 0, 0)))
        if isinstance(command, PowerCommand):
            new = StatusReport(command.target, command.on, old.brightness, old.color_temp, old.rgb)
        else:
            bri = old.brightness if command.brightness == 0xFF else command.brightness
            ct = old.color_temp if command.color_temp == 0xFF else command.color_temp
            rgb = command.rgb if command.color_temp == 0xFE else old.rgb
            new = StatusReport(command.target, old.on, bri, ct, rgb)
        self.nodes[command.target] = new
        return new


def _msg_id(counter: int) -> bytes:
    return bytes(((counter >> 8) & 0xFF, counter & 0xFF, 0))
