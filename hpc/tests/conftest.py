"""Fixtures of the dassco-hpc tests: a stub listener on a real socket."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from listener_stub import StubListener


@pytest.fixture
def stub() -> Iterator[StubListener]:
    listener = StubListener().start()
    try:
        yield listener
    finally:
        listener.stop()
