# `make demo`: the main job on the built-in default.
#
# Reads the shared real captures (or says where it looked), prints what was decoded and
# learned, and shows the default model shipped inside the package.
from __future__ import annotations

import asyncio
import io
import sys
import tempfile
from pathlib import Path

from cyncsim.captures import DEFAULT_MODEL_PATH, shared_captures_dir
from cyncsim.tools.cli import main as cli


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
    if code:
        return code
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "session.pcapng"
        print("\n== a simulated device from the default model, driven by ReliableTransport")
        asyncio.run(_session(record))
        print(f"\n== cyncsim diff {DEFAULT_MODEL_PATH.name} <that recording> (structure check)")
        buf = io.StringIO()
        code = cli(["diff", "--no-progress", str(DEFAULT_MODEL_PATH), str(record)], out=buf)
        print(
            "\n".join(
                line
                for line in buf.getvalue().splitlines()
                if line.startswith(("verdict", "coverage", "candidate"))
            )
        )
    return 0 if code in (0, 1) else code


TIME_SCALE = 0.1  # the demo's device runs ten times faster than the real ones


async def _session(record: Path) -> None:
    from cyncsim.simulator.device import CyncDeviceSimulator
    from cyncsim.simulator.transport import ReliableTransport

    async with (
        CyncDeviceSimulator("6457e7f2", seed=1, time_scale=TIME_SCALE, record=str(record)) as dev,
        ReliableTransport("127.0.0.1", dev.port, seed=1) as ctl,
    ):
        await ctl.connect()
        await ctl.handshake()
        print(f"device {dev.device_id.hex()} on port {dev.port}, node {dev.engine.mesh_node}")
        print(
            f"  time scale {TIME_SCALE:g}: every delay is {TIME_SCALE:g} x the real devices', "
            "so each time is shown as measured and as the real-time equivalent"
        )
        node = dev.engine.mesh_node
        for label, send in (
            ("power on", ctl.send_toggle_command(node, True, wait_result=True)),
            ("brightness 40", ctl.send_light_state(node, brightness=40, wait_result=True)),
            ("colour temp 70", ctl.send_light_state(node, color_temp=70, wait_result=True)),
            ("power off", ctl.send_toggle_command(node, False, wait_result=True)),
        ):
            r = await send
            print(
                f"  {label:<15} {r.reason:<6} ack+result in {r.latency_s * 1000:6.1f} ms"
                f" (real time {r.latency_s * 1000 / TIME_SCALE:6.0f} ms)"
                f"  -> on={dev.state.on} brightness={dev.state.brightness}"
                f" color_temp={dev.state.color_temp}"
            )
        await asyncio.sleep(0.5)


def _summary_only(text: str) -> str:
    """The summary of an inspect run: what follows its first blank line."""
    return text.split("\n\n", 1)[1] if "\n\n" in text else text


if __name__ == "__main__":
    sys.exit(main())
