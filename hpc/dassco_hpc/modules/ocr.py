"""HERB0001 `ocr`: read the label text with tesseract.

Where the label is cannot be found cheaply and reliably on real sheets (labels, annotation
slips and stamps look alike to a threshold), so tesseract reads the whole sheet, trimmed of
the scanner background and scaled so that its long side is at most DASSCO_OCR_MAX_PX (default
2500: label text stays ~20 px high on a 4000x6000 scan, and tesseract's time grows with the
pixel count). DASSCO_OCR_REGION="x0,y0,x1,y1" (fractions of the trimmed sheet, e.g.
"0.4,0.7,1,1" for the customary bottom-right label) narrows it where a collection's layout is
known. Words below DASSCO_OCR_MIN_CONFIDENCE (default 50) are dropped: the plant, the Data
Matrix and the ruler otherwise come back as confident-looking garbage with low scores.

Result: `metadata.ocr_text` (lines in reading order), `ocr_language` (the tesseract language
string, DASSCO_OCR_LANG, default "eng"; e.g. "eng+dan+lat" if those language packs are
installed) and `ocr_confidence` (mean word confidence 0-100 of the kept words; null when
there is no text). An empty label gives empty text, not a failure. A missing tesseract binary
or language pack is a non-retryable failure naming what to install.

Tesseract runs single-threaded unless OMP_THREAD_LIMIT says otherwise (see `TESSERACT_THREADS`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dassco_hpc.context import JobContext
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import content_box, number, open_image, optional, source_images

if TYPE_CHECKING:
    from PIL.Image import Image

#: Tesseract's OpenMP threads by default: one. A job is given one CPU and several jobs share a
#: node, where OpenMP's busy-waiting threads compete with each other: on the 2-core test
#: machine a 1200x1800 sheet took 0.55-0.65 CPU-s with the default and 0.22 CPU-s with one
#: thread (0.63-0.73 s against 0.32-0.39 s wall). An OMP_THREAD_LIMIT the operator set is kept.
TESSERACT_THREADS = "1"


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


def prepare(img: Image, env: Mapping[str, str]) -> Image:
    """The part of the sheet to read, in grey, scaled down to the configured size."""
    left, top, right, bottom = content_box(img)
    x0, y0, x1, y1 = region(env)
    w, h = right - left, bottom - top
    box = (
        left + round(x0 * w), top + round(y0 * h), left + round(x1 * w), top + round(y1 * h),
    )  # fmt: skip
    part = img.crop(box).convert("L")
    max_px = number(env, "DASSCO_OCR_MAX_PX", 2500, minimum=200)
    scale = max_px / max(part.size)
    if scale < 1:
        part = part.resize(
            (max(1, round(part.width * scale)), max(1, round(part.height * scale))),
            resample=optional("PIL.Image", "Pillow").Resampling.LANCZOS,
        )
    return part


def read_text(img: Image, lang: str, min_confidence: float) -> tuple[str, float | None]:
    """(text, mean confidence) of the words tesseract is at least `min_confidence` sure of."""
    tess = optional("pytesseract", "pytesseract")
    os.environ.setdefault("OMP_THREAD_LIMIT", TESSERACT_THREADS)  # tesseract inherits it
    with tempfile.TemporaryDirectory(prefix="dassco-ocr-") as tmp:
        # Given an image object, pytesseract writes it as a PNG for tesseract to read, and
        # zlib spent more time on that (0.5 s for a 4000x6000 sheet) than tesseract on the
        # reading; an uncompressed greyscale PGM costs nothing to write and reads the same.
        page = Path(tmp) / "page.pgm"
        (img if img.mode == "L" else img.convert("L")).save(page, format="PPM")
        try:
            data = tess.image_to_data(str(page), lang=lang, output_type=tess.Output.DICT)
        except tess.TesseractNotFoundError:
            raise ModuleFailed(
                "the tesseract binary is not installed or not on PATH (Debian: apt-get install "
                "tesseract-ocr)",
                retryable=False,
            ) from None
        except tess.TesseractError as exc:
            raise ModuleFailed(
                f"tesseract failed with language {lang!r}: {exc} "
                "(is the language pack installed?)",
                retryable=False,
            ) from None
    lines: dict[tuple[int, int, int], list[str]] = {}
    confidences: list[float] = []
    for i, word in enumerate(data["text"]):
        conf = float(data["conf"][i])
        if not word.strip() or conf < min_confidence:
            continue
        key = (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i]))
        lines.setdefault(key, []).append(word.strip())
        confidences.append(conf)
    text = "\n".join(" ".join(words) for _, words in sorted(lines.items()))
    mean = round(sum(confidences) / len(confidences), 1) if confidences else None
    return text, mean


def run(ctx: JobContext) -> dict[str, Any]:
    env = os.environ
    lang = env.get("DASSCO_OCR_LANG", "").strip() or "eng"
    min_confidence = number(env, "DASSCO_OCR_MIN_CONFIDENCE", 50)
    texts: list[str] = []
    confidences: list[float] = []
    for path in source_images(ctx):
        text, confidence = read_text(prepare(open_image(path), env), lang, min_confidence)
        ctx.log(f"{path.name}: {len(text.split())} word(s), mean confidence {confidence}")
        if text:
            texts.append(text)
        if confidence is not None:
            confidences.append(confidence)
    return {
        "metadata": {
            "ocr_text": "\n\n".join(texts),
            "ocr_language": lang,
            "ocr_confidence": (
                round(sum(confidences) / len(confidences), 1) if confidences else None
            ),
        }
    }
