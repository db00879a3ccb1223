"""Where the notifier's messages go: a Slack-compatible webhook (Slack, Mattermost,
Rocket.Chat and Teams' Slack-style connectors take `{"text": ...}`) and SMTP (aiosmtplib).

A channel's `send` raises on failure; `Outbox` retries each message with backoff in a task of
its own per channel, so a dead mail server never delays the daemon or the other channel."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dasscod.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


class Channel(Protocol):
    name: str

    async def send(self, message: Message) -> None: ...


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    async def send(self, message: Message) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            answer = await client.post(
                self.url, json={"text": f"*{message.subject}*\n{message.body}"}
            )
        answer.raise_for_status()


class SmtpChannel:
    name = "smtp"

    def __init__(
        self, *, host: str, port: int, sender: str, recipients: list[str],
        username: str | None = None, password: str | None = None,
        starttls: bool = True, tls: bool = False, timeout_s: float = 20.0,
    ) -> None:
        self.host, self.port = host, port
        self.sender, self.recipients = sender, recipients
        self.username, self.password = username, password
        self.starttls, self.tls, self.timeout_s = starttls, tls, timeout_s

    async def send(self, message: Message) -> None:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Subject"] = message.subject
        mail.set_content(message.body)
        await aiosmtplib.send(
            mail, hostname=self.host, port=self.port, username=self.username,
            password=self.password, use_tls=self.tls, start_tls=self.starttls,
            timeout=self.timeout_s,
        )


class Outbox:
    """One queue and one sending task per channel. A message that fails is retried with
    doubling backoff (from `backoff_s[0]` to `backoff_s[1]`) for up to `give_up_s`; a full
    queue drops the new message with a log line rather than grow without bound."""

    def __init__(
        self, channels: list[Channel], *, backoff_s: tuple[float, float] = (1.0, 300.0),
        give_up_s: float = 3600.0, queue: int = 100,
    ) -> None:
        self.channels = channels
        self.backoff_s = backoff_s
        self.give_up_s = give_up_s
        self._streams: list[tuple[Channel, MemoryObjectSendStream[Message],
                                  MemoryObjectReceiveStream[Message]]] = []
        for channel in channels:
            send, receive = anyio.create_memory_object_stream[Message](queue)
            self._streams.append((channel, send, receive))

    def post(self, message: Message) -> None:
        """Queue `message` on every channel; never waits."""
        for channel, send, _ in self._streams:
            try:
                send.send_nowait(message)
            except anyio.WouldBlock:
                log.error("alert dropped: the channel's queue is full", channel=channel.name,
                          subject=message.subject)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for channel, _, receive in self._streams:
                tg.start_soon(self._deliver, channel, receive)

    async def _deliver(self, channel: Channel,
                       receive: MemoryObjectReceiveStream[Message]) -> None:
        async for message in receive:
            delay = self.backoff_s[0]
            waited = 0.0
            while True:
                try:
                    await channel.send(message)
                    log.info("alert sent", channel=channel.name, subject=message.subject)
                    break
                except Exception as exc:  # any failure of the channel: retry later
                    if waited >= self.give_up_s:
                        log.error("alert not sent; giving up", channel=channel.name,
                                  subject=message.subject, error=str(exc))
                        break
                    log.warning("alert not sent; retrying", channel=channel.name,
                                subject=message.subject, error=str(exc), retry_in_s=delay)
                    await anyio.sleep(delay)
                    waited += delay
                    delay = min(delay * 2, self.backoff_s[1])
