"""The built-in notifier against real receivers: a local SMTP server (aiosmtpd) and a local
HTTP webhook receiver, its state in the real store. A storm of 500 assets going to ERROR in a
minute is one message, then one digest per window, then one "resolved"; a restart sends
nothing again; a failing channel is retried with backoff and holds up nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr

from dasscod import metrics
from dasscod.alerts.channels import Outbox, SmtpChannel, WebhookChannel
from dasscod.alerts.conditions import DaemonConditions
from dasscod.alerts.notifier import Notifier
from dasscod.devstack.mongo import free_port
from dasscod.devstack.stack import deliver
from dasscod.model import JobStatus
from dasscod.pipeline import new_track_fields
from dasscod.pipelines import load_pipelines
from dasscod.settings import AlertSettings
from dasscod.store import Stores
from dasscod.store.codec import to_bson
from dasscod.store.stats import take_snapshot
from dasscod.wiring import build_daemon
from tests.conftest import make_track
from tests.observability.test_metrics import failing_stack

WINDOW_S = 900.0


class Webhook:
    """A chat's incoming webhook: records each posted JSON body; answers 500 to the first
    `fail_first` posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.refused = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if hook.refused < fail_first:
                    hook.refused += 1
                    self.send_response(500)
                else:
                    hook.bodies.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(envelope.content.decode())
        return "250 OK"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def put_in_error(stores: Stores, first: int, n: int) -> None:
    herb = load_pipelines()["PIPEHERB0001"]
    docs = []
    for i in range(first, first + n):
        track = make_track(f"storm-{i:04d}")
        track.job_list[0].status = JobStatus.ERROR
        docs.append(to_bson(new_track_fields(track, herb, datetime.now(UTC)).to_document()))
    await stores.track.collection.insert_many(docs)


def notifier_for(stores: Stores, outbox: Outbox, clock: Clock,
                 collector: metrics.DaemonCollector) -> Notifier:
    sense = DaemonConditions(collector, clusters=dict, breaker_open=lambda: None, folders=[])
    return Notifier(stores.alerts, outbox, sense, window_s=WINDOW_S, check_s=1.0,
                    stopping=anyio.Event(), clock=clock)


async def until(what: str, done: Any, timeout_s: float = 20) -> None:
    with anyio.fail_after(timeout_s):
        while True:
            if done():
                return
            await anyio.sleep(0.02)


def both_channels(webhook: Webhook, smtp_port: int) -> Outbox:
    return Outbox([
        WebhookChannel(webhook.url),
        SmtpChannel(host="127.0.0.1", port=smtp_port, sender="dasscod@test",
                    recipients=["ops@test"], starttls=False),
    ], backoff_s=(0.05, 0.2))


async def test_a_storm_of_500_errors_is_one_message_a_digest_and_a_resolution(
    stores: Stores, webhook: Webhook, mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    outbox = both_channels(webhook, port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.run)
        await storm(stores, webhook, box, outbox)
        tg.cancel_scope.cancel()


async def storm(stores: Stores, webhook: Webhook, box: Mailbox, running_outbox: Outbox) -> None:
    clock = Clock()
    collector = metrics.DaemonCollector(clusters=dict, breaker_open=lambda: None)
    notifier = notifier_for(stores, running_outbox, clock, collector)
    # 500 assets go to ERROR within one minute: 50 every 6 s, checked every 3 s.
    for step in range(10):
        await put_in_error(stores, step * 50, 50)
        for _ in range(2):
            collector.snapshot = await take_snapshot(stores.track.collection)
            await notifier.check()
            clock.now += timedelta(seconds=3)
    await until("the first message", lambda: webhook.bodies and box.mails)
    await anyio.sleep(0.3)  # anything else would have arrived by now
    assert len(webhook.bodies) == 1 and len(box.mails) == 1
    assert webhook.bodies[0]["text"].startswith("*[FIRING] dasscod: assets of PIPEHERB0001")
    assert "50 asset(s) of PIPEHERB0001 wait for an operator" in webhook.bodies[0]["text"]
    assert "Subject: [FIRING] dasscod: assets of PIPEHERB0001 in ERROR" in box.mails[0]

    # The window passes: one digest of what was held back.
    clock.now += timedelta(seconds=WINDOW_S)
    await notifier.check()
    await notifier.check()
    await until("the digest", lambda: len(webhook.bodies) == 2)
    digest = webhook.bodies[1]["text"]
    assert digest.startswith("*[STILL FIRING]") and "went from 50 to 500" in digest

    # A restarted daemon (a new notifier on the same store) sends nothing again...
    restarted = notifier_for(stores, running_outbox, clock, collector)
    clock.now += timedelta(seconds=60)
    await restarted.check()
    # ...but owes the resolution: an operator cancelled them all.
    await stores.track.collection.delete_many({"_id": {"$regex": "^storm-"}})
    collector.snapshot = await take_snapshot(stores.track.collection)
    await restarted.check()
    await until("the resolution", lambda: len(webhook.bodies) == 3 and len(box.mails) == 3)
    assert webhook.bodies[2]["text"].startswith("*[RESOLVED] dasscod: assets of PIPEHERB0001")
    assert len(webhook.bodies) == 3  # 500 assets, 20 checks, a restart: three messages


async def test_a_failing_channel_is_retried_and_holds_up_nothing(
    stores: Stores, mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    flaky = Webhook(fail_first=3)
    outbox = Outbox([WebhookChannel(flaky.url),
                     SmtpChannel(host="127.0.0.1", port=port, sender="dasscod@test",
                                 recipients=["ops@test"], starttls=False)],
                    backoff_s=(0.1, 0.4))
    clock = Clock()
    collector = metrics.DaemonCollector(clusters=dict, breaker_open=lambda: None)
    notifier = notifier_for(stores, outbox, clock, collector)
    await put_in_error(stores, 0, 2)
    collector.snapshot = await take_snapshot(stores.track.collection)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            started = time.monotonic()
            await notifier.check()
            assert time.monotonic() - started < 0.5  # checking never waits for a channel
            await until("the mail", lambda: box.mails)
            assert flaky.bodies == []  # the webhook still refuses; mail went out regardless
            await until("the webhook, after three refusals", lambda: flaky.bodies, 10)
            tg.cancel_scope.cancel()
    finally:
        flaky.close()
    assert flaky.refused == 3 and len(flaky.bodies) == 1


async def test_the_daemon_posts_an_asset_in_error_to_its_webhook(
    tmp_path: Path, mongo_uri: str, webhook: Webhook
) -> None:
    settings = failing_stack(tmp_path, mongo_uri)
    settings.alerts = AlertSettings(webhook_url=SecretStr(webhook.url), check_s=0.2)
    deliver(settings.intake.folder, "notify-err-1")
    daemon = build_daemon(settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await until("the alert", lambda: webhook.bodies, 60)
        daemon.stop()
    assert webhook.bodies[0]["text"].startswith("*[FIRING] dasscod on ")
    assert "1 asset(s) of PIPEHERB0001 wait for an operator" in webhook.bodies[0]["text"]
