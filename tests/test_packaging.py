"""The package's layout: what a wheel carries, and which side imports what."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    listed = re.search(r"^packages = \[(.*?)\]$", text, re.M | re.S)
    assert listed is not None
    names = set(re.findall(r'"([^"]+)"', listed.group(1)))
    package = ROOT / "zapi_channel"
    folders = {
        ".".join(path.relative_to(ROOT).parts)
        for path in [package, *package.rglob("*")]
        if path.is_dir() and path.name != "__pycache__"
    }
    assert names == folders


def test_the_running_bot_never_imports_the_setup_side() -> None:
    code = (
        "import sys, zapi_channel.channel, zapi_channel.delivery.embedded, "
        "zapi_channel.delivery.shared; "
        "print(sorted(m for m in sys.modules if m.startswith('zapi_channel.setup')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == "[]"


# -- scripts/find-python ---------------------------------------------------------------------------

FIND_PYTHON = Path(__file__).resolve().parents[1] / "scripts" / "find-python"


@pytest.mark.parametrize("version", ["3.8", "3.9", "3.10"])
def test_find_python_finds_each_supported_version_or_says_how_to_get_it(version: str) -> None:
    found = subprocess.run(
        [str(FIND_PYTHON), version], capture_output=True, text=True, timeout=60, check=False
    )
    if found.returncode != 0:
        # Not on this machine: the message says what to install.
        assert f"pyenv install {version}" in found.stderr
        return
    path = found.stdout.strip()
    reported = subprocess.run(
        [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert reported == version
    assert "shims" not in path  # the interpreter itself: a venv must not depend on pyenv


def test_find_python_refuses_a_python_rasa_does_not_support() -> None:
    found = subprocess.run(
        [str(FIND_PYTHON), "3.11"], capture_output=True, text=True, timeout=60, check=False
    )
    assert found.returncode == 2
    assert "3.8, 3.9 and 3.10" in found.stderr
