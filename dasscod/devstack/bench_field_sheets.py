"""`python -m dasscod.devstack.bench_field_sheets`: the HERB0001 image modules on sheets from the
second, independently written generator (`dasscod.devstack.field_sheets`), one JSON object on
the last line of stdout (the `modules_field` part of `make bench`). Progress goes to stderr.

`BENCH_FIELD_SHEETS` (default 34) sheets, each through `barcode`, `ocr` and `derivatives` as a
job runs them (decoding the file included), one at a time. Each module's outcome on a sheet is
`ok`, `failed` (a `ModuleFailed`: the typed failure the daemon records), `wrong` (a result that
contradicts the sheet) or `crash` (any other exception: a traceback in the job's log). A file
that is no usable image must fail; anything else must not. Numbers:

- `barcode_decode_rate`: sheets whose specimen codes were all read (no more, no less), of the
  sheets with a code;
- `barcode_wrong_ids`: specimen ids reported that are not on the sheet (must be 0);
- `device_target_precision` / `_recall`;
- `ocr_field_recall`: per label field, words read exactly (punctuation included) of the words
  drawn; `ocr_word_recall` over all fields, and `ocr_word_recall_loose` ignoring case and
  punctuation; `ocr_word_precision`: words read that are on the label;
- `outcomes`: per module, how many sheets ended how; `failures`: what went wrong where;
- `s_per_sheet_<module>`: mean wall seconds (and `_max`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Recorder:
    """Stands in for the listener: the derivatives module registers what it made."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def metadata(self, guid: str) -> dict[str, Any]:
        return {"asset_guid": guid, "institution": "NHMD", "payload_type": "image"}

    def links(self, guid: str) -> dict[str, Any]:
        return {"files": []}

    def register_derivative(self, metadata: dict[str, Any]) -> None:
        self.calls.append(f"register {metadata['asset_guid']}")

    def add_file(self, guid: str, **_: Any) -> None:
        self.calls.append(f"file {guid}")

    def derivative_failed(self, guid: str, note: str) -> None:
        self.calls.append(f"failed {guid}")


def context(workdir: Path, guid: str, job: str, client: Any) -> Any:
    from dassco_hpc.context import JobContext

    return JobContext(guid=guid, job=job, attempt=1, workdir=workdir, asset_files=None,
                      client=client, logger=lambda _m: None)  # fmt: skip


def _loose(word: str) -> str:
    return "".join(c for c in word.casefold() if c.isalnum())


def outcome_of(module: Any, ctx: Any) -> tuple[str, Any, str]:
    """(outcome, result, detail) of one module run."""
    from dassco_hpc.errors import ModuleFailed

    try:
        return "ok", module.run(ctx), ""
    except ModuleFailed as exc:
        return "failed", None, exc.reason[:160]
    except Exception as exc:  # a crash is what is being counted
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return "crash", None, f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"[:200]


def run(count: int, first_seed: int = 1) -> dict[str, Any]:
    from dassco_hpc.modules import barcode, derivatives, ocr

    from dasscod.devstack import field_sheets

    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    outcomes: dict[str, Counter[str]] = {m: Counter() for m in ("barcode", "ocr", "derivatives")}
    failures: list[str] = []
    times: dict[str, list[float]] = {m: [] for m in outcomes}
    coded = decoded = wrong_ids = 0
    tp = fp = fn = 0
    field_total: Counter[str] = Counter()
    field_read: Counter[str] = Counter()
    loose_total = loose_read = words_out = words_on_label = 0
    with tempfile.TemporaryDirectory(prefix="bench-field-") as tmp:
        for seed in range(first_seed, first_seed + count):
            work = Path(tmp) / f"sheet-{seed}"
            _, truth = field_sheets.write(work, seed)
            what = (f"{seed:3d} {truth.kind:<14} {truth.file_format:<18} {truth.dpi:3d} dpi "
                    f"turned {truth.turned:3d}")  # fmt: skip
            results: dict[str, Any] = {}
            for name, module in (("barcode", barcode), ("ocr", ocr), ("derivatives", derivatives)):
                if name == "ocr" and truth.is_target:
                    continue
                started = time.perf_counter()
                outcome, result, detail = outcome_of(module, context(work, truth.name, name,
                                                                 Recorder()))  # fmt: skip
                times[name].append(time.perf_counter() - started)
                if truth.broken:
                    # A broken file must fail, with a reason; nothing else will do.
                    outcome = (
                        "ok" if outcome == "failed" else "wrong" if outcome == "ok" else outcome
                    )
                elif outcome == "failed":
                    failures.append(f"{truth.name} {name}: {detail}")
                if outcome == "crash":
                    failures.append(f"{truth.name} {name}: {detail}")
                results[name] = result
                outcomes[name][outcome] += 1
            code = (results.get("barcode") or {}).get("barcode")
            if code is not None and not truth.broken:
                read = list(code["barcodes"])
                wrong_ids += len(set(read) - set(truth.barcodes))
                is_target = code["asset_subject"] == "device target"
                tp += is_target and truth.is_target
                fp += is_target and not truth.is_target
                fn += truth.is_target and not is_target
                if truth.barcodes:
                    coded += 1
                    decoded += sorted(read) == sorted(truth.barcodes)
                if sorted(read) != sorted(truth.barcodes) or is_target != truth.is_target:
                    failures.append(f"{truth.name} barcode: read {read} of {truth.barcodes}"
                                    f"{' as target' if is_target else ''} ({what})")  # fmt: skip
                what += f"; codes {len(read)}/{len(truth.barcodes)}"
            tags = ((results.get("ocr") or {}).get("metadata") or {}).get("tags")
            if tags is not None and not truth.broken:
                read_words = Counter(str(w["text"]) for w in tags["ocr_words"])
                loose_words = Counter(_loose(w) for w in read_words.elements())
                drawn_all: Counter[str] = Counter()
                hits = 0
                for name, text in truth.fields.items():
                    drawn = Counter(text.split())
                    hit = sum(min(n, read_words[w]) for w, n in drawn.items())
                    field_total[name] += sum(drawn.values())
                    field_read[name] += hit
                    hits += hit
                    drawn_all.update(drawn)
                drawn_loose = Counter(_loose(w) for w in drawn_all.elements())
                loose_total += sum(drawn_loose.values())
                loose_read += sum(min(n, loose_words[w]) for w, n in drawn_loose.items())
                words_out += sum(read_words.values())
                words_on_label += sum(min(n, drawn_all[w]) for w, n in read_words.items())
                what += f"; OCR {hits}/{sum(drawn_all.values())} words"
                if drawn_all and hits < 0.8 * sum(drawn_all.values()):
                    failures.append(f"{truth.name} ocr: {hits}/{sum(drawn_all.values())} words "
                                    f"({what}; {', '.join(truth.notes)})")  # fmt: skip
            _progress(what + " " + " ".join(f"{m}:{results.get(m) is not None}" for m in times))
    total = sum(field_total.values())
    return {
        "sheets": count,
        "generator": "dasscod.devstack.field_sheets",
        "barcode_decode_rate": round(decoded / coded, 3) if coded else None,
        "barcode_sheets_with_code": coded,
        "barcode_wrong_ids": wrong_ids,
        "device_target_precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "device_target_recall": round(tp / (tp + fn), 3) if tp + fn else None,
        "ocr_word_recall": round(sum(field_read.values()) / total, 3) if total else None,
        "ocr_word_recall_loose": round(loose_read / loose_total, 3) if loose_total else None,
        "ocr_word_precision": round(words_on_label / words_out, 3) if words_out else None,
        "ocr_field_recall": {
            name: round(field_read[name] / n, 3) for name, n in sorted(field_total.items())
        },
        "outcomes": {name: dict(c) for name, c in outcomes.items()},
        **{
            f"s_per_sheet_{name}": round(sum(v) / len(v), 2) if v else None
            for name, v in times.items()
        },
        **{f"s_per_sheet_{name}_max": round(max(v), 2) if v else None for name, v in times.items()},
        "failures": failures,
    }


def main() -> None:
    count = int(os.environ.get("BENCH_FIELD_SHEETS", "34"))
    first = int(os.environ.get("BENCH_FIELD_FIRST_SEED", "1"))
    _progress(f"modules_field: {count} sheets of the independent generator")
    print(json.dumps(run(count, first)))


if __name__ == "__main__":
    main()
