# The built wheel, installed with its core dependencies only into a fresh venv, works inside a
# user's project that has its own top-level `simulator`, `replay`, `tools` and `captures`
# packages: the pytest plugin loads, a test using `cync_device` toggles a light, and the
# `cyncsim` command runs from that project's root.
#
# Strategy: copy the tracked sources to a temporary folder (the checkout's own build/ and
# .venv stay out of it), build the wheel there, make a venv and `pip install` the wheel (the
# core dependencies come from the package index; nothing from the dev extra), then run a
# throwaway project's tests with that venv's Python. It needs the package index; without it
# the test skips with pip's reason.
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow

_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "docs", "tests"
)

USER_TEST = """
import asyncio

import pytest


@pytest.mark.asyncio
async def test_toggle(cync_device):
    from cyncsim import ReliableTransport

    import simulator, replay, tools, captures  # the project's own packages still win
    assert simulator.OWN == replay.OWN == tools.OWN == captures.OWN == "user project"

    async with ReliableTransport("127.0.0.1", cync_device.port) as transport:
        await transport.connect()
        await transport.handshake()
        result = await transport.send_toggle_command(cync_device.engine.mesh_node, True)
    assert result.success and result.reason == "acked", result
    assert cync_device.engine.state.on
"""


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_wheel_in_a_fresh_venv_inside_a_project_with_generic_packages(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO_ROOT, src, ignore=_IGNORE, symlinks=True)
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), "."], src
    )
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        pytest.skip(f"no package index to build with: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("cyncsim-*.whl")

    # Nothing generic at the top of site-packages: every file is under cyncsim/ or the
    # distribution's own metadata.
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"cyncsim", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], tmp_path).returncode == 0
    py = venv / "bin" / "python"
    installed = _run([str(py), "-m", "pip", "install", "-q", str(wheel)], tmp_path)
    assert installed.returncode == 0, installed.stderr
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).stdout.strip()
    )
    # The light core: none of the extras' heavy parts came with it.
    for heavy in ("matplotlib", "scapy", "dpkt", "PIL"):
        assert not (site / heavy).exists(), f"{heavy} was installed with the core"
    print(f"core venv: {_dir_size(venv) / 1e6:.0f} MB")

    project = tmp_path / "project"
    for own in ("simulator", "replay", "tools", "captures"):
        (project / own).mkdir(parents=True)
        (project / own / "__init__.py").write_text('OWN = "user project"\n')
    (project / "tests").mkdir()
    (project / "tests" / "test_light.py").write_text(USER_TEST)
    (project / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'pythonpath = ["."]\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
    )

    ran = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout

    helped = _run([str(venv / "bin" / "cyncsim"), "--help"], project)
    assert helped.returncode == 0, helped.stderr
    assert "inspect" in helped.stdout and "serve" in helped.stdout
