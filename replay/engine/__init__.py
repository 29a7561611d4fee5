# The replay engine: a learned model turned into a device (or a cloud) that answers packets.
#
# Strategy: pure and sans-IO.  An engine takes whole packets and the caller's clock value and
# returns actions as data (Send / Close / Relay); the caller runs the timers it asks for
# (``next_deadline`` / ``poll``).  Modules by concept: actions (what an engine returns), state
# (DeviceState and the packets built from it), templates (learned bytes compiled for
# rendering), view (a model as one role and variant sees it: plans, behaviour), _base (what
# both roles share), device (DeviceEngine) and cloud (CloudEngine).  This package exports the
# public API.
from cyncsim.replay.engine._base import Engine
from cyncsim.replay.engine.actions import Action, Close, Relay, Send
from cyncsim.replay.engine.cloud import CloudEngine
from cyncsim.replay.engine.device import DeviceEngine
from cyncsim.replay.engine.state import DeviceState
from cyncsim.replay.engine.view import DEFAULT_HEARTBEAT_S, DEFAULT_RECONNECT_S, ModelView

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_RECONNECT_S",
    "Action",
    "Close",
    "CloudEngine",
    "DeviceEngine",
    "DeviceState",
    "Engine",
    "ModelView",
    "Relay",
    "Send",
]
