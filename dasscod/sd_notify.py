"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

Used for READY=1, STOPPING=1, STATUS=... and the watchdog's WATCHDOG=1. Outside systemd
(no NOTIFY_SOCKET) every call is a no-op, so code can call it unconditionally.
"""

from __future__ import annotations

import os
import socket

from dasscod.log import get_logger

log = get_logger(__name__)


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=running 3 jobs") as one message.

    Returns whether a message was sent. A failure is logged, never raised: systemd not
    listening must not stop the daemon (the watchdog, if set, notices the silence)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    message = "\n".join(fields).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message)
        except OSError as exc:
            log.warning("could not notify systemd", error=str(exc), socket=address)
            return False
    return True


def status(text: str) -> bool:
    """The one-line state `systemctl status` shows."""
    return notify(f"STATUS={text}")


def watchdog_interval_s() -> float | None:
    """The watchdog interval systemd asked for (WatchdogSec=), in seconds, or None when the
    watchdog is off or meant for another process (WATCHDOG_PID names someone else)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
