"""Two real ``rasa run`` processes behind "a load balancer", sharing Redis.

Each customer message is delivered to one instance and duplicated to the other, alternating; the
instances share the tracker store (Rasa's RedisTrackerStore), the lock store (ours, atomic) and the
channel's state and durable inbox (``redis_url``). Every message must be answered exactly once and
in order; then again while one instance is killed with SIGKILL mid-stream.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import (
    EMULATOR_CLIENT,
    EMULATOR_INSTANCE,
    EMULATOR_TOKEN,
    channel_credentials,
)
from tests.e2e.figures import record, tally
from tests.livesanic import free_port
from tests.processes import BIN, Process
from tests.redis_server import ensure_redis, forget_keys

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "callbacks" / "received_text.json"
CONVERSATION = [
    ("are you a bot?", "I'm a bot, powered by Rasa and Z-API."),
    ("thanks", "You're welcome!"),
    ("I need help", "You can reach a human at help@example.com, Monday to Friday."),
    ("bye", "Bye! Talk soon."),
]


class Cluster:
    def __init__(
        self, emulator: str, rasa: List[str], processes: Dict[str, Process], token: str
    ) -> None:
        self.emulator = emulator
        self.rasa = rasa
        self.processes = processes
        self.token = token

    def deliver(self, instance: int, phone: str, message_id: str, text: str) -> httpx.Response:
        payload = json.loads(FIXTURE.read_text())
        payload.update(
            instanceId=EMULATOR_INSTANCE, phone=phone, messageId=message_id, text={"message": text}
        )
        return httpx.post(
            f"{self.rasa[instance]}/webhooks/zapi/webhook?token={self.token}",
            json=payload,
            timeout=10,
        )

    def answers(self, phone: str) -> List[str]:
        messages = httpx.get(
            f"{self.emulator}/_emulator/messages", params={"phone": phone}, timeout=5
        ).json()
        return [m["text"] for m in messages["messages"] if m["from"] == "bot"]

    def wait_answers(
        self, phones: List[str], count: int, timeout: float = 90
    ) -> Dict[str, List[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {phone: self.answers(phone) for phone in phones}
            if all(len(texts) >= count for texts in found.values()):
                time.sleep(1.5)  # a duplicate answer would show up now
                return {phone: self.answers(phone) for phone in phones}
            time.sleep(0.3)
        return {phone: self.answers(phone) for phone in phones}


@pytest.fixture
def cluster(trained_model: Path, tmp_path: Path) -> Iterator[Cluster]:
    redis_url = ensure_redis()
    if redis_url is None:
        pytest.skip("no Redis server: install redis-server (CI does)")
    redis = urlsplit(redis_url)
    unique = uuid.uuid4().hex[:10]
    token = uuid.uuid4().hex
    emulator_port, actions_port = free_port(), free_port()
    rasa_ports = [free_port(), free_port()]
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    credentials = channel_credentials(
        tmp_path,
        emulator_url=emulator_url,
        webhook_token=token,
        redis_url=redis_url,
        redis_prefix=f"e2e-{unique}",
        inbox_partitions=4,
        inbox_lease_seconds=3,
    )
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(
        f"action_endpoint:\n  url: http://127.0.0.1:{actions_port}/webhook\n"
        "tracker_store:\n  type: redis\n"
        f"  url: {redis.hostname}\n  port: {redis.port}\n  db: 0\n  key_prefix: t{unique}\n"
        "lock_store:\n  type: zapi_channel.lockstore.AtomicRedisLockStore\n"
        f"  url: {redis.hostname}\n  port: {redis.port}\n  db: 0\n  key_prefix: l{unique}\n"
    )
    processes: Dict[str, Process] = {}
    try:
        processes["emulator"] = Process(
            "cluster-emulator",
            [sys.executable, "-m", "zapi_channel.emulator", "--port", str(emulator_port),
             "--instance-id", EMULATOR_INSTANCE, "--instance-token", EMULATOR_TOKEN,
             "--client-token", EMULATOR_CLIENT],
            tmp_path,
        )  # fmt: skip
        processes["actions"] = Process(
            "cluster-actions",
            [str(BIN / "rasa"), "run", "actions", "--actions", "actions", "-p", str(actions_port)],
            tmp_path,
        )
        for n, port in enumerate(rasa_ports):
            processes[f"rasa{n}"] = Process(
                f"cluster-rasa{n}",
                [str(BIN / "rasa"), "run", "-m", str(trained_model), "--credentials", str(credentials),
                 "--endpoints", str(endpoints), "-i", "127.0.0.1", "-p", str(port)],
                tmp_path,
            )  # fmt: skip
        processes["emulator"].wait_http(f"{emulator_url}/_emulator/health", 30)
        processes["actions"].wait_http(f"http://127.0.0.1:{actions_port}/health", 120)
        for n, port in enumerate(rasa_ports):
            processes[f"rasa{n}"].wait_http(f"http://127.0.0.1:{port}/webhooks/zapi/", 240)
        yield Cluster(emulator_url, [f"http://127.0.0.1:{p}" for p in rasa_ports], processes, token)
    finally:
        for process in reversed(list(processes.values())):
            process.stop()
        # The channel's keys (identity links never expire), the trackers and the locks.
        forget_keys(redis_url, f"e2e-{unique}:*", f"t{unique}*", f"l{unique}*")


def run_conversations(cluster: Cluster, phones: List[str], turns: range, alive: List[int]) -> None:
    for turn in turns:
        text = CONVERSATION[turn][0]
        for c, phone in enumerate(phones):
            message_id = f"{phone}-{turn}"
            first = alive[(turn + c) % len(alive)]
            others = [i for i in alive if i != first]
            assert cluster.deliver(first, phone, message_id, text).json()["status"] == "accepted"
            for other in others:
                assert (
                    cluster.deliver(other, phone, message_id, text).json()["status"] == "duplicate"
                )


def test_each_message_is_answered_once_in_order_across_two_instances(cluster: Cluster) -> None:
    phones = [f"5511977{n:06d}" for n in range(6)]
    run_conversations(cluster, phones, range(len(CONVERSATION)), alive=[0, 1])
    found = cluster.wait_answers(phones, len(CONVERSATION))
    expected = [answer for _, answer in CONVERSATION]
    wanted = {phone: expected for phone in phones}
    received, lost, duplicated = tally(wanted, found)
    record(
        "Two instances, every message delivered to one and duplicated to the other",
        sent=len(phones) * len(CONVERSATION),
        duplicates=len(phones) * len(CONVERSATION),
        faults="none",
        expected=len(phones) * len(expected),
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    assert found == wanted, cluster.processes["rasa0"].log()[-2000:]


def test_killing_one_instance_mid_stream_loses_and_repeats_nothing(cluster: Cluster) -> None:
    phones = [f"5511966{n:06d}" for n in range(8)]
    run_conversations(cluster, phones, range(2), alive=[0, 1])
    os.kill(cluster.processes["rasa0"].proc.pid, signal.SIGKILL)
    cluster.processes["rasa0"].proc.wait(10)
    run_conversations(cluster, phones, range(2, len(CONVERSATION)), alive=[1])
    found = cluster.wait_answers(phones, len(CONVERSATION), timeout=120)
    expected = [answer for _, answer in CONVERSATION]
    wanted = {phone: expected for phone in phones}
    received, lost, duplicated = tally(wanted, found)
    record(
        "Two instances, one killed with SIGKILL mid-stream",
        sent=len(phones) * len(CONVERSATION),
        duplicates=len(phones) * 2,
        faults="1 instance SIGKILLed after half the messages",
        expected=len(phones) * len(expected),
        received=received,
        lost=lost,
        duplicated=duplicated,
    )
    assert found == wanted, cluster.processes["rasa1"].log()[-3000:]
