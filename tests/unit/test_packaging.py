# The distribution's package list names every package of the source tree, and nothing else, so
# the wheel carries every module under the one `cyncsim` namespace.
from __future__ import annotations

import tomllib
from typing import Any

from tests.support import REPO_ROOT

ROOTS = {
    "replay": "cyncsim.replay",
    "simulator": "cyncsim.simulator",
    "tools": "cyncsim.tools",
    "captures": "cyncsim.captures",
}


def _config() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        setuptools: dict[str, Any] = tomllib.load(fh)["tool"]["setuptools"]
    return setuptools


def test_every_source_package_is_in_the_distribution() -> None:
    found = {"cyncsim"}
    for folder, name in ROOTS.items():
        for init in (REPO_ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT / folder)
            if rel.parts[:1] == ("api",) and folder == "tools":
                continue  # tools/api is the package root `cyncsim` itself
            found.add(".".join([name, *rel.parts]))
    assert set(_config()["packages"]) == found


def test_the_package_root_and_its_folders() -> None:
    dirs = _config()["package-dir"]
    assert dirs == {"cyncsim": "tools/api", **{v: k for k, v in ROOTS.items()}}


def test_every_public_name_resolves() -> None:
    import cyncsim
    from cyncsim import simulator

    for module in (cyncsim, simulator):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
