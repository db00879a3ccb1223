"""`python -m dasscod.devstack.bench_modules`: how well the HERB0001 image modules read a varied
corpus, one JSON object on the last line of stdout (also the `modules` part of `make bench`).
Progress goes to stderr.

`BENCH_MODULES_SHEETS` (default 40) synthetic sheets of `BENCH_MODULES_SIZE` (default
4000x6000), each drawn with its own random variation (`dassco_hpc.synthetic.varied`: label
place, size, font, rotation, language, texture, light, overlap, colour bar, code size and angle
or none), saved alternately as LZW TIFF and JPEG; one in five is a device target (a colour
checker or grey scale without a code, or a coded colour target). Each sheet goes through the
`barcode` and `ocr` modules as a job runs them (decoding the file included), one at a time,
tesseract single-threaded. Numbers:

- `barcode_read_rate`: sheets whose drawn codes were all read, of the sheets with a code;
- `ocr_label_word_recall`: label words read (exactly, punctuation included), of all drawn;
- `ocr_word_precision`: words read that are on the label, of all words read;
- `device_target_precision` / `_recall`: sheets reported as device targets that are targets /
  targets reported as such;
- `s_per_sheet_barcode` / `_ocr`: mean wall seconds per sheet of each module (and `_max`);
- `cpu_s_per_sheet_barcode` / `_ocr`: the same in CPU seconds, tesseract's included: on a
  shared machine the wall time also counts other processes' turns.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

#: Sheets of each kind in every ten: mostly specimens, some targets of every sort.
PLAN = (
    "specimen", "mso", "specimen", "colour_checker", "mos_label",
    "specimen", "no_barcode", "grey_scale", "mos_specimen", "target",
)  # fmt: skip


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _context(workdir: Path, guid: str, job: str) -> Any:
    from dassco_hpc.client import CallbackClient
    from dassco_hpc.context import JobContext

    # The modules read the image from the work folder and never call the listener here.
    client = CallbackClient(base_url="http://127.0.0.1:9", token="bench", deadline_s=1)
    return JobContext(guid=guid, job=job, attempt=1, workdir=workdir, asset_files=None,
                      client=client, logger=lambda _m: None)  # fmt: skip


def _cpu() -> float:
    """CPU seconds of this process and its finished children (tesseract)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(count: int, size: tuple[int, int]) -> dict[str, Any]:
    from dassco_hpc import synthetic
    from dassco_hpc.modules import barcode, ocr

    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    codes_total = codes_read = 0
    words_total = words_read = ocr_words = ocr_on_label = 0
    tp = fp = fn = 0
    times: dict[str, list[float]] = {"barcode": [], "ocr": []}
    cpu: dict[str, list[float]] = {"barcode": [], "ocr": []}
    with tempfile.TemporaryDirectory(prefix="bench-modules-") as tmp:
        for seed in range(1, count + 1):
            kind = PLAN[(seed - 1) % len(PLAN)]
            work = Path(tmp) / f"sheet-{seed}"
            work.mkdir()
            image = work / f"sheet-{seed}.{'jpg' if seed % 2 else 'tif'}"
            drawn = synthetic.write(image, kind, size, seed, noise=4,
                                    variation=synthetic.varied(seed))  # fmt: skip
            started, cpu_started = time.perf_counter(), _cpu()
            result = barcode.run(_context(work, f"bench-{seed}", "barcode"))["barcode"]
            times["barcode"].append(time.perf_counter() - started)
            cpu["barcode"].append(_cpu() - cpu_started)
            is_target = result["asset_subject"] == "device target"
            tp += is_target and drawn.is_target
            fp += is_target and not drawn.is_target
            fn += drawn.is_target and not is_target
            expected = [p for p in drawn.payloads if not p.startswith("DEVICE-TARGET:")]
            if drawn.payloads:
                codes_total += 1
                wanted = synthetic_result(drawn.payloads)
                codes_read += all(result[k] == v for k, v in wanted.items())
            line = (
                f"{seed:3d} {kind:<15} codes {expected or '-'} -> {result['barcodes']} "
                f"({times['barcode'][-1]:.2f} s)"
            )
            if not drawn.is_target:
                started, cpu_started = time.perf_counter(), _cpu()
                tags = ocr.run(_context(work, f"bench-{seed}", "ocr"))["metadata"]["tags"]
                times["ocr"].append(time.perf_counter() - started)
                cpu["ocr"].append(_cpu() - cpu_started)
                truth = Counter(w for text in drawn.label_lines for w in text.split())
                read = Counter(str(w["text"]) for w in tags["ocr_words"])
                hit = sum(min(n, read[w]) for w, n in truth.items())
                words_total += sum(truth.values())
                words_read += hit
                ocr_words += sum(read.values())
                ocr_on_label += sum(min(n, truth[w]) for w, n in read.items())
                line += (
                    f"; OCR {hit}/{sum(truth.values())} words, {tags['ocr_status']} "
                    f"({times['ocr'][-1]:.2f} s, {cpu['ocr'][-1]:.2f} CPU-s)"
                )
            _progress(line + ("; target" if is_target else ""))
    return {
        "sheets": count,
        "size": f"{size[0]}x{size[1]}",
        "barcode_read_rate": round(codes_read / codes_total, 3) if codes_total else None,
        "ocr_label_word_recall": round(words_read / words_total, 3) if words_total else None,
        "ocr_word_precision": round(ocr_on_label / ocr_words, 3) if ocr_words else None,
        "device_target_precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "device_target_recall": round(tp / (tp + fn), 3) if tp + fn else None,
        **{
            f"s_per_sheet_{name}": round(sum(v) / len(v), 2) if v else None
            for name, v in times.items()
        },
        **{f"s_per_sheet_{name}_max": round(max(v), 2) if v else None for name, v in times.items()},
        **{
            f"cpu_s_per_sheet_{name}": round(sum(v) / len(v), 2) if v else None
            for name, v in cpu.items()
        },
    }


def synthetic_result(payloads: list[str]) -> dict[str, Any]:
    """The barcode result the drawn codes call for."""
    from dassco_hpc.convention import Convention

    return dict(Convention().classify(payloads).result)


def main() -> None:
    count = int(os.environ.get("BENCH_MODULES_SHEETS", "40"))
    width, height = (int(v) for v in os.environ.get("BENCH_MODULES_SIZE", "4000x6000").split("x"))
    _progress(f"modules: {count} varied {width}x{height} sheets through barcode and ocr")
    print(json.dumps(run(count, (width, height))))


if __name__ == "__main__":
    main()
