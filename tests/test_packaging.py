"""The package's layout: what a wheel carries, and which side imports what."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
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
