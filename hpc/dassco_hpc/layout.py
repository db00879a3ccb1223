"""Where the text is on a sheet: text blocks found by their strokes on a downscaled copy.

Printed and written text is many small dark marks of similar height, side by side in rows,
darker than the paper right around them. Nothing here assumes a label's colour, border or
place: a label, a determination slip or a stamp anywhere on the sheet is found the same way.
Steps, on a grey copy whose long side is at most `WORK_PX`:

1. a morphological black-hat (closing minus image) keeps dark marks narrower than the kernel
   (strokes) and drops wide dark areas (leaves, the scanner background, shadows, uneven light);
2. its threshold's connected components that have a glyph's size are kept (a stem or a leaf
   edge is too long, a speck too small);
3. glyphs are smeared sideways into lines; only lines several letters long (rows) are kept
   and smeared downwards into blocks; a block needs several glyphs, most of one height, to
   count as text;
4. each block's skew is the median angle of its lines, so that it can be read level.

A Data Matrix looks like text to this; the OCR module drops a block that is a readable code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dassco_hpc.imaging import optional

#: Long side of the copy the blocks are found on: text ~1/100 of the sheet stays >= 8 px high.
WORK_PX = 1600
#: Fewest letters for a block to count as text (a label has dozens; a few stray marks do not).
MIN_GLYPHS = 10
#: Bounds of the black-hat level that counts as ink. Otsu's level alone follows the darkest
#: marks on the sheet (stems, a black ruler) and then drops faded or pencil text; paper grain
#: and JPEG noise stay under the lower bound.
INK_MIN, INK_MAX = 28, 40
#: Blocks this many glyph heights apart (or less), one above the other, are one label...
LINE_GAPS = 4.0
#: ... if they are also at most this many glyph heights apart across;
WORD_GAPS = 8.0
#: blocks on one line, at most this many glyph heights apart.
TAB_GAPS = 16.0


@dataclass(frozen=True)
class TextBlock:
    """A block of text, in the full-size image's pixels."""

    box: tuple[int, int, int, int]
    #: Median glyph height (full-size pixels): how large the text is.
    glyph_px: float
    #: Skew of the lines in degrees, counter-clockwise positive (as PIL's rotate takes it).
    angle: float
    glyphs: int
    #: Degrees (counter-clockwise, a multiple of 90) the image is turned by for the lines to
    #: run left to right: the angle and glyph height are measured on the turned image.
    turn: int = 0
    #: Line segments the block's letters stand in: a block read across its lines (turned by
    #: 90 degrees from its text) has short rows of a letter per line.
    rows: int = 1

    @property
    def letters_per_row(self) -> float:
        return self.glyphs / max(1, self.rows)


def _cv() -> Any:
    return optional("cv2", "opencv-python-headless")


def text_blocks(gray: Any, *, limit: int = 4) -> list[TextBlock]:
    """The text blocks of a grey image (a numpy array), most glyphs first, at most `limit`."""
    cv2 = _cv()
    np = optional("numpy", "numpy")
    height, width = gray.shape[:2]
    factor = max(1.0, max(height, width) / WORK_PX)
    small = (
        cv2.resize(
            gray, (round(width / factor), round(height / factor)), interpolation=cv2.INTER_AREA
        )
        if factor > 1
        else gray
    )
    hat = cv2.morphologyEx(
        small, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (15, 15))
    )
    level, _ = cv2.threshold(hat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, ink = cv2.threshold(hat, min(max(level, INK_MIN), INK_MAX), 255, cv2.THRESH_BINARY)
    count, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    glyph_mask = np.zeros_like(ink)
    heights: list[int] = []
    for i in range(1, count):
        x, y, w, h, area = stats[i]
        # A letter, or a word whose letters ran together on the small copy.
        if 3 <= h <= 60 and 1 <= w <= 8 * h + 6 and area >= 4 and area <= 0.9 * w * h:
            glyph_mask[y : y + h, x : x + w] = 255
            heights.append(int(h))
    if len(heights) < MIN_GLYPHS:
        return []
    typical = float(np.median(heights))
    # Glyphs of a word touch after a sideways smear of about a letter's width; lines of a
    # block after a downward smear of about half a line gap.
    lines = cv2.dilate(
        glyph_mask, cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, round(typical * 1.5)), 1))
    )
    # Only rows several letters long make blocks: marks of the plant that are not in rows
    # (veins, teeth, hairs) must neither make a block nor join a label's.
    lines = np.where(_long_lines(cv2, np, lines, 4 * typical), lines, 0).astype(np.uint8)
    blocks = cv2.dilate(
        lines, cv2.getStructuringElement(cv2.MORPH_RECT, (1, max(3, round(typical * 2.6))))
    )
    count, labels, stats, _ = cv2.connectedComponentsWithStats(blocks, connectivity=8)
    found: list[TextBlock] = []
    for i in range(1, count):
        x, y, w, h, _area = stats[i]
        inside = (
            glyph_mask[y : y + h, x : x + w]
            & lines[y : y + h, x : x + w]
            & np.where(labels[y : y + h, x : x + w] == i, 255, 0).astype(np.uint8)
        )
        n, _, gstats, _ = cv2.connectedComponentsWithStats(
            cv2.bitwise_and(ink[y : y + h, x : x + w], inside), connectivity=8
        )
        keep = [j for j in range(1, n) if 3 <= gstats[j][3] <= 60]
        block_heights = [int(gstats[j][3]) for j in keep]
        # Letters, counting a run-together word as the letters its width holds.
        letters = sum(max(1, round(gstats[j][2] / (0.7 * gstats[j][3]))) for j in keep)
        # A short word may be a label's last line: it is kept while blocks are put together.
        if letters < 3:
            continue
        median_h = float(np.median(block_heights))
        # Text has most glyphs near one height; a leaf's veins and toothed edges do not.
        similar = sum(1 for v in block_heights if 0.5 * median_h <= v <= 1.6 * median_h)
        if similar < 0.6 * len(block_heights):
            continue
        pad = median_h * 1.2
        box = (
            max(0, math.floor((x - pad) * factor)),
            max(0, math.floor((y - pad) * factor)),
            min(width, math.ceil((x + w + pad) * factor)),
            min(height, math.ceil((y + h + pad) * factor)),
        )
        found.append(
            TextBlock(
                box=box,
                glyph_px=median_h * factor,
                angle=_skew(
                    cv2,
                    np,
                    lines[y : y + h, x : x + w],
                    labels[y : y + h, x : x + w] == i,
                    median_h,
                ),
                glyphs=letters,
                rows=_rows(cv2, np, lines[y : y + h, x : x + w], labels[y : y + h, x : x + w] == i),
            )
        )
    found = [b for b in _merge_neighbours(found) if b.glyphs >= MIN_GLYPHS]
    found.sort(key=lambda b: -b.glyphs)
    return found[:limit]


def _merge_neighbours(blocks: list[TextBlock]) -> list[TextBlock]:
    """Blocks of text of one size at most `LINE_GAPS` glyph heights apart downwards and
    `WORD_GAPS` across (a label with widely spaced lines, words far apart on a line, a number
    at the label's edge) are one block: no line is lost to the block limit or for being
    short, and tesseract is started once."""
    merged = list(blocks)
    changed = True
    while changed:
        changed = False
        for i, a in enumerate(merged):
            for j in range(i + 1, len(merged)):
                b = merged[j]
                size = max(a.glyph_px, b.glyph_px)
                gap_x = max(a.box[0], b.box[0]) - min(a.box[2], b.box[2])
                gap_y = max(a.box[1], b.box[1]) - min(a.box[3], b.box[3])
                # Near: within a few line gaps down and a few words across, so that a
                # number at a label's right edge or a short line indented under a centred
                # one stays with its label.
                near = gap_y <= LINE_GAPS * size and gap_x <= WORD_GAPS * size
                # On one line, fields are set further apart (a number at the label's edge
                # after the collector's name).
                near = near or (gap_y < 0 and gap_x <= TAB_GAPS * size)
                if min(a.glyph_px, b.glyph_px) < 0.6 * size or not near:
                    continue
                total = a.glyphs + b.glyphs
                merged[i] = TextBlock(
                    box=(
                        min(a.box[0], b.box[0]),
                        min(a.box[1], b.box[1]),
                        max(a.box[2], b.box[2]),
                        max(a.box[3], b.box[3]),
                    ),
                    glyph_px=(a.glyph_px * a.glyphs + b.glyph_px * b.glyphs) / total,
                    angle=(a.angle * a.glyphs + b.angle * b.glyphs) / total,
                    glyphs=total,
                    rows=a.rows + b.rows,
                )
                del merged[j]
                changed = True
                break
            if changed:
                break
    return merged


def _long_lines(cv2: Any, np: Any, lines: Any, min_width: float) -> Any:
    """A boolean mask of the line segments at least `min_width` wide."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=8)
    long_ = np.zeros(count, dtype=bool)
    long_[1:] = stats[1:, 2] >= min_width
    return long_[labels]


def _rows(cv2: Any, np: Any, lines: Any, member: Any) -> int:
    """How many line segments the block has."""
    count, _, _, _ = cv2.connectedComponentsWithStats(
        np.where(member, lines, 0).astype(np.uint8), connectivity=8
    )
    return max(1, int(count) - 1)


def _skew(cv2: Any, np: Any, lines: Any, member: Any, glyph_h: float) -> float:
    """Median angle of the block's long line segments (0 when it has none): in PIL's sense,
    the rotation that levels the text is the negative of it."""
    mask = np.where(member, lines, 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    angles: list[float] = []
    for i in range(1, count):
        w, h = stats[i][2], stats[i][3]
        # One line of text: long, and no taller than a line tilted by ~10 degrees (a leaf
        # across several lines joins them into a blob whose slope means nothing).
        if w < 6 * glyph_h or h > 2.5 * glyph_h + 0.18 * w:
            continue
        ys, xs = np.nonzero(labels == i)
        if len(xs) < 10:
            continue
        slope = np.polyfit(xs.astype(float), ys.astype(float), 1)[0]
        angles.append(math.degrees(math.atan(slope)))
    if not angles:
        return 0.0
    # Image y grows downwards: a line rising to the right has a negative slope, and is
    # rotated counter-clockwise (positive in PIL).
    return -float(np.median(angles))
