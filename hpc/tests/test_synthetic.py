"""The varied corpus varies in everything the modules must cope with."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("PIL", reason="Pillow not installed (pip install './hpc[modules]')")
from dassco_hpc import synthetic


def test_varied_sheets_cover_every_variation() -> None:
    seen = [synthetic.varied(seed) for seed in range(1, 61)]
    assert {v.language for v in seen} == set(synthetic.LANGUAGES)
    assert all(-5 <= v.rotation <= 5 for v in seen)
    assert min(v.rotation for v in seen) < -3 and max(v.rotation for v in seen) > 3
    assert {v.label_at[1] < 0.4 for v in seen} == {True, False}  # top and bottom labels
    assert min(v.text_scale for v in seen) < 0.8 and max(v.text_scale for v in seen) > 1.2
    assert {v.overlap for v in seen} == {v.colour_bar for v in seen} == {True, False}
    assert {v.code for v in seen} == {True, False}
    assert len({v.code_px for v in seen}) > 5 and len({v.code_angle for v in seen}) > 5
    assert max(v.illumination for v in seen) > 0.2 and max(v.texture for v in seen) > 0.8
    fonts = {v.font for v in seen}
    assert len(fonts) >= min(5, len(synthetic.installed_fonts()))
    if synthetic.installed_fonts(handwriting=True):
        assert fonts & set(synthetic.HANDWRITING_FONTS)


def test_sheets_are_written_as_lzw_tiff_and_jpeg(tmp_path: Path) -> None:
    from PIL import Image

    variation = synthetic.varied(3)
    for name, fmt, compression in (("a.tif", "TIFF", "tiff_lzw"), ("a.jpg", "JPEG", None)):
        drawn = synthetic.write(tmp_path / name, "specimen", (600, 900), 3, variation=variation)
        with Image.open(tmp_path / name) as img:
            assert img.format == fmt and img.size == (600, 900)
            assert img.info.get("compression") == compression
        assert drawn.label_box is not None and drawn.variation == variation


def test_uncoded_targets_carry_no_code_and_say_they_are_targets() -> None:
    for kind in ("colour_checker", "grey_scale"):
        _, drawn = synthetic.draw(kind, (600, 900), 1)
        assert drawn.payloads == [] and drawn.is_target and drawn.label_lines == []
    assert not synthetic.draw("specimen", (600, 900), 1)[1].is_target
