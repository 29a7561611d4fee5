# The README's pytest-plugin example is the test module that runs it, word for word.
from __future__ import annotations

import re

from tests.support import REPO_ROOT


def test_readme_plugin_example_is_the_tested_module() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# The example the README shows.*?)```", readme, re.S)
    tested = (REPO_ROOT / "tests/integration/test_readme_example.py").read_text(encoding="utf-8")
    assert len(blocks) == 1 and blocks[0].strip() == tested.strip()


def test_readme_names_every_cli_verb() -> None:
    from cyncsim.tools.cli import COMMANDS

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for verb in COMMANDS:
        assert f"## `cyncsim {verb}" in readme, verb
