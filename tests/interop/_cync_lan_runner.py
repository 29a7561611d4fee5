# Runs the real cync-lan server (PyPI ``cync-lan``, nCyncServer) inside its own Python >= 3.12
# virtual environment, as a subprocess of the interop tests (see cync_lan_harness.py).
#
# Strategy: set the CYNC_* environment variables from the command line *before* importing
# cync_lan (its const module reads them at import), load the mesh node list through cync-lan's
# own config reader (utils.parse_config on a generated cync_mesh.yaml), install a recording sink
# as ``GlobalObject.mqtt_client`` (every call cync-lan makes on its MQTT client becomes one JSON
# line), start nCyncServer, and print one JSON "ready" line on stdout with the bound ports.
# A tiny control channel on 127.0.0.1 (one JSON object per line, one reply line per request)
# lets the test read what the server registered, read the recorded messages and make the
# server send a command through its own API (CyncDevice.set_power / set_brightness / ...).
# The runner stops when asked to or when that control connection closes, so a killed test
# never leaves a server behind.
# Only the standard library and cync_lan are imported: this file runs under the interop venv,
# never under the project's own interpreter.  Loopback only.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

_ACTIONS = ("power", "brightness", "temperature", "rgb")


def _set_env(args: argparse.Namespace) -> None:
    """The settings cync-lan reads from the environment (const.py at import, reload_env)."""
    workdir = Path(args.workdir)
    os.environ.update(
        {
            "CYNC_SRV_HOST": args.host,
            "CYNC_PORT": str(args.port),
            "CYNC_DEVICE_CERT": args.cert,
            "CYNC_DEVICE_KEY": args.key,
            "CYNC_MAX_TCP_CONN": str(args.max_tcp_conn),
            "CYNC_CMD_BROADCASTS": str(args.cmd_broadcasts),
            "CYNC_RAW_DEBUG": "1" if args.raw else "0",
            "CYNC_DEBUG": "1",
            "CYNC_TOPIC": args.topic,
            # Everything cync-lan may write (uuid, experimental/unsupported logs) stays here.
            "CYNC_BASE_DIR": str(workdir),
            "CYNC_CONFIG_DIR": str(workdir),
            "CYNC_EXPERIMENTAL_LOG_PATH": str(workdir / "experimental_features.log"),
            "CYNC_UNSUPPORTED_LOG_PATH": str(workdir / "unsupported_devices.log"),
            "CYNC_MITM_LOG_DIR": str(workdir / "mitm_logs"),
            "CYNC_MITM_LOG_PATH": str(workdir / "mitm.log"),
        }
    )
    os.environ.pop("CYNC_TCP_WHITELIST", None)  # a whitelist from the caller would reject us


class RecordingSink:
    """Stands in for cync-lan's MQTT client (the MqttSink protocol in cync_lan/protocols.py).

    Every call becomes one record ``{"seq", "t", "kind", "topic", "payload"}``, appended to a
    JSON-lines file and kept in memory for the control channel.
    """

    def __init__(self, path: Path, topic: str) -> None:
        self.topic = topic
        self.records: list[dict[str, Any]] = []
        self._fh = path.open("a", encoding="utf-8")

    def record(self, kind: str, topic: str, payload: Any) -> None:
        rec = {
            "seq": len(self.records),
            "t": time.time(),
            "kind": kind,
            "topic": topic,
            "payload": payload,
        }
        self.records.append(rec)
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    # -- the generic MQTT call (server.py: connection counts, server running)
    async def publish(self, topic: str, payload: Any, *args: Any, **kwargs: Any) -> bool:
        if isinstance(payload, bytes | bytearray):
            payload = bytes(payload).decode("utf-8", "replace")
        self.record("publish", str(topic), payload)
        return True

    # -- state updates (devices.py)
    async def pub_online(self, device_id: int, status: bool) -> bool:
        self.record("online", f"{self.topic}/availability/{device_id}", bool(status))
        return True

    async def parse_entity_state(self, entity_state: Any, from_pkt: str | None = None) -> bool:
        fields = ("dev_id", "sub_id", "power", "brightness", "temperature", "red", "green")
        payload = {name: getattr(entity_state, name) for name in (*fields, "blue")}
        payload["recently_seen"] = entity_state.recently_seen
        payload["name"] = entity_state.name
        payload["from_pkt"] = from_pkt
        self.record("state", f"{self.topic}/status/{entity_state.dev_id}", payload)
        return True

    def _node_update(self, kind: str, node: Any, value: Any, sub_id: int | None) -> bool:
        payload = {"dev_id": node.id, "sub_id": sub_id, "value": value}
        self.record(kind, f"{self.topic}/status/{node.id}/{kind}", payload)
        return True

    async def update_entity_power(self, node: Any, state: int, sub_id: int | None = None) -> bool:
        return self._node_update("command_ack_power", node, state, sub_id)

    async def update_brightness(self, node: Any, bri: int, sub_id: int | None = None) -> bool:
        return self._node_update("command_ack_brightness", node, bri, sub_id)

    async def update_temperature(self, node: Any, temp: int, sub_id: int | None = None) -> bool:
        return self._node_update("command_ack_temperature", node, temp, sub_id)

    async def update_rgb(
        self, node: Any, rgb: tuple[int, int, int], sub_id: int | None = None
    ) -> bool:
        return self._node_update("command_ack_rgb", node, list(rgb), sub_id)

    async def update_fan_percent(self, node: Any, perc: int) -> bool:
        return self._node_update("command_ack_fan_percent", node, perc, None)

    async def update_fan_speed(self, node: Any, speed: Any) -> bool:
        return self._node_update("command_ack_fan_speed", node, str(speed), None)

    async def publish_motion_state(
        self, node: Any, motion: bool, from_pkt: str | None = None
    ) -> bool:
        return self._node_update("motion", node, bool(motion), None)

    # -- bookkeeping calls with nothing to publish here (signatures as in MqttSink)
    async def add_mitm_button(self, node: Any) -> None:
        self.record("mitm_button_added", f"{self.topic}/status/{node.id}/mitm", node.id)

    async def remove_mitm_button(self, node: Any) -> None:
        self.record("mitm_button_removed", f"{self.topic}/status/{node.id}/mitm", node.id)

    async def mark_app_wifi_active(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        self.record("app_wifi_active", f"{self.topic}/status/bridge/app", timeout)

    async def mark_app_mesh_active(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        self.record("app_mesh_active", f"{self.topic}/status/bridge/app", timeout)

    def report_unknown_device_id(self, dev_id: int) -> None:
        self.record("unknown_device", f"{self.topic}/status/bridge/unknown", dev_id)

    def get_startup_topic_state_sync(
        self, topic_str: str, timeout_seconds: float = 3.0
    ) -> str | None:
        return None  # no retained MQTT state: MITM mode stays off

    async def stop(self) -> None:
        return None


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server_mod: Any = importlib.import_module("cync_lan.server")
        self.structs_mod: Any = importlib.import_module("cync_lan.structs")
        self.utils_mod: Any = importlib.import_module("cync_lan.utils")
        self.sink = RecordingSink(Path(args.messages), args.topic)
        self.g: Any = self.structs_mod.GlobalObject()
        self.server: Any = None
        self.server_task: asyncio.Task[Any] | None = None
        self.stopped = asyncio.Event()
        self._control: asyncio.Server | None = None

    async def start(self) -> tuple[int, int]:
        nodes = await self.utils_mod.parse_config(Path(self.args.config))
        self.g.mqtt_client = self.sink
        self.g.loop = asyncio.get_running_loop()
        self.server = self.server_mod.nCyncServer(nodes)
        self.g.ncync_server = self.server
        self.server_task = asyncio.create_task(self.server.start(), name="ncync-server")
        self.server.start_task = self.server_task
        deadline = time.monotonic() + self.args.start_timeout
        while not (self.server.running and self.server._server is not None):
            if self.server_task.done():
                raise RuntimeError("nCyncServer.start() returned without serving (see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nCyncServer not serving after {self.args.start_timeout} s")
            await asyncio.sleep(0.01)
        port = int(self.server._server.sockets[0].getsockname()[1])
        self._control = await asyncio.start_server(self._control_client, "127.0.0.1", 0)
        return port, int(self._control.sockets[0].getsockname()[1])

    # ------------------------------------------------------------------ control channel
    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stopping = False
        try:
            while not stopping and (line := await reader.readline()):
                try:
                    request = json.loads(line)
                    reply = await self._handle(request)
                except Exception as exc:  # reported to the test, which fails with it
                    logging.getLogger("interop").exception("control request failed")
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
                stopping = bool(reply.get("stopping"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # A stop request or the test's control connection going away (the test process died):
        # either way stop, so the server never outlives its test.  Set last, so this handler
        # task has finished when main() tears the loop down.
        self.stopped.set()

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "snapshot":
            return {"ok": True, **self.snapshot()}
        if cmd == "messages":
            since = int(request.get("since", 0))
            return {"ok": True, "messages": self.sink.records[since:]}
        if cmd == "command":
            return await self.command(request)
        if cmd == "stop":
            await self.server.stop()
            return {"ok": True, "stopping": True}
        return {"ok": False, "error": f"unknown control request {cmd!r}"}

    def snapshot(self) -> dict[str, Any]:
        sessions = []
        for ip, sess in sorted(self.server.tcp_connections.items()):
            if sess is None:
                continue
            sessions.append(
                {
                    "ip": ip,
                    "queue_id": bytes(sess.queue_id).hex(),
                    "ready_to_control": bool(sess.ready_to_control),
                    "closed": bool(sess.is_closed()),
                    "is_app": bool(sess.is_app),
                    "node_id": sess.node.id if sess.node is not None else None,
                    "device_type_id": sess.device_type_id,
                    "version": sess.version_str,
                    "protocol_version": sess.protocol_version_str,
                    "device_timestamp": sess.device_timestamp,
                    "pending_commands": sorted(sess.messages.control),
                    "cipher": _cipher(sess),
                }
            )
        nodes = []
        for dev_id, node in sorted(self.server.node_devices.items()):
            entities = {
                str(sub): {
                    "power": e.power,
                    "brightness": e.brightness,
                    "temperature": e.temperature,
                    "rgb": [e.red, e.green, e.blue],
                    "recently_seen": e.recently_seen,
                }
                for sub, e in (node.entities or {}).items()
            }
            relay = node.relay_source.ip_address if node.relay_source is not None else None
            nodes.append(
                {
                    "id": dev_id,
                    "name": node.name,
                    "type": node.type,
                    "online": bool(node.online),
                    "entities": entities,
                    "relay_source": relay,
                }
            )
        return {"sessions": sessions, "nodes": nodes, "message_count": len(self.sink.records)}

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        node_id = int(request["node"])
        action = request["action"]
        value = request["value"]
        node = self.server.node_devices.get(node_id)
        if node is None:
            return {"ok": False, "error": f"node {node_id} is not in the cync-lan config"}
        if action not in _ACTIONS:
            return {"ok": False, "error": f"unknown action {action!r}, expected one of {_ACTIONS}"}
        before = {ip: list(s.control_bytes) for ip, s in self.server.tcp_connections.items() if s}
        if action == "power":
            await node.set_power(int(value))
        elif action == "brightness":
            await node.set_brightness(int(value))
        elif action == "temperature":
            await node.set_temperature(int(value))
        else:
            red, green, blue = (int(v) for v in value)
            await node.set_rgb(red, green, blue)
        # broadcast_control_command takes the next control id only on the sessions it writes to.
        sent_via = sorted(
            ip
            for ip, sess in self.server.tcp_connections.items()
            if sess is not None and list(sess.control_bytes) != before.get(ip)
        )
        return {"ok": True, "sent_via": sent_via}

    async def close(self) -> None:
        if self.server is not None and not self.server.shutting_down:
            await self.server.stop()
        if self.server_task is not None:
            self.server_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.server_task
        if self._control is not None:
            self._control.close()
        self.sink.close()


def _cipher(sess: Any) -> str | None:
    writer = sess.writer
    if writer is None:
        return None
    info = writer.get_extra_info("cipher")
    return str(info[0]) if info else None


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", required=True, help="cync_mesh.yaml with the mesh nodes")
    p.add_argument("--messages", required=True, help="JSON-lines file of the sink records")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-tcp-conn", type=int, default=8)
    p.add_argument("--cmd-broadcasts", type=int, default=2)
    p.add_argument("--topic", default="cync_lan")
    p.add_argument("--raw", action="store_true", help="CYNC_RAW_DEBUG: packet hex in the log")
    p.add_argument("--start-timeout", type=float, default=15.0)
    return p.parse_args(argv)


async def _amain(args: argparse.Namespace) -> int:
    runner = Runner(args)
    try:
        server_port, control_port = await runner.start()
    except Exception as exc:
        logging.getLogger("interop").exception("start failed")
        print(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 2
    version = importlib.import_module("cync_lan").__version__
    ready = {
        "event": "ready",
        "server_port": server_port,
        "control_port": control_port,
        "cync_lan_version": version,
        "python": sys.version.split()[0],
        "pid": os.getpid(),
    }
    print(json.dumps(ready), flush=True)
    sys.stdout = sys.stderr  # anything printed later goes to the log, not the ready pipe
    try:
        await runner.stopped.wait()
    finally:
        await runner.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.host.startswith("127.") or args.host == "::1"):
        print(json.dumps({"event": "error", "error": "loopback hosts only"}), flush=True)
        return 2
    _set_env(args)
    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s <%(name)s> %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("asyncio").setLevel(logging.INFO)
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
