"""The notifier's rule: one message per condition per window, with a digest of what was held
back, and one "resolved" message for each announced condition.

- A condition that starts firing is announced at once, unless a message about it went out
  less than `window_s` ago (it flaps): then it is counted for the next digest.
- While it fires, what changes (more assets in ERROR, a new flap) is counted; once the
  window since the last message has passed, one digest says what was held back.
- A condition that was announced and stops firing is reported resolved.

The state lives in MongoDB (`dasscod.store.alerts`), so a restart neither repeats a message
nor forgets a resolution it owes. Sending goes through `Outbox`: checking never waits for a
channel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import anyio

from dasscod.alerts.channels import Message, Outbox
from dasscod.log import get_logger
from dasscod.model import utcnow
from dasscod.store.alerts import AlertState, AlertStore

log = get_logger(__name__)


@dataclass(frozen=True)
class Condition:
    """Something wrong now. `key` names the condition and what it is about
    (`asset_error:PIPEHERB0001`); `count` is its size (assets in ERROR; 1 for yes/no ones)."""

    key: str
    summary: str
    detail: str = ""
    count: int = 1


class Notifier:
    def __init__(
        self,
        store: AlertStore,
        outbox: Outbox,
        sense: Callable[[], Awaitable[list[Condition]]],
        *,
        window_s: float,
        check_s: float,
        stopping: anyio.Event,
        clock: Callable[[], datetime] = utcnow,
        source: str = "dasscod",
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.sense = sense
        self.window_s = window_s
        self.check_s = check_s
        self.stopping = stopping
        self.clock = clock
        self.source = source
        self._states: dict[str, AlertState] | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.outbox.run)
            while not self.stopping.is_set():
                await self.check()
                with anyio.move_on_after(self.check_s):
                    await self.stopping.wait()
            tg.cancel_scope.cancel()

    async def check(self) -> None:
        if self._states is None:
            self._states = await self.store.all()
        states = self._states
        active = {c.key: c for c in await self.sense()}
        now = self.clock()
        for key, condition in active.items():
            state = states.setdefault(key, AlertState.model_validate({"_id": key}))
            changed = self._firing(state, condition, now)
            if changed:
                await self.store.put(state)
        for key, state in states.items():
            if state.firing and key not in active:
                state.firing = False
                if state.announced:
                    self._post("RESOLVED", state.summary,
                               f"No longer the case (since {_stamp(state.since)}).")
                    state.last_sent = now
                state.announced = False
                state.sent_count = 0
                await self.store.put(state)

    def _window_passed(self, state: AlertState, now: datetime) -> bool:
        last = state.last_sent_utc()
        return last is None or (now - last).total_seconds() >= self.window_s

    def _firing(self, state: AlertState, condition: Condition, now: datetime) -> bool:
        """Update `state` for a firing condition, posting what is due; whether it changed."""
        if not state.firing:
            state.firing, state.since, state.summary = True, now, condition.summary
            if self._window_passed(state, now):
                self._announce(state, condition, now, "FIRING")
            else:
                state.suppressed += 1  # flapping: told in the next digest
            return True
        if condition.count != state.sent_count and state.announced:
            if self._window_passed(state, now):
                self._announce(state, condition, now, "STILL FIRING")
                return True
            return False
        if not state.announced and self._window_passed(state, now):
            self._announce(state, condition, now, "FIRING")
            return True
        return False

    def _announce(self, state: AlertState, condition: Condition, now: datetime,
                  kind: str) -> None:
        lines = [condition.detail] if condition.detail else []
        held_back = []
        if state.suppressed:
            held_back.append(f"it fired {state.suppressed} more time(s)")
        if state.announced and condition.count != state.sent_count:
            held_back.append(f"it went from {state.sent_count} to {condition.count}")
        if held_back:
            lines.append("Since the last message (held back to one per "
                         f"{self.window_s / 60:g} min): " + "; ".join(held_back) + ".")
        self._post(kind, condition.summary, "\n".join(lines))
        state.summary = condition.summary
        state.last_sent, state.sent_count, state.suppressed = now, condition.count, 0
        state.announced = True

    def _post(self, kind: str, summary: str, body: str) -> None:
        self.outbox.post(Message(subject=f"[{kind}] {self.source}: {summary}", body=body))


def _stamp(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "?"
