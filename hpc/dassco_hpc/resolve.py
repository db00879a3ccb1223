"""Finding the function that runs a module name.

First the Python modules listed in DASSCO_HPC_MODULES (comma-separated importable names): the
first whose `MODULES` dict has the name wins. Otherwise the built-in `dassco_hpc.modules.<name>`
and its `run`.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from dassco_hpc.context import JobContext

ModuleFunction = Callable[[JobContext], Any]
BUILTIN_PACKAGE = "dassco_hpc.modules"


class ModuleNotFound(LookupError):
    """No module of that name, anywhere we looked."""


class ModuleBroken(ImportError):
    """The module exists but cannot be loaded (an import error inside it, no callable)."""

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


def listed_modules(env: Mapping[str, str]) -> list[str]:
    return [n.strip() for n in env.get("DASSCO_HPC_MODULES", "").split(",") if n.strip()]


def _import(name: str) -> Any | None:
    """The module, or None if it does not exist; ModuleBroken if importing it fails."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            return None
        raise ModuleBroken(f"cannot import {name}: {exc}", traceback.format_exc()) from exc
    except Exception as exc:
        raise ModuleBroken(
            f"cannot import {name}: {type(exc).__name__}: {exc}", traceback.format_exc()
        ) from exc


def resolve(name: str, env: Mapping[str, str]) -> ModuleFunction:
    looked: list[str] = []
    for listed in listed_modules(env):
        module = _import(listed)
        if module is None:
            raise ModuleBroken(f"DASSCO_HPC_MODULES names {listed}, which is not importable")
        table = getattr(module, "MODULES", None)
        if not isinstance(table, Mapping):
            raise ModuleBroken(f"{listed} (from DASSCO_HPC_MODULES) has no MODULES dict")
        looked.append(f"{listed}.MODULES")
        if name in table:
            found: ModuleFunction = table[name]
            if not callable(found):
                raise ModuleBroken(f"{listed}.MODULES[{name!r}] is not callable")
            return found
    builtin = f"{BUILTIN_PACKAGE}.{name}"
    looked.append(builtin)
    module = _import(builtin) if name.isidentifier() else None
    if module is None:
        raise ModuleNotFound(f"unknown module {name!r}: looked in {', '.join(looked)}")
    run: ModuleFunction | None = getattr(module, "run", None)
    if run is None or not callable(run):
        raise ModuleBroken(f"{builtin} has no run(ctx) function")
    return run
