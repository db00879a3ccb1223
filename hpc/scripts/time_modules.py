"""Time the image modules on one synthetic sheet (default 4000x6000 TIFF): load, barcode,
ocr, derivatives, clean_up, each called directly with a JobContext whose client talks to the
tests' stub listener. Run: `.venv/bin/python hpc/scripts/time_modules.py [--size WxH]`."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dassco_hpc import synthetic
from dassco_hpc.client import CallbackClient
from dassco_hpc.context import JobContext
from dassco_hpc.modules import barcode, clean_up, derivatives, load, ocr
from listener_stub import StubListener

GUID = "timing-asset"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="4000x6000")
    parser.add_argument("--kind", default="specimen", choices=synthetic.KINDS)
    parser.add_argument("--noise", type=float, default=6.0, help="sensor noise sigma")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    stub = StubListener().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shared, work = Path(tmp) / "shared", Path(tmp) / "work"
            shared.mkdir()
            image = shared / f"{GUID}.tif"
            started = time.perf_counter()
            synthetic.write(
                image, args.kind, (width, height), seed=1, noise=args.noise, compression=None
            )
            drawn = time.perf_counter() - started
            data = image.read_bytes()
            print(
                f"sheet {args.kind} {width}x{height}: {len(data) / 1e6:.1f} MB raw TIFF, "
                f"noise {args.noise}, "
                f"drawn in {drawn:.2f} s"
            )
            stub.gets[f"/assets/{GUID}/links"] = {
                "asset_guid": GUID,
                "files": [
                    {
                        "name": image.name, "type": "tif", "check_sum": zlib.crc32(data),
                        "file_size": len(data) / 1e6, "ars_link": "", "local_path": str(image),
                    }
                ],
            }  # fmt: skip
            stub.gets[f"/assets/{GUID}/metadata"] = {"asset_guid": GUID, "institution": "NHMD"}
            client = CallbackClient(base_url=stub.base_url, token="test-token", deadline_s=10)
            for name, module in (
                ("load", load), ("barcode", barcode), ("ocr", ocr),
                ("derivatives", derivatives), ("clean_up", clean_up),
            ):  # fmt: skip
                ctx = JobContext(GUID, name, 1, work, None, client, logger=lambda _m: None)
                work.mkdir(exist_ok=True)
                started = time.perf_counter()
                out = module.run(ctx)
                took = time.perf_counter() - started
                summary = str(out)
                print(f"{name:12s} {took:6.2f} s  {summary[:110]}")
    finally:
        stub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
