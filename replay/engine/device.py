# The device role of the replay engine: a learned model turned into a Cync device that
# answers packets, keeps state and counters, and talks on its own.
#
# Strategy: pure and sans-IO.  The caller hands in whole packets and its clock value ``now``
# (seconds, any monotonic clock) and gets back actions as data (replay/engine/actions.py).
# Timers are not run here: ``next_deadline()`` says when ``poll(now)`` must be called next,
# and calling it early is harmless (a heartbeat deadline that traffic moved later simply
# returns nothing).  Every response byte comes from a learned template and every delay from a
# learned distribution times ``time_scale``.  A device works through its requests one after
# another, per response kind: response k leaves at max(arrival_k, departure_{k-1}) + a service
# sample, never before the previous response to the same request, so a burst queues up as on
# real bridges; where the model learned stall episodes, the 0x7B queue follows them instead
# (idle latency, busy pace, a stall and the flush of the commands queued behind it:
# _stalls.py).  Dispatch is a table by packet type (the Engine base in _base.py).
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from cyncsim.replay.engine._base import DEDUP_WINDOW, INF, Engine
from cyncsim.replay.engine._reconnect import (
    DEFAULT_RECONNECT_AFTER_CLOSE_S,
    DEFAULT_SPREAD_S,
    sample_spread,
)
from cyncsim.replay.engine.actions import Action, Close, Relay, Send
from cyncsim.replay.engine.state import DeviceState, firmware_report, status_packet
from cyncsim.replay.engine.templates import RenderContext
from cyncsim.replay.engine.view import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_RECONNECT_S,
    ModelView,
)
from cyncsim.replay.model import DeviceModel, Distribution
from cyncsim.replay.payloads import (
    GROUP_BASE,
    RGB_MODE,
    UNCHANGED,
    Command,
    LightStateCommand,
    PowerCommand,
    StatusReport,
    build_hello,
    build_report,
    build_simple,
    decode_command,
)
from cyncsim.replay.protocol import (
    EXCHANGE_KEY,
    ID_PREFIX,
    CyncPacket,
    FramedPacket,
    FrameKind,
    PacketType,
)
from cyncsim.replay.seeds import SeedTree

__all__ = ["MIN_CADENCE_S", "DeviceEngine", "pick_script"]

MIN_CADENCE_S = 0.001  # floor for spontaneous timers, so a zero sample never spins
_PING = build_simple(PacketType.PING).encode()
_TIME_REQUEST = build_simple(PacketType.TIME_REQUEST).encode()
# A command's identity for duplicate detection: everything after the outer header, i.e. a
# byte-identical repeat (a retransmission, a duplicated packet). Not (message id, sequence)
# alone: the local server of 152132 always sends message id 00 00 00 and reuses frame
# sequences across opcodes, and the real device executed those commands (PROTOCOL.md 10.5).
_IDENT = slice(EXCHANGE_KEY.start, None)


def pick_script(
    scripts: Sequence[tuple[int, list[tuple[str, float]]]], u: float
) -> list[tuple[str, float]]:
    """The script whose cumulative count share covers ``u`` in [0, 1)."""
    total = sum(n for n, _ in scripts)
    if total <= 0:
        return []
    target = u * total
    for n, steps in scripts:
        if target < n:
            return steps
        target -= n
    return scripts[-1][1]


class DeviceEngine(Engine):
    """A Cync device: answers the controller, keeps state and counters, talks on its own.

    Choices where the captures are silent: the 0x23 is sent again after each learned hello
    retry until a 0x28 comes; after the 0x28 the two firmware reports (network, device) go
    out first when the picked learned script has none, then the script (its 0x83 fa db steps
    report each known mesh node once); every command applied to this node is followed by a
    0x83 status (the learned share of that answer is not sampled); a foreign device id, a
    duplicate, a malformed frame or a bad checksum gets the 0x7B alone; the f9 52 table is
    rendered with the ``mesh`` states; ``time_scale`` 0 turns delays and spontaneous traffic
    (heartbeat, 0x43, hello retries) off.

    ``mesh`` maps mesh node ids to states the device can report (its own node is added);
    a fleet may pass one shared dict so every bridge's mesh table shows the whole fleet.
    ``groups``: group numbers n (or addresses 0x8000 + n) this node belongs to.
    ``hello_attempts``: close the connection after this many unanswered 0x23 (None: never).
    """

    role = "device"

    def __init__(
        self,
        model: DeviceModel | ModelView,
        device_id: bytes,
        auth_code: bytes,
        *,
        mesh_node: int,
        state: DeviceState | None = None,
        groups: Iterable[int] = (),
        mesh: dict[int, DeviceState] | None = None,
        firmware: dict[str, str] | None = None,
        variant: str | None = None,
        seed: int | SeedTree | None = None,
        time_scale: float = 1.0,
        wall_offset: float = 0.0,
        hello_attempts: int | None = None,
    ) -> None:
        if len(device_id) != 4 or len(auth_code) != 16:
            raise ValueError("device_id must be 4 bytes and auth_code 16 bytes")
        if not 0 <= mesh_node < GROUP_BASE:
            raise ValueError(f"mesh_node={mesh_node} must be 0..{GROUP_BASE - 1}")
        super().__init__(
            model,
            variant=variant,
            seed=seed,
            name=device_id.hex(),
            time_scale=time_scale,
            wall_offset=wall_offset,
        )
        self.device_id = device_id
        self.auth_code = auth_code
        self.mesh_node = mesh_node
        self.state = state if state is not None else DeviceState()
        self.groups = frozenset(g - GROUP_BASE if g >= GROUP_BASE else g for g in groups)
        self.mesh = mesh if mesh is not None else {}
        self.mesh[mesh_node] = self.state
        self.firmware = dict(firmware or {})
        self.hello_attempts = hello_attempts
        self.counters: dict[str, int] = {"device:0x73": 1, "device:0x83": 1}
        self._ctx = RenderContext(
            device_id, auth_code, self.counters, mesh_node, self.state, self.mesh
        )
        self._beh_rng = self.seeds.stream(f"engine/{self.name}/behaviour")
        self._reconnect_rng = self.seeds.stream(f"engine/{self.name}/reconnect")
        self._retries = 0  # failed dials since the last connection
        self._recent: deque[bytes] = deque()  # the last DEDUP_WINDOW command idents ...
        self._recent_set: set[bytes] = set()  # ... and the same as a set
        self.acked = False
        self.hellos = 0
        self._hello_at = self._hello_due = self._status_due = INF
        self._hb_idle = INF
        self._script: deque[tuple[float, str]] = deque()
        self._script_pos = 0
        self._fw_sent = 0
        self._handlers = {PacketType.DATA: self._on_data, PacketType.HELLO_ACK: self._on_hello_ack}

    # ------------------------------------------------------------------ timing
    def _context(self, now: float) -> RenderContext:
        self._ctx.wall = now + self.wall_offset
        return self._ctx

    def _behaviour(self, dist: Distribution | None, default: float | None) -> float:
        """A scaled cadence sample (``default`` seconds when the model has none); inf: off."""
        if self.time_scale == 0:
            return INF
        if dist:
            base = dist.sample(self._beh_rng)
        elif default is not None:
            base = default
        else:
            return INF
        return max(MIN_CADENCE_S, base * self.time_scale)

    def reconnect_delay(self) -> float:
        """Wait before dialling again after the controller closed the connection (scaled):
        about 0.25 s, so that a device whose 0x23 cync-controller leaves unanswered (and
        closes after 14.75 s) sends its next 0x23 15 s after the last (_reconnect.py)."""
        self._retries = 0
        return max(0.0, DEFAULT_RECONNECT_AFTER_CLOSE_S * self.time_scale)

    def retry_delay(self) -> float:
        """Wait before dialling again after a dial failed (scaled): the first time a draw
        from the learned spread of connection starts, then that spread's span (at least 1 s)
        each time, so a fleet whose controller was down comes back spread as the captured
        wave (_reconnect.py); drawn from this device's own "reconnect" stream."""
        if self.time_scale == 0:
            return 0.0
        spread = self.view.spread
        self._retries += 1
        if self._retries == 1:
            base = sample_spread(spread, self._reconnect_rng)
        else:
            base = max(1.0, spread.values[-1] if spread else DEFAULT_SPREAD_S)
        return max(MIN_CADENCE_S, base * self.time_scale)

    # ------------------------------------------------------------------ session
    def connection_made(self, now: float) -> list[Action]:
        super().connection_made(now)
        self._retries = 0
        self.acked = False
        self.hellos = 0
        self._recent.clear()
        self._recent_set.clear()
        self._script.clear()
        self._script_pos = self._fw_sent = 0
        self._status_due = INF
        self._hb_idle = self._behaviour(self.view.heartbeat, DEFAULT_HEARTBEAT_S)
        return self._sent(self._hello(now))

    def connection_lost(self, now: float) -> None:
        super().connection_lost(now)
        self._hello_due = self._status_due = self._hb_idle = INF
        self._script.clear()

    def _hello(self, now: float) -> list[Action]:
        self.hellos += 1
        self._count("hellos")
        self._hello_at = now
        self._hello_due = now + self._behaviour(self.view.reconnect, DEFAULT_RECONNECT_S)
        return [Send(now, build_hello(self.device_id, self.auth_code).encode(), "0x23")]

    def _on_hello_ack(self, data: bytes, pkt: CyncPacket | None, now: float) -> list[Action]:
        if self.acked:
            return []
        self.acked = True
        self._hello_due = INF
        steps = pick_script(self.view.scripts, self._beh_rng.random()) if self.view.scripts else []
        keys = [k for k, _ in steps]
        if self.firmware and "0x83:fa:00" not in keys:
            steps = [("0x83:fa:00", 0.0)] * len(self.firmware) + list(steps)
        scale = self.time_scale
        for key, offset in steps:
            self._script.append((max(now, self._hello_at + offset * scale), key))
        self._status_due = now + self._behaviour(self.view.status_interval, None)
        return self.poll(now)

    def poll(self, now: float) -> list[Action]:
        if not self.connected:
            return []
        out: list[Action] = []
        if self._hello_due <= now:
            if self.hello_attempts is not None and self.hellos >= self.hello_attempts:
                self._hello_due = INF
                self._count("hello_give_up")
                return [Close(now, f"no 0x28 after {self.hellos} hellos")]
            out += self._hello(now)
        while self._script and self._script[0][0] <= now:
            _, key = self._script.popleft()
            out += self._script_step(key, now)
        if self._status_due <= now:
            out.append(Send(now, status_packet(self.device_id, self.mesh_node, self.state), "0x43"))
            self._status_due = now + self._behaviour(self.view.status_interval, None)
        self._sent(out)
        if self.last_traffic + self._hb_idle <= now:
            out.append(Send(now, _PING, "0xd3"))
            self._count("pings")
            self.last_traffic = now
            self._hb_idle = self._behaviour(self.view.heartbeat, DEFAULT_HEARTBEAT_S)
        return out

    def next_deadline(self) -> float:
        if not self.connected:
            return INF
        t = self.last_traffic + self._hb_idle  # asked after every packet: no min() calls
        hello, status = self._hello_due, self._status_due
        t = hello if hello < t else t
        t = status if status < t else t
        if self._script:
            first = self._script[0][0]
            t = first if first < t else t
        return t

    def _script_step(self, key: str, now: float) -> list[Action]:
        if key == "0x43":
            return [Send(now, status_packet(self.device_id, self.mesh_node, self.state), key)]
        if key == "0x83:fa:db":
            nodes = [self.mesh_node, *sorted(n for n in self.mesh if n != self.mesh_node)]
            self._script_pos += 1
            if self._script_pos > len(nodes):
                return []  # a learned burst longer than the mesh: each node once
            node = nodes[self._script_pos - 1]
            return [self._report(node, now, key)]
        if key == "0x83:fa:00":
            which = ("network", "device")[self._fw_sent % 2]
            self._fw_sent += 1
            ver = self.firmware.get(which, "0")
            mid = self._ctx.next_count("device:0x83").to_bytes(2, "big") + b"\0"
            at = self._counter_slot("device:0x83", now)
            return [Send(at, firmware_report(self.device_id, mid, which, ver), key)]
        if key == "0xc3":
            return [Send(now, _TIME_REQUEST, key)]
        if key == "0xd3":
            return [Send(now, _PING, key)]
        self._count("script_skipped")
        return []

    # ------------------------------------------------------------------ commands
    def _on_data(self, data: bytes, pkt: CyncPacket | None, now: float) -> list[Action]:
        if len(data) < ID_PREFIX.end:
            self._count("undecodable")
            return []
        stats = self.stats  # the hot path: counters, dedup window and context inline
        stats["commands"] = stats.get("commands", 0) + 1
        # A bad checksum is treated as malformed (acked, not executed).  receive() decoded
        # ``pkt`` itself, non-strictly: with a frame, its only possible defect is a bad checksum.
        frame = pkt.frame if isinstance(pkt, FramedPacket) and pkt.defect is None else None
        ident = data[_IDENT]
        foreign = not ident.startswith(self.device_id)
        recent = self._recent_set
        duplicate = ident in recent
        if not duplicate:
            self._recent.append(ident)
            recent.add(ident)
            if len(self._recent) > DEDUP_WINDOW:
                recent.discard(self._recent.popleft())
        ctx = self._ctx
        ctx.wall = now + self.wall_offset
        if frame is None or frame.kind != FrameKind.REQUEST:
            self._count("malformed" if frame is None else "unknown")
            return self._respond(data, self.view.acks(None), now, ctx)
        split = self.view.frame_split(frame.kind, frame.opcode)
        if not split.known:
            self._count("unknown")  # no learned result: the 0x7b alone, as for injections
        if foreign or duplicate:
            self._count("foreign" if foreign else "duplicates")
            return self._respond(data, split.acks, now, ctx)
        command = decode_command(frame)
        if command is None:
            return self._respond(data, split.without_status, now, ctx)
        applied = self._apply(command)
        out = self._respond(data, split.plans if applied else split.without_status, now, ctx)
        if command.target != self.mesh_node:
            out.append(Relay(now, command.target, command))
        return out

    def _targets_me(self, target: int) -> bool:
        if target >= GROUP_BASE:
            return target - GROUP_BASE in self.groups
        return target == self.mesh_node

    def _apply(self, command: Command) -> bool:
        """Apply a command to this node if it is addressed to it; True when applied."""
        target = command.target  # _targets_me, inline
        if not (
            target - GROUP_BASE in self.groups if target >= GROUP_BASE else target == self.mesh_node
        ):
            return False
        st = self.state
        if isinstance(command, PowerCommand):
            st.on = command.on
        elif isinstance(command, LightStateCommand):
            if command.brightness != UNCHANGED:
                st.brightness = command.brightness
            if command.color_temp == RGB_MODE:
                st.color_temp = RGB_MODE
                st.rgb = command.rgb
            elif command.color_temp != UNCHANGED:
                st.color_temp = command.color_temp
        st.toggle_count += 1
        self._count("applied")
        return True

    def apply_command(self, command: Command, now: float) -> list[Action]:
        """A command relayed over the mesh (not over this connection): apply it if it is
        addressed to this node and report the new state like a physical change."""
        if not self._apply(command):
            return []
        return self._sent([self._report(self.mesh_node, now)])

    # ------------------------------------------------------------------ state
    def _report(self, node: int, now: float, key: str = "0x83:fa:db") -> Send:
        data = self.report_bytes(node, now)
        return Send(self._counter_slot("device:0x83", now), data, key)

    def report_bytes(self, node: int, now: float) -> bytes:
        """A 0x83 fa db 13 status for ``node`` from the learned template (own counter)."""
        ctx = self._context(now)
        ctx.node, ctx.state = node, self.mesh.get(node, self.state)
        try:
            if self.view.report is not None:
                return self.view.report.template.render(None, ctx)
            st = ctx.state
            mid = ctx.next_count("device:0x83").to_bytes(2, "big") + b"\0"
            rep = StatusReport(node, st.on, st.brightness, st.color_temp, st.rgb, int(st.online))
            return build_report(self.device_id, mid, rep).encode()
        finally:
            ctx.node, ctx.state = self.mesh_node, self.state

    def set_state(
        self,
        now: float,
        *,
        on: bool | None = None,
        brightness: int | None = None,
        color_temp: int | None = None,
        rgb: tuple[int, int, int] | None = None,
        online: bool | None = None,
    ) -> list[Action]:
        """Change state as a physical switch would; a 0x83 status follows when connected."""
        if brightness is not None and not 0 <= brightness <= 100:
            raise ValueError(f"brightness={brightness} must be 0..100")
        if color_temp is not None and not (0 <= color_temp <= 100 or color_temp == RGB_MODE):
            raise ValueError(f"color_temp={color_temp} must be 0..100 or 0xfe (RGB)")
        if rgb is not None and (len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb)):
            raise ValueError(f"rgb={rgb} must be three values 0..255")
        st = self.state
        st.on = st.on if on is None else bool(on)
        st.brightness = st.brightness if brightness is None else brightness
        if rgb is not None:
            st.rgb, st.color_temp = (rgb[0], rgb[1], rgb[2]), RGB_MODE
        if color_temp is not None:
            st.color_temp = color_temp
        st.online = st.online if online is None else bool(online)
        st.toggle_count += 1
        return self.status_broadcast(now)

    def status_broadcast(self, now: float) -> list[Action]:
        """A 0x83 with the current state (nothing when not connected)."""
        if not self.connected:
            return []
        return self._sent([self._report(self.mesh_node, now)])
