"""Stand-ins for HPC modules that cannot run on the embedded stack (none at present).

The demo names this module in DASSCO_HPC_MODULES so that a stand-in can be slotted in here
without touching the stack; every HERB0001 job now runs the real module from `hpc/`, `upload`
included (it verifies the derivative files; see `hpc/dassco_hpc/modules/upload.py` for why it
does not upload them yet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MODULES: dict[str, Callable[[Any], dict[str, Any]]] = {}
