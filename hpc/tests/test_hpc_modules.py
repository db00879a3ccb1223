"""Finding a module's function, and checking what it returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dassco_hpc.resolve import ModuleBroken, ModuleNotFound, resolve
from dassco_hpc.results import InvalidResults, normalise


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "first_mods.py").write_text("MODULES = {'a': lambda ctx: 'first a'}\n")
    (tmp_path / "second_mods.py").write_text(
        "MODULES = {'a': lambda ctx: 'second a', 'b': lambda ctx: 'second b'}\n"
    )
    (tmp_path / "no_table.py").write_text("x = 1\n")
    (tmp_path / "broken_mods.py").write_text("import no_such_dependency_here\nMODULES = {}\n")
    return tmp_path


def test_the_first_listed_module_with_the_name_wins(importable: Path) -> None:
    env = {"DASSCO_HPC_MODULES": " first_mods , second_mods "}
    assert resolve("a", env)(None) == "first a"  # type: ignore[arg-type]
    assert resolve("b", env)(None) == "second b"  # type: ignore[arg-type]


def test_unknown_names_list_where_we_looked(importable: Path) -> None:
    with pytest.raises(ModuleNotFound) as caught:
        resolve("c", {"DASSCO_HPC_MODULES": "first_mods,second_mods"})
    assert str(caught.value) == (
        "unknown module 'c': looked in first_mods.MODULES, second_mods.MODULES, "
        "dassco_hpc.modules.c"
    )
    with pytest.raises(ModuleNotFound):
        resolve("../etc", {})


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        ("no_table", "no MODULES dict"),
        ("broken_mods", "no_such_dependency_here"),
        ("missing_mods", "not importable"),
    ],
)
def test_a_bad_listed_module_is_an_error(importable: Path, listed: str, message: str) -> None:
    with pytest.raises(ModuleBroken, match=message):
        resolve("a", {"DASSCO_HPC_MODULES": listed})


def test_results_are_completed_with_defaults() -> None:
    assert (
        normalise(None)
        == normalise({})
        == {
            "asset_ready": False,
            "metadata": None,
            "barcode": None,
            "clean_up": False,
            "derivatives": [],
        }
    )
    out = normalise(
        {
            "barcode": {
                "barcodes": ["X1"],
                "asset_subject": "label",
                "MOS": True,
                "disposable": "d-1",
            }
        }
    )
    assert out["barcode"] == {
        "barcodes": ["X1"],
        "asset_subject": "label",
        "MSO": False,
        "MOS": True,
        "label": False,
        "disposable": "d-1",
    }


@pytest.mark.parametrize(
    "results",
    [
        [],
        {"asset_ready": "yes"},
        {"metadata": ["x"]},
        {"barcode": {"barcodes": ["X"], "asset_subject": "plant"}},
        {"barcode": {"barcodes": "X", "asset_subject": "specimen"}},
        {"barcode": {"asset_subject": "specimen", "colour": 1}},
        {"derivatives": [1]},
        {"metadata": {"x": float("nan")}},
        {"metadata": {"x": object()}},
        {"extra": 1},
    ],
)
def test_bad_results_are_refused(results: Any) -> None:
    with pytest.raises(InvalidResults):
        normalise(results)


#: Imported by the image modules only inside `run`, when they need them: the import counts in
#: the module's own run time, and `run load` (or the warm launcher) never pays for them.
HEAVY = ("PIL", "zxingcpp", "pytesseract", "numpy")


@pytest.mark.parametrize("name", ["load", "barcode", "ocr", "derivatives", "upload", "clean_up"])
def test_finding_a_module_imports_no_image_library(name: str) -> None:
    probe = (
        "import sys, dassco_hpc.cli\n"
        "from dassco_hpc.resolve import resolve\n"
        f"resolve({name!r}, {{}})\n"
        f"print(','.join(n for n in {HEAVY!r} if n in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
