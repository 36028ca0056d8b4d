"""The README's first command: ``make run`` brings up the demo bot on the emulator and it answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.livesanic import free_port
from tests.processes import ROOT, child_env

pytestmark = pytest.mark.e2e


def test_make_run_starts_everything_and_the_bot_answers_hi() -> None:
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "scripts" / "run_local.py"), "--smoke",
            "--emulator-port", str(free_port()),
            "--rasa-port", str(free_port()),
            "--actions-port", str(free_port()),
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 'bot said: "Hi Dev! I\'m the Z-API demo bot."' in output
    assert "*1.* A picture" in output
