# Captures the project ships or points at: the default learned model, and where the shared
# real captures live (env CYNCSIM_CAPTURES, default ../shared/captures beside the checkout).
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyncsim.replay.model import DeviceModel

__all__ = ["DEFAULT_MODEL_PATH", "load_default_model", "shared_captures_dir"]

DEFAULT_MODEL_PATH = Path(__file__).with_name("default_model.msgpack")


def shared_captures_dir() -> Path:
    env = os.environ.get("CYNCSIM_CAPTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "captures"


def load_default_model() -> DeviceModel:
    """The model built from the shared captures and shipped inside the package."""
    from cyncsim.replay.model import DeviceModel

    return DeviceModel.load(DEFAULT_MODEL_PATH)
