"""HERB0001 `ocr`: find the label text on the sheet and read it with tesseract.

Tesseract's default page segmentation over a whole sheet returns nothing useful: the plant,
the ruler and the codes swamp its layout analysis. So the text blocks are found first
(`dassco_hpc.layout`: strokes of glyph size in rows, on a downscaled copy; nothing assumes the
label's colour, border or place), and each block is cut from the full-size image, levelled
(labels are glued on askew), scaled so that its text is ~`GLYPH_PX` high (what tesseract reads
best, and what keeps its time independent of the scan's resolution) and read with a page
segmentation mode for a sparse block of lines (DASSCO_OCR_PSM, default 11: "sparse text", which
does not expect a full page). Blocks are found on the image and on it turned by 90 degrees, and
a weak reading is tried turned by 90 and 180 degrees (`read_place`): a sheet scanned sideways or
upside down is read like an upright one (docs/modules.md). DASSCO_OCR_REGION="x0,y0,x1,y1"
(fractions of the image) narrows the search where a collection's layout is known.

Languages: DASSCO_OCR_LANG, default "dan+eng+lat" (a Danish herbarium's labels; Debian packages
tesseract-ocr-dan, -eng, -lat). Words below DASSCO_OCR_MIN_CONFIDENCE (default 50) are dropped:
the plant otherwise comes back as garbage with low scores. A block that zxing reads as a
barcode is not read as text.

Result, in the asset's metadata `tags` (DaSSCo's OCR wrote `tags.ocr`; see docs/modules.md):
`ocr` (the text, lines in reading order), `ocr_status` (`TEXT_FOUND` or `NO_TEXT`),
`ocr_reason` (why nothing was read, with `NO_TEXT`), `ocr_language`, `ocr_confidence` (mean
word confidence, 0-100), `ocr_label_box` (the image and box of the block with the most words),
`ocr_words` (each word with its confidence, image and box, in the image's pixels). A missing
tesseract binary or language pack is a non-retryable failure naming what to install.

Tesseract runs single-threaded unless OMP_THREAD_LIMIT says otherwise (see `TESSERACT_THREADS`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dassco_hpc.context import JobContext
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import number, open_image, optional, source_images
from dassco_hpc.layout import TextBlock, text_blocks

if TYPE_CHECKING:
    from PIL.Image import Image

#: Tesseract's OpenMP threads by default: one. A job is given one CPU and several jobs share a
#: node, where OpenMP's busy-waiting threads compete with each other: on the 2-core test
#: machine a 1200x1800 sheet took 0.55-0.65 CPU-s with the default and 0.22 CPU-s with one
#: thread (0.63-0.73 s against 0.32-0.39 s wall). An OMP_THREAD_LIMIT the operator set is kept.
TESSERACT_THREADS = "1"
DEFAULT_LANG = "dan+eng+lat"
#: Glyph height (median of a block's marks, about a capital's) that a block is scaled to:
#: tesseract reads 20-40 px text best.
GLYPH_PX = 32
TEXT_FOUND, NO_TEXT = "TEXT_FOUND", "NO_TEXT"
#: Long side of the copy of a block that is checked for a barcode.
CODE_CHECK_PX = 600
#: Fewest words of two or more letters or digits for a block's reading to count as text.
MIN_WORDS = 2
#: A reading that covers less than this share of the block's letters with confident words,
#: or is less sure than `SURE_CONFIDENCE` on average, may be of upside-down text: the block
#: is read turned by 180 degrees as well, and the better reading is kept.
COVERED_SHARE = 0.7
SURE_CONFIDENCE = 85.0


@dataclass(frozen=True)
class Word:
    text: str
    confidence: float
    box: tuple[int, int, int, int]
    line: tuple[int, int, int, int]


def region(env: Mapping[str, str]) -> tuple[float, float, float, float]:
    raw = env.get("DASSCO_OCR_REGION", "").strip()
    if not raw:
        return (0.0, 0.0, 1.0, 1.0)
    try:
        x0, y0, x1, y1 = (float(v) for v in raw.split(","))
    except ValueError:
        x0 = y0 = x1 = y1 = float("nan")
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ModuleFailed(
            f"DASSCO_OCR_REGION must be x0,y0,x1,y1 fractions with x0<x1, y0<y1, not {raw!r}",
            retryable=False,
        )
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class Place:
    """Where text was found: the block, and the same place seen turned by 90 degrees when
    the layout alone cannot tell which way the lines run."""

    block: TextBlock
    rival: TextBlock | None = None


def find_blocks(img: Image, env: Mapping[str, str]) -> list[Place]:
    """The text blocks of the image (within DASSCO_OCR_REGION), in full-size pixels, however
    the sheet lies: blocks are looked for on the image and on it turned by 90 degrees (a sheet
    scanned sideways, a slip glued across), and where both find one place the reading with
    more letters per row wins, or, when that is close, the reading. Whether a block is upside
    down is settled when it is read."""
    np = optional("numpy", "numpy")
    x0, y0, x1, y1 = region(env)
    box = (
        round(x0 * img.width), round(y0 * img.height), round(x1 * img.width),
        round(y1 * img.height),
    )  # fmt: skip
    gray = np.asarray(img.crop(box).convert("L") if box != (0, 0, *img.size) else img.convert("L"))
    limit = round(number(env, "DASSCO_OCR_MAX_BLOCKS", 4, minimum=1))
    width = gray.shape[1]
    found: list[TextBlock] = []
    for turn in (0, 90):
        view = gray if turn == 0 else np.ascontiguousarray(np.rot90(gray))
        for b in text_blocks(view, limit=limit):
            # np.rot90 turns counter-clockwise: a point (x, y) is at (y, width - x) on it.
            left, top, right, bottom = (
                b.box if turn == 0 else (width - b.box[3], b.box[0], width - b.box[1], b.box[2])
            )
            found.append(
                TextBlock(
                    box=(left + box[0], top + box[1], right + box[0], bottom + box[1]),
                    glyph_px=b.glyph_px, angle=b.angle, glyphs=b.glyphs, turn=turn,
                    rows=b.rows,
                )
            )  # fmt: skip
    # Where both turns found a block, the text usually runs along the one with the longer
    # rows (read across its lines, a label has rows of one letter per line), but not always
    # (a joined-up hand merges across lines): the other is kept as the block's rival, and
    # the reading decides.
    kept: list[TextBlock] = []
    for block in sorted(found, key=lambda b: -b.letters_per_row):
        if not any(_overlap(block.box, k.box) > 0.5 for k in kept):
            kept.append(block)
    kept.sort(key=lambda b: -b.glyphs)
    places = []
    for block in kept[:limit]:
        rivals = [
            b for b in found
            if b.turn != block.turn and _overlap(block.box, b.box) > 0.5
        ]  # fmt: skip
        places.append(Place(block, max(rivals, key=lambda b: b.glyphs) if rivals else None))
    return places


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """The shared area of two boxes, as a fraction of the smaller one."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller if w > 0 and h > 0 and smaller > 0 else 0.0


def is_a_code(img: Image, block: TextBlock) -> bool:
    """Whether the block is a barcode rather than text: a Data Matrix is rows of dark marks
    too, and reading it as text costs a tesseract call for nothing."""
    zxing = optional("zxingcpp", "zxing-cpp")
    left, top, right, bottom = block.box
    # With a margin: the rows found may leave out a rotated code's corners.
    mx, my = (right - left) // 4, (bottom - top) // 4
    crop = img.crop((max(0, left - mx), max(0, top - my), min(img.width, right + mx),
                     min(img.height, bottom + my))).convert("L")  # fmt: skip
    # A code is still read at ~4 px per module; a label-sized crop read at full size costs
    # as much as the rest of the search.
    shrink = min(1.0, CODE_CHECK_PX / max(crop.size))
    if shrink < 1:
        crop = crop.resize(
            (max(1, round(crop.width * shrink)), max(1, round(crop.height * shrink)))
        )
    area = (right - left) * (bottom - top) * shrink * shrink
    covered = 0.0
    # Codes side by side (a multi-specimen sheet's) may make one block together.
    for code in zxing.read_barcodes(crop):
        corners = [code.position.top_left, code.position.top_right,
                   code.position.bottom_right, code.position.bottom_left]  # fmt: skip
        xs, ys = [c.x for c in corners], [c.y for c in corners]
        covered += (max(xs) - min(xs)) * (max(ys) - min(ys))
    return covered >= 0.3 * area


def _tesseract(page: Image, lang: str, psm: int) -> dict[str, list[Any]]:
    tess = optional("pytesseract", "pytesseract")
    os.environ.setdefault("OMP_THREAD_LIMIT", TESSERACT_THREADS)  # tesseract inherits it
    with tempfile.TemporaryDirectory(prefix="dassco-ocr-") as tmp:
        # Given an image object, pytesseract writes it as a PNG for tesseract to read, and
        # zlib costs more than tesseract's reading of a label; an uncompressed greyscale PGM
        # costs nothing to write and reads the same.
        path = Path(tmp) / "block.pgm"
        page.save(path, format="PPM")
        try:
            data: dict[str, list[Any]] = tess.image_to_data(
                str(path), lang=lang, config=f"--psm {psm}", output_type=tess.Output.DICT
            )
        except tess.TesseractNotFoundError:
            raise ModuleFailed(
                "the tesseract binary is not installed or not on PATH (Debian: apt-get install "
                "tesseract-ocr)",
                retryable=False,
            ) from None
        except tess.TesseractError as exc:
            packs = " ".join(f"tesseract-ocr-{code}" for code in lang.split("+"))
            raise ModuleFailed(
                f"tesseract failed with language {lang!r}: {exc} "
                f"(is the language pack installed? Debian: apt-get install {packs})",
                retryable=False,
            ) from None
    return data


def read_block(
    img: Image, block: TextBlock, lang: str, psm: int, min_confidence: float,
    turn: int | None = None,
) -> list[Word]:  # fmt: skip
    """The words tesseract is at least `min_confidence` sure of in one block, read with the
    block turned by `turn` degrees (default: the block's own), with boxes in the image's
    pixels, in reading order."""
    pil = optional("PIL.Image", "Pillow")
    turn = block.turn if turn is None else turn % 360
    left, top, right, bottom = block.box
    crop = img.crop(block.box).convert("L")
    turned = _turn_image(crop, turn)
    levelled = turned.rotate(-block.angle, resample=pil.Resampling.BICUBIC, expand=True,
                             fillcolor=255) if abs(block.angle) >= 0.3 else turned  # fmt: skip
    scale = min(2.5, max(0.2, GLYPH_PX / max(block.glyph_px, 1.0)))
    page = levelled.resize(
        (max(1, round(levelled.width * scale)), max(1, round(levelled.height * scale))),
        resample=pil.Resampling.LANCZOS,
    )
    data = _tesseract(page, lang, psm)
    theta = math.radians(-block.angle if levelled is not turned else 0.0)
    cx, cy = turned.width / 2, turned.height / 2
    rx, ry = levelled.width / 2, levelled.height / 2

    def back(u: float, v: float) -> tuple[float, float]:
        """A point of the page in the image: undo the scaling, the levelling, the turn and
        the crop."""
        du, dv = u / scale - rx, v / scale - ry
        x = du * math.cos(theta) - dv * math.sin(theta) + cx
        y = du * math.sin(theta) + dv * math.cos(theta) + cy
        x, y = _unturn(x, y, turn, crop.width, crop.height)
        return left + x, top + y

    def box_of(x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        corners = [back(x, y), back(x + w, y), back(x, y + h), back(x + w, y + h)]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        return (
            max(left, math.floor(min(xs))), max(top, math.floor(min(ys))),
            min(right, math.ceil(max(xs))), min(bottom, math.ceil(max(ys))),
        )  # fmt: skip

    on_page: list[Word] = []
    for i, raw in enumerate(data["text"]):
        text = str(raw).strip()
        conf = float(data["conf"][i])
        if not text or conf < min_confidence:
            continue
        x, y, w, h = (int(data[k][i]) for k in ("left", "top", "width", "height"))
        on_page.append(Word(text=text, confidence=conf, box=(x, y, x + w, y + h), line=(0,) * 4))
    # Lines are found on the levelled page, where they are horizontal; then each box goes
    # back to where it is in the image.
    return [
        Word(w.text, w.confidence, box_of(w.box[0], w.box[1], w.box[2] - w.box[0],
                                          w.box[3] - w.box[1]), w.line)
        for w in _reading_order(on_page)
    ]  # fmt: skip


def _turn_image(img: Image, turn: int) -> Image:
    """The image turned by `turn` degrees counter-clockwise (a multiple of 90)."""
    if not turn:
        return img
    transpose = optional("PIL.Image", "Pillow").Transpose
    return img.transpose(
        {90: transpose.ROTATE_90, 180: transpose.ROTATE_180, 270: transpose.ROTATE_270}[turn]
    )


def _unturn(x: float, y: float, turn: int, width: int, height: int) -> tuple[float, float]:
    """A point of a crop turned by `turn` degrees counter-clockwise, on the crop itself
    (`width` x `height`)."""
    if turn == 90:
        return width - y, x
    if turn == 180:
        return width - x, height - y
    if turn == 270:
        return y, height - x
    return x, y


def _reading_order(words: list[Word]) -> list[Word]:
    """Words in lines top to bottom, left to right. Sparse-text mode numbers every word
    apart, so lines are made from the words' vertical overlap instead of its numbering."""
    ordered = sorted(words, key=lambda w: (w.box[1] + w.box[3]) / 2)
    lines: list[list[Word]] = []
    for word in ordered:
        middle = (word.box[1] + word.box[3]) / 2
        if lines:
            last = lines[-1]
            top = min(w.box[1] for w in last)
            bottom = max(w.box[3] for w in last)
            if top <= middle <= bottom:
                last.append(word)
                continue
        lines.append([word])
    out: list[Word] = []
    for number_, line in enumerate(lines):
        for word in sorted(line, key=lambda w: w.box[0]):
            out.append(Word(word.text, word.confidence, word.box, (number_, 0, 0, 0)))
    return out


def read_place(
    img: Image, place: Place, lang: str, psm: int, min_confidence: float
) -> tuple[list[Word], TextBlock, int]:
    """The words of a place, the block and the turn they were read at.

    The block is read as found; a weak reading (few of the block's letters in confident
    words, or a low mean confidence: what text read sideways or upside down gives) is tried
    again with the rival (the place seen turned by 90 degrees) and, where they gave any word,
    with both turned by 180 degrees, stopping at the first strong reading; otherwise the
    reading with the most confident letters wins."""
    tries = [(place.block, place.block.turn)]
    if place.rival is not None:
        tries.append((place.rival, place.rival.turn))
    as_found = len(tries)
    best: tuple[list[Word], TextBlock, int] | None = None
    index = 0
    while index < len(tries):
        block, turn = tries[index]
        index += 1
        words = read_block(img, block, lang, psm, min_confidence, turn=turn)
        if best is None or _score(words) > _score(best[0]):
            best = (words, block, turn)
        if _letters(words) >= COVERED_SHARE * block.glyphs and _mean(words) >= SURE_CONFIDENCE:
            return words, block, turn
        if index <= as_found and words:
            # Upside-down text still gives confident shapes; a reading with none at all is
            # of no text either way up (a stem, a leaf), and is not tried upside down.
            tries.append((block, (turn + 180) % 360))
    assert best is not None
    return best


def _letters(words: list[Word]) -> int:
    return sum(sum(c.isalnum() for c in w.text) for w in words)


def _mean(words: list[Word]) -> float:
    return sum(w.confidence for w in words) / len(words) if words else 0.0


def _score(words: list[Word]) -> float:
    """Letters read, weighted by how sure tesseract is of them."""
    return sum(sum(c.isalnum() for c in w.text) * w.confidence / 100 for w in words)


def _text(words: list[Word]) -> str:
    lines: dict[tuple[int, int, int, int], list[str]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word.text)
    return "\n".join(" ".join(v) for v in lines.values())


def run(ctx: JobContext) -> dict[str, Any]:
    env = os.environ
    lang = env.get("DASSCO_OCR_LANG", "").strip() or DEFAULT_LANG
    min_confidence = number(env, "DASSCO_OCR_MIN_CONFIDENCE", 50)
    psm = round(number(env, "DASSCO_OCR_PSM", 11, minimum=0))
    texts: list[str] = []
    all_words: list[dict[str, Any]] = []
    blocks_seen = 0
    label: tuple[int, dict[str, Any]] | None = None
    for path in source_images(ctx):
        img = open_image(path)
        blocks = find_blocks(img, env)
        blocks_seen += len(blocks)
        for place in blocks:
            if is_a_code(img, place.block):
                ctx.log(f"{path.name}: block {place.block.box} is a barcode, not read as text")
                continue
            words, block, turn = read_place(img, place, lang, psm, min_confidence)
            if sum(1 for w in words if sum(c.isalnum() for c in w.text) >= 2) < MIN_WORDS:
                # A few stray characters from a leaf's veins or a stem, not a label.
                words = []
            ctx.log(
                f"{path.name}: block {block.box} ({block.glyphs} marks, skew "
                f"{block.angle:.1f} deg, read turned by {turn} deg): {len(words)} word(s)"
            )
            if not words:
                continue
            texts.append(_text(words))
            all_words.extend(
                {"text": w.text, "confidence": round(w.confidence, 1), "image": path.name,
                 "box": list(w.box)}
                for w in words
            )  # fmt: skip
            if label is None or len(words) > label[0]:
                label = (len(words), {"image": path.name, "box": list(block.box)})
    tags: dict[str, Any] = {"ocr": "\n\n".join(texts), "ocr_language": lang}
    if all_words:
        confidences = [float(w["confidence"]) for w in all_words]
        tags |= {
            "ocr_status": TEXT_FOUND,
            "ocr_confidence": round(sum(confidences) / len(confidences), 1),
            "ocr_label_box": label[1] if label else None,
            "ocr_words": all_words,
        }
    else:
        reason = (
            "no text block was found on the image(s)"
            if not blocks_seen
            else f"{blocks_seen} text block(s) found, but no word was read with confidence "
            f">= {min_confidence:g}"
        )
        ctx.log(f"no text: {reason}")
        tags |= {"ocr_status": NO_TEXT, "ocr_reason": reason, "ocr_confidence": None,
                 "ocr_label_box": None, "ocr_words": []}  # fmt: skip
    return {"metadata": {"tags": tags}}
