"""Child processes for tests that start the real thing (emulator, CLI, action server, rasa run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from scripts.children import child_dies_with_parent, stop_group, wait_http

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        RASA_TELEMETRY_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        # The trained model must not be reused from, or written to, the developer's cache.
        RASA_CACHE_DIRECTORY=str(Path(env.get("TMPDIR", "/tmp")) / "zapi-e2e-rasa-cache"),
    )
    return env


class Process:
    """A child process whose output goes to a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, args: List[str], log_dir: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=child_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Even a test run (or a benchmark) killed with SIGKILL leaves no server behind.
            preexec_fn=child_dies_with_parent,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float) -> None:
        """Return once ``url`` answers (see ``scripts.children.wait_http``)."""
        wait_http(self.proc, url, timeout, name=self.name, output=lambda: self.log()[-4000:])

    def stop(self, timeout: float = 15) -> Optional[int]:
        returncode = stop_group(self.proc, timeout)
        self._log.close()
        return returncode
