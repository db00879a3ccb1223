"""Fixtures of the dassco-hpc tests: a stub listener on a real socket."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from listener_stub import StubListener


@pytest.fixture(scope="session")
def sheets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small synthetic TIFF of each kind (needs the `modules` extra), drawn once."""
    pytest.importorskip("PIL", reason="Pillow not installed (pip install './hpc[modules]')")
    pytest.importorskip("zxingcpp", reason="zxing-cpp not installed (pip install './hpc[modules]')")
    from dassco_hpc import synthetic

    folder = tmp_path_factory.mktemp("sheets")
    out = {}
    for kind in synthetic.KINDS:
        path = folder / f"{kind}.tif"
        synthetic.write(path, kind, (1200, 1800), seed=7)
        out[kind] = path
    corrupt = folder / "corrupt.tif"
    corrupt.write_bytes(out["specimen"].read_bytes()[:5000])  # a truncated TIFF
    out["corrupt"] = corrupt
    text = folder / "not-an-image.tif"
    text.write_text("this is not a TIFF\n")
    out["not_an_image"] = text
    return out


@pytest.fixture
def stub() -> Iterator[StubListener]:
    listener = StubListener().start()
    try:
        yield listener
    finally:
        listener.stop()
