# The pytest conftest of the whole test tree: plugins only.
#
# Helpers the tests share (peers, waits, packets, the shared captures through
# cyncsim.captures.shared_captures_dir()) live in tests/support, imported explicitly; a test
# module never imports this file or another test module.
from __future__ import annotations

pytest_plugins = ("pytester",)
