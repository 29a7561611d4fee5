# Reconnecting: how long a device waits before dialling its controller again.
#
# Strategy: two cases, as in the captures (PROTOCOL.md 10.3).  After the controller closed an
# established connection the device dials again about 0.25 s later (cync-controller closes an
# unanswered connection after 14.75 s, and the same device's next 0x23 comes 15.0 s after the
# previous one); the MITM logs do not record closes, so this is the documented value, not a
# learned one.  After a dial that failed (controller down, connection refused) the device
# waits a draw from the learned spread of connection starts (085753 and the socat logs: every
# device back within ~31 s of the proxy starting), so a fleet that lost its controller comes
# back as the captured wave, not all at once.  The spread is drawn as a kernel density
# estimate (a captured start plus Gaussian noise of Silverman's bandwidth, reflected at 0):
# 35 captured starts are a small sample, and drawing their order statistics alone would turn
# two devices that happened to connect within a millisecond into a point mass holding 1/34 of
# any fleet.  Pure: the caller passes the random stream (the engine's "reconnect" stream).
from __future__ import annotations

import math
import random
import statistics

from cyncsim.replay.model import Distribution

__all__ = [
    "DEFAULT_RECONNECT_AFTER_CLOSE_S",
    "DEFAULT_SPREAD_S",
    "sample_spread",
    "spread_bandwidth",
]

DEFAULT_RECONNECT_AFTER_CLOSE_S = 0.25  # PROTOCOL.md 10.3: reconnect ~0.25 s after a close
DEFAULT_SPREAD_S = 30.0  # PROTOCOL.md 10.3: all devices (re)connected within ~30 s


def spread_bandwidth(values: tuple[float, ...]) -> float:
    """Silverman's rule of thumb: 0.9 * min(sd, IQR / 1.34) * n^(-1/5) (0 below 2 values)."""
    n = len(values)
    if n < 2:
        return 0.0
    sd = statistics.stdev(values)
    q1, _, q3 = statistics.quantiles(values, n=4)
    iqr = (q3 - q1) / 1.34
    scale = min(sd, iqr) if iqr > 0 else sd
    return 0.9 * scale * math.pow(n, -0.2)


def sample_spread(spread: Distribution | None, rng: random.Random) -> float:
    """One delay (seconds, unscaled) from the spread of connection starts: a captured start
    plus kernel noise, reflected at 0; uniform over DEFAULT_SPREAD_S without one."""
    if not spread:
        return rng.uniform(0.0, DEFAULT_SPREAD_S)
    values = spread.values
    base = values[rng.randrange(len(values))]
    h = _bandwidth(values)
    return abs(base + h * rng.gauss(0.0, 1.0)) if h > 0 else base


_BANDWIDTHS: dict[tuple[float, ...], float] = {}


def _bandwidth(values: tuple[float, ...]) -> float:
    h = _BANDWIDTHS.get(values)
    if h is None:
        h = spread_bandwidth(values)
        if math.isfinite(h) and len(_BANDWIDTHS) < 64:
            _BANDWIDTHS[values] = h
    return h
