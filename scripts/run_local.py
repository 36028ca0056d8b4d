"""``make run``: the demo bot on a local Z-API emulator, with no phone and no Z-API account.

Trains the demo model when there is none or its training data changed, then starts three
processes, wires them together and streams their logs until Ctrl-C:

- the Z-API emulator (``python -m zapi_channel.emulator``), whose chat page is the "phone";
- the action server (``rasa run actions``);
- ``rasa run`` with a credentials file that points the channel at the emulator.

``--smoke`` starts everything, has a customer say "hi" through the emulator, prints the bot's
answers and stops: the README's first command, checked by the test suite.

Ctrl-C (SIGINT), SIGTERM (an IDE's stop button, ``timeout``) and SIGHUP (a closed terminal, a
dropped SSH session) all stop the three children, ``rasa run`` first, and nothing is left
behind. On Linux the children also die with this script if it is killed outright (SIGKILL),
and this script with ``make`` (a parent-death signal); elsewhere a SIGKILL leaves them running.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import httpx

ROOT = Path(__file__).resolve().parents[1]
# `python scripts/run_local.py` puts only scripts/ on sys.path; the checkout is needed to import
# the shared helpers under the name the tests and the benchmarks use.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import children  # noqa: E402 (needs the checkout on sys.path, just above)

BIN = Path(sys.executable).parent
RUN_DIR = ROOT / ".run"
MODELS = ROOT / "models"
MODEL = MODELS / "demo.tar.gz"
FINGERPRINT = MODELS / ".demo-fingerprint"
TRAINING_INPUTS = ("config.yml", "domain.yml", "data")

# The emulator's default instance (see zapi_channel.emulator); local values, not secrets.
INSTANCE_ID = "EMULATOR0000000000000000000000001"
INSTANCE_TOKEN = "emulator-instance-token"
CLIENT_TOKEN = "emulator-client-token"

COLOURS = {"emulator": "\033[35m", "actions": "\033[33m", "rasa": "\033[36m", "run": "\033[32m"}
RESET = "\033[0m"


def say(name: str, line: str) -> None:
    try:
        colour = COLOURS.get(name, "") if sys.stdout.isatty() else ""
        reset = RESET if colour else ""
        print(f"{colour}{name:>8} |{reset} {line}", flush=True)
    except (OSError, ValueError):
        # The terminal is gone (SIGHUP from a closed window): stopping must go on regardless.
        pass


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop everything, as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _ignore_further_signals() -> None:
    # While the children stop, a second Ctrl-C or SIGTERM must not cut the stopping short.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def fingerprint() -> str:
    """A hash of everything training reads, so an unchanged bot is never retrained."""
    digest = hashlib.sha256()
    for name in TRAINING_INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(RASA_TELEMETRY_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


def train_if_needed() -> None:
    current = fingerprint()
    if MODEL.exists() and FINGERPRINT.exists() and FINGERPRINT.read_text().strip() == current:
        say("run", f"Model {MODEL.relative_to(ROOT)} is up to date; not retraining.")
        return
    say("run", "Training the demo model (about a minute on two cores)...")
    MODELS.mkdir(exist_ok=True)
    result = subprocess.run(
        [str(BIN / "rasa"), "train", "--out", str(MODELS), "--fixed-model-name", "demo"],
        cwd=ROOT,
        env=child_env(),
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"rasa train failed (exit {result.returncode})")
    FINGERPRINT.write_text(current + "\n")


class Child:
    def __init__(self, name: str, args: List[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Ctrl-C reaches only this script, which then stops the children in order.
            start_new_session=True,
            # ...and if this script is killed outright, the kernel stops them (Linux).
            preexec_fn=children.child_dies_with_parent,
        )
        self._reader = threading.Thread(target=self._stream, daemon=True)
        self._reader.start()

    def _stream(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            say(self.name, line.rstrip())

    def stop(self) -> None:
        # The child's whole process group: whatever it started goes too.
        children.stop_group(self.proc, 15)
        self._reader.join(2)


def wait_http(child: Child, url: str, timeout: float) -> None:
    try:
        children.wait_http(child.proc, url, timeout, name=child.name)
    except children.NotAnswering as exc:
        # The child's output is already on screen, streamed line by line: point there instead.
        if exc.returncode is not None:
            raise SystemExit(
                f"{child.name} stopped (exit {exc.returncode}); see its log above"
            ) from None
        raise SystemExit(f"{child.name} did not answer {url} within {timeout:.0f} s") from None


def write_config(emulator_url: str, actions_port: int, webhook_token: str) -> Dict[str, Path]:
    RUN_DIR.mkdir(exist_ok=True)
    credentials = RUN_DIR / "credentials.yml"
    credentials.write_text(
        "# Written by `make run`: the channel talks to the local Z-API emulator.\n"
        "zapi_channel.ZApiInput:\n"
        f"  instance_id: {INSTANCE_ID}\n"
        f"  instance_token: {INSTANCE_TOKEN}\n"
        f"  client_token: {CLIENT_TOKEN}\n"
        f"  webhook_token: {webhook_token}\n"
        f"  base_url: {emulator_url}\n"
        f"  state_path: {RUN_DIR / 'zapi-channel.db'}\n"
    )
    os.chmod(credentials, 0o600)
    endpoints = RUN_DIR / "endpoints.yml"
    endpoints.write_text(f"action_endpoint:\n  url: http://127.0.0.1:{actions_port}/webhook\n")
    return {"credentials": credentials, "endpoints": endpoints}


def smoke(emulator_url: str) -> int:
    phone = "5511999990001"
    answer = httpx.post(
        f"{emulator_url}/_emulator/messages",
        json={"phone": phone, "text": "hi", "sender_name": "Dev"},
        timeout=15,
    )
    answer.raise_for_status()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        messages = httpx.get(
            f"{emulator_url}/_emulator/messages", params={"phone": phone}, timeout=5
        ).json()["messages"]
        bot = [m for m in messages if m["from"] == "bot"]
        if len(bot) >= 2:
            for message in bot:
                say("run", f"bot said: {message.get('text')!r}")
            return 0
        time.sleep(0.3)
    say("run", "The bot did not answer within 60 s")
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--emulator-port", type=int, default=int(os.environ.get("EMULATOR_PORT", 8300))
    )
    parser.add_argument("--rasa-port", type=int, default=int(os.environ.get("RASA_PORT", 5005)))
    parser.add_argument(
        "--actions-port", type=int, default=int(os.environ.get("ACTIONS_PORT", 5055))
    )
    parser.add_argument("--smoke", action="store_true", help="say hi once, print the answers, stop")
    args = parser.parse_args(argv)
    # make is this script's parent: if make is killed outright, this script still stops.
    children.die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _stop_on)
    signal.signal(signal.SIGHUP, _stop_on)
    try:
        return _run(args)
    except KeyboardInterrupt:
        # Ctrl-C during training, before any child was started.
        say("run", "Stopped.")
        return 0
    except Stopped as exc:
        say("run", f"Stopped ({exc}).")
        return 0


def ports_taken(ports: Dict[str, int]) -> List[str]:
    """One line per port that is already in use, saying what uses it when that can be known."""
    lines = []
    for name, port in ports.items():
        if not children.port_is_free(port):
            owner = children.port_owner(port)
            lines.append(
                f"Port {port} ({name}) is taken"
                + (f" by {owner}" if owner else " by another process")
                + "."
            )
    return lines


def _run(args: argparse.Namespace) -> int:
    taken = ports_taken(
        {"emulator": args.emulator_port, "actions": args.actions_port, "rasa": args.rasa_port}
    )
    if taken:
        for line in taken:
            say("run", line)
        say(
            "run",
            "Is another `make run` still running? Stop it, or choose other ports: "
            "EMULATOR_PORT=8301 ACTIONS_PORT=5056 RASA_PORT=5006 make run",
        )
        return 1
    train_if_needed()
    emulator_url = f"http://127.0.0.1:{args.emulator_port}"
    rasa_url = f"http://127.0.0.1:{args.rasa_port}"
    webhook_token = secrets.token_urlsafe(32)
    files = write_config(emulator_url, args.actions_port, webhook_token)

    started: List[Child] = []
    try:
        emulator = Child(
            "emulator",
            [
                sys.executable, "-m", "zapi_channel.emulator",
                "--port", str(args.emulator_port),
                "--instance-id", INSTANCE_ID,
                "--instance-token", INSTANCE_TOKEN,
                "--client-token", CLIENT_TOKEN,
                "--webhook-url", f"{rasa_url}/webhooks/zapi/webhook?token={webhook_token}",
            ],
        )  # fmt: skip
        started.append(emulator)
        actions = Child(
            "actions",
            [str(BIN / "rasa"), "run", "actions", "--actions", "actions",
             "-p", str(args.actions_port)],
        )  # fmt: skip
        started.append(actions)
        rasa = Child(
            "rasa",
            [
                str(BIN / "rasa"), "run",
                "-m", str(MODEL),
                "--credentials", str(files["credentials"]),
                "--endpoints", str(files["endpoints"]),
                "-i", "127.0.0.1", "-p", str(args.rasa_port),
            ],
        )  # fmt: skip
        started.append(rasa)
        wait_http(emulator, f"{emulator_url}/_emulator/health", 30)
        wait_http(actions, f"http://127.0.0.1:{args.actions_port}/health", 120)
        wait_http(rasa, f"{rasa_url}/webhooks/zapi/", 240)
        if args.smoke:
            return smoke(emulator_url)
        say("run", "")
        say("run", f"Ready. Chat with the bot at {emulator_url}/  (Ctrl-C stops everything)")
        say("run", "")
        while all(child.proc.poll() is None for child in started):
            time.sleep(0.5)
        stopped = next(child for child in started if child.proc.poll() is not None)
        say("run", f"{stopped.name} stopped (exit {stopped.proc.returncode}); stopping the rest")
        return 1
    except KeyboardInterrupt:
        say("run", "Stopping...")
        return 0
    except Stopped as exc:
        say("run", f"Stopping ({exc})...")
        return 0
    finally:
        _ignore_further_signals()
        for child in reversed(started):
            child.stop()


if __name__ == "__main__":
    sys.exit(main())
