"""Leader or standby: only the holder of the lease (dasscod.store.lease) acts on the database.

The leader renews every `lease_s / 4`. It trusts its lease for `ACT_FRACTION * lease_s` after
it *sent* the last renewal that succeeded, by the monotonic clock: that point comes before the
lease's expiry as any other daemon sees it, so the leader has stopped acting before a standby
may start. Every store write and every scheduler call first calls `check()`, which raises
NotLeader once that point has passed -- also in a process that was paused (SIGSTOP) and
resumed with writes already under way in its tasks. A leader that loses the lease goes back to
being a standby; a standby polls the lease and takes it once it has expired."""

from __future__ import annotations

import os
import secrets
import socket
import time

import anyio
from pymongo.errors import PyMongoError

from dasscod import sd_notify
from dasscod.log import get_logger
from dasscod.store.errors import describe, is_fatal
from dasscod.store.fence import NotLeader
from dasscod.store.lease import LeaseStore
from dasscod.store.outage import OutageLog

log = get_logger(__name__)

#: Share of the lease the leader acts on after sending a renewal: the rest is its margin for
#: clock drift between hosts and for the time the renewal took to reach MongoDB.
ACT_FRACTION = 0.8
#: Renewals per lease: a renewal may fail this many times minus one before the lease is lost.
RENEWALS_PER_LEASE = 4


class Leadership:
    def __init__(
        self, lease: LeaseStore, lease_s: float, outage: OutageLog, *, listener_port: int = 0
    ) -> None:
        self._store = lease
        self.lease_s = lease_s
        self.outage = outage
        # Host and listener port name one daemon across restarts (no two daemons can listen on
        # one port), so a daemon restarted after a crash takes its own lease back at once
        # instead of waiting for it to expire. The term still tells the two lives apart.
        self.holder = (
            f"{socket.gethostname()}:{listener_port}" if listener_port
            else f"{socket.gethostname()}:pid{os.getpid()}:{secrets.token_hex(3)}"
        )
        self.term: int | None = None
        self._valid_until = 0.0  # monotonic; 0: not the leader

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._valid_until

    @property
    def role(self) -> str:
        return "leader" if self.leading else "standby"

    def check(self) -> None:
        """Raise NotLeader unless this daemon may act now."""
        if time.monotonic() >= self._valid_until:
            raise NotLeader(
                "this daemon does not hold the leader lease (standby, or its lease ran out)"
            )

    async def acquire(self, stopping: anyio.Event) -> bool:
        """Wait as a standby until this daemon holds the lease (True), or until `stopping`."""
        waiting_for: str | None = None
        poll_s = min(1.0, self.lease_s / RENEWALS_PER_LEASE)
        while not stopping.is_set():
            sent = time.monotonic()
            try:
                term = await self._store.acquire(self.holder, self.lease_s)
                holder = None if term is not None else await self._store.current()
            except PyMongoError as exc:
                if is_fatal(exc):
                    raise
                self.outage.began(describe(exc))
            else:
                self.outage.ended()
                if term is not None:
                    self.term = term
                    self._valid_until = sent + ACT_FRACTION * self.lease_s
                    log.info("leader lease taken", term=term, holder=self.holder,
                             lease_s=self.lease_s)
                    return True
                if holder is not None and holder.holder != waiting_for:
                    waiting_for = holder.holder
                    log.info("standby: another daemon holds the leader lease",
                             leader=holder.holder, term=holder.term,
                             expires=holder.expires.isoformat())
                    # Up and doing its job: for systemd a standby has started too.
                    sd_notify.notify("READY=1", f"STATUS=standby (leader: {holder.holder})")
            with anyio.move_on_after(poll_s):
                await stopping.wait()
        return False

    async def keep(self) -> None:
        """Renew the lease while it can; return once it is lost (the caller stops acting)."""
        every_s = self.lease_s / RENEWALS_PER_LEASE
        assert self.term is not None
        while True:
            left = self._valid_until - time.monotonic()
            await anyio.sleep(min(every_s, max(left, 0.0)))
            if time.monotonic() >= self._valid_until:
                # Nothing renewed in time: paused, or MongoDB failed every renewal. No write
                # now -- a standby may already be leading.
                log.error("leader lease ran out before it could be renewed; stepping down",
                          term=self.term)
                break
            sent = time.monotonic()
            try:
                with anyio.fail_after(self._valid_until - sent):
                    renewed = await self._store.renew(self.holder, self.term, self.lease_s)
            except TimeoutError:
                continue  # the check above steps down
            except PyMongoError as exc:
                if is_fatal(exc):
                    raise
                self.outage.began(describe(exc))
                every_s = min(1.0, self.lease_s / 10)  # try again soon, until the lease runs out
                continue
            self.outage.ended()
            if not renewed:
                log.error("leader lease taken over by another daemon; stepping down",
                          term=self.term)
                break
            self._valid_until = sent + ACT_FRACTION * self.lease_s
            every_s = self.lease_s / RENEWALS_PER_LEASE
        self._valid_until = 0.0

    async def release(self) -> None:
        """A clean stop: end the lease now so a standby takes over without waiting."""
        if self.term is None or not self.leading:
            return
        self._valid_until = 0.0
        try:
            await self._store.release(self.holder, self.term)
        except PyMongoError as exc:
            log.warning("could not release the leader lease; a standby takes over when it "
                        "expires", error=describe(exc))
