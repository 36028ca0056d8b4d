"""The package as a bot builder gets it: the built wheel, installed (not editable) with Rasa.

``make dist`` builds the wheel; a fresh virtual environment gets it with pip, as from a registry.
Everything then runs from a folder outside the checkout, so nothing can be imported from the
source tree: a module or a data file missing from the wheel fails here.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator

import httpx
import pytest

from tests.e2e.conftest import (
    EMULATOR_CLIENT,
    EMULATOR_INSTANCE,
    EMULATOR_TOKEN,
    channel_credentials,
)
from tests.livesanic import free_port
from tests.processes import ROOT, Process, child_env

pytestmark = pytest.mark.e2e


def run(args: list, cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (args, output[-4000:])
    return output


def _env() -> Dict[str, str]:
    env = child_env()
    env.pop("PYTHONPATH", None)  # the checkout must not be importable
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ folder of a fresh virtual environment holding the wheel and its dependencies."""
    folder = tmp_path_factory.mktemp("wheel")
    dist = folder / "dist"
    run(["make", "-s", "dist", f"DIST={dist}"], ROOT)
    [wheel] = dist.glob("zapi_channel-*-py3-none-any.whl")
    assert list(dist.glob("zapi_channel-*.tar.gz")), "make dist builds the sdist too"
    python = run([str(ROOT / "scripts" / "find-python")], ROOT).strip().splitlines()[-1]
    venv = folder / "venv"
    run([python, "-m", "venv", str(venv)], folder)
    # The versions the suite passed with, as `make` installs them; a plain install, not -e.
    run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "-c", str(ROOT / "constraints.txt"), str(wheel)],
        folder,
        timeout=1200,
    )  # fmt: skip
    yield venv / "bin"


def test_the_installed_package_comes_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    where = run(
        [str(installed / "python"), "-c", "import zapi_channel; print(zapi_channel.__file__)"],
        tmp_path,
    ).strip()
    assert "site-packages" in where and str(ROOT) not in where, where
    metadata = run([str(installed / "python"), "-m", "pip", "show", "zapi-channel"], tmp_path)
    assert "License: Apache-2.0" in metadata
    assert "Editable project location" not in metadata


def test_zapi_channel_help_runs(installed: Path, tmp_path: Path) -> None:
    output = run([str(installed / "zapi-channel"), "--help"], tmp_path)
    for command in ("connect", "verify", "register-webhook", "queue", "failed", "emulator"):
        assert command in output


def test_the_emulator_serves_its_chat_page_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    emulator = Process(
        "wheel-emulator",
        [str(installed / "zapi-channel"), "emulator", "--port", str(port)],
        tmp_path,
        cwd=tmp_path,
    )
    try:
        emulator.wait_http(f"http://127.0.0.1:{port}/_emulator/health", 30)
        for name, kind in (("", "text/html"), ("chat.js", "javascript"), ("chat.css", "css")):
            path = f"/_emulator/static/{name}" if name else "/"
            answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
            assert answer.status_code == 200, name
            assert kind in answer.headers["content-type"], name
            assert len(answer.content) > 100, name
    finally:
        emulator.stop()


def test_rasa_run_with_the_installed_channel_answers_a_webhook(
    installed: Path, tmp_path: Path, trained_model: Path
) -> None:
    emulator_port, rasa_port = free_port(), free_port()
    token = uuid.uuid4().hex
    rasa_url = f"http://127.0.0.1:{rasa_port}"
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    credentials = channel_credentials(tmp_path, emulator_url=emulator_url, webhook_token=token)
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(f"action_endpoint:\n  url: http://127.0.0.1:{free_port()}/webhook\n")
    emulator = Process(
        "wheel-emulator-2",
        [
            str(installed / "zapi-channel"), "emulator", "--port", str(emulator_port),
            "--instance-id", EMULATOR_INSTANCE, "--instance-token", EMULATOR_TOKEN,
            "--client-token", EMULATOR_CLIENT,
            "--webhook-url", f"{rasa_url}/webhooks/zapi/webhook?token={token}",
        ],
        tmp_path,
        cwd=tmp_path,
    )  # fmt: skip
    rasa = Process(
        "wheel-rasa",
        [
            str(installed / "rasa"), "run", "-m", str(trained_model), "--credentials",
            str(credentials), "--endpoints", str(endpoints), "-i", "127.0.0.1",
            "-p", str(rasa_port),
        ],
        tmp_path,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        emulator.wait_http(f"{emulator_url}/_emulator/health", 30)
        rasa.wait_http(f"{rasa_url}/webhooks/zapi/", 240)
        phone = "5511987650001"
        said = httpx.post(
            f"{emulator_url}/_emulator/messages",
            json={"phone": phone, "text": "thanks"},
            timeout=15,
        ).json()
        assert said["webhook_status"] == 200, said
        deadline = time.monotonic() + 60
        answers: list = []
        while not answers and time.monotonic() < deadline:
            messages = httpx.get(
                f"{emulator_url}/_emulator/messages", params={"phone": phone}, timeout=5
            ).json()["messages"]
            answers = [m["text"] for m in messages if m["from"] == "bot"]
            time.sleep(0.3)
        assert answers == ["You're welcome!"], rasa.log()[-3000:]
    finally:
        rasa.stop()
        emulator.stop()
