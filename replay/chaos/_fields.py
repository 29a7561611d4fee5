# Chaos config fields: Direction, the declared field rules and the ConfigSpec base class.
#
# Strategy: the config classes (in replay/chaos/config.py) declare each field's rule once, as
# dataclass field metadata made by the ``*_field`` helpers here; ConfigSpec checks every field
# with one table of checkers (by the metadata's "kind") and ``build_spec`` builds a config
# from plain data (TOML/JSON), rejecting unknown keys; every error is a ChaosConfigError that
# names the source, the key path, the value and the allowed range.  Pure: no I/O.
# Private module: import the public names from cyncsim.replay.chaos.
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field, fields
from enum import StrEnum
from typing import Any, Self, TypeVar

from cyncsim.replay.errors import ChaosConfigError

__all__ = [
    "DIRECTION_META",
    "ConfigSpec",
    "Direction",
    "build_spec",
    "flag_field",
    "int_field",
    "pattern_field",
    "rate_field",
    "real_field",
    "spec_meta",
]

_T = TypeVar("_T")


class Direction(StrEnum):
    """Direction of a packet, from the device's point of view."""

    TO_DEVICE = "to_device"  # the device receives it (controller/cloud -> device)
    FROM_DEVICE = "from_device"  # the device sends it (device -> controller/cloud)

    @classmethod
    def parse(cls, value: Direction | str) -> Direction:
        try:
            return cls(value)
        except ValueError:
            raise ChaosConfigError(
                f"direction={value!r} is not a direction: allowed 'to_device' or 'from_device'"
            ) from None


# --- declared field rules -------------------------------------------------------------------


def real_field(default: Any = MISSING, *, lo: float = 0.0, hi: float = math.inf, **kw: Any) -> Any:
    """A finite float field in [lo, hi] (``lo_open=True``: > lo; ``optional=True``: or None)."""
    return field(default=default, metadata={"kind": "real", "lo": lo, "hi": hi, **kw})


def rate_field(default: float = 0.0) -> Any:
    """A probability field, 0..1."""
    return real_field(default, hi=1.0)


def int_field(default: Any = MISSING, *, lo: int = 1, optional: bool = False) -> Any:
    """An integer field >= lo (``optional=True``: or None)."""
    return field(default=default, metadata={"kind": "int", "lo": lo, "optional": optional})


def flag_field(default: bool) -> Any:
    return field(default=default, metadata={"kind": "bool"})


def pattern_field() -> Any:
    """A set of 1-based packet numbers, stored as a sorted tuple."""
    return field(default=(), metadata={"kind": "pattern"})


def spec_meta(cls: type, optional: bool = False) -> dict[str, Any]:
    """Metadata of a nested ConfigSpec field (use with ``field(metadata=...)``)."""
    return {"kind": "spec", "cls": cls, "optional": optional}


DIRECTION_META: dict[str, Any] = {"kind": "direction"}  # None or a Direction


def _or_none(meta: Mapping[str, Any]) -> str:
    return " or None" if meta.get("optional") else ""


def _range_text(name: str, meta: Mapping[str, Any]) -> str:
    lo, hi, lo_open = meta["lo"], meta.get("hi", math.inf), meta.get("lo_open", False)
    if hi == math.inf:
        return f"{name} {'>' if lo_open else '>='} {lo:g}"
    return f"{lo:g} {'<' if lo_open else '<='} {name} <= {hi:g}"


def _bad_range(name: str, value: object, meta: Mapping[str, Any]) -> ChaosConfigError:
    return ChaosConfigError(
        f"{name}={value!r} is out of range: allowed {_range_text(name, meta)}{_or_none(meta)}"
    )


def _bad_type(name: str, value: object, expected: str) -> ChaosConfigError:
    return ChaosConfigError(
        f"{name}={value!r} has the wrong type ({type(value).__name__}): expected {expected}"
    )


def _check_real(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    if value is None and meta.get("optional"):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_type(name, value, "a number" + _or_none(meta))
    v = float(value)
    lo_ok = v > meta["lo"] if meta.get("lo_open") else v >= meta["lo"]
    if not (math.isfinite(v) and lo_ok and v <= meta["hi"]):
        raise _bad_range(name, value, meta)
    return v


def _check_int(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    if value is None and meta.get("optional"):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_type(name, value, "an integer" + _or_none(meta))
    if value < meta["lo"]:
        raise _bad_range(name, value, meta)
    return value


def _check_bool(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    if not isinstance(value, bool):
        raise _bad_type(name, value, "true or false")
    return value


def _check_pattern(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    if not isinstance(value, list | tuple | set | frozenset):
        raise _bad_type(name, value, "a list of packet numbers")
    for n in value:
        if isinstance(n, bool) or not isinstance(n, int):
            raise _bad_type(f"{name} item", n, "an integer packet number")
        if n < 1:
            raise ChaosConfigError(
                f"{name} item {n!r} is out of range: packet numbers are 1-based (>= 1)"
            )
    return tuple(sorted(set(value)))


def _check_spec(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    if value is None and meta.get("optional"):
        return None
    if type(value) is not meta["cls"]:
        raise _bad_type(name, value, meta["cls"].__name__ + _or_none(meta))
    return value


def _check_direction(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    return None if value is None else Direction.parse(value)


_CHECKERS: dict[str, Callable[[str, Any, Mapping[str, Any]], Any]] = {
    "real": _check_real,
    "int": _check_int,
    "bool": _check_bool,
    "pattern": _check_pattern,
    "spec": _check_spec,
    "direction": _check_direction,
}


class ConfigSpec:
    """Base of the config dataclasses: validation of declared fields, from_dict, to_dict."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            kind = f.metadata.get("kind")
            if kind is None:
                continue
            value = getattr(self, f.name)
            checked = _CHECKERS[kind](f.name, value, f.metadata)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self._check_together()

    def _check_together(self) -> None:
        """Rules across fields; overridden by the classes that have some."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Self:
        """Build from plain data (parsed TOML/JSON); unknown keys are rejected.

        Errors raise ChaosConfigError naming ``source`` (a file name), the key path
        (``to_device.burst.p``), the value and the allowed range.
        """
        return build_spec(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (TOML/JSON-able); ``from_dict(to_dict())`` gives an equal object."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, ConfigSpec):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Direction):
                value = str(value)
            out[f.name] = value
        return out


def build_spec(cls: type[_T], data: object, source: str, prefix: str = "") -> _T:
    """``cls(**data)`` with nested tables built too; errors name ``source`` and the key path."""
    what = prefix.rstrip(".") or "chaos config"
    if not isinstance(data, Mapping):
        raise ChaosConfigError(f"{source}: {what} must be a table/object, got {data!r}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise ChaosConfigError(
                f"{source}: unknown key {prefix + str(key)!r} in {what}; known keys: "
                + ", ".join(sorted(known))
            )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        meta = known[key].metadata
        if meta.get("kind") == "spec" and value is not None:
            value = build_spec(meta["cls"], value, source, f"{prefix}{key}.")
        kwargs[key] = value
    for name, f in known.items():
        if f.default is MISSING and f.default_factory is MISSING and name not in kwargs:
            raise ChaosConfigError(f"{source}: {prefix}{name} is required in {what}")
    try:
        return cls(**kwargs)
    except ChaosConfigError as e:
        raise ChaosConfigError(f"{source}: {prefix}{e}") from None
