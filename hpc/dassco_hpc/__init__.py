"""dassco-hpc: what runs on the HPC cluster for dasscod.

`dassco-hpc run MODULE` runs one pipeline module for one asset (a job attempt described by
the `DASSCO_*` environment) and reports *started*, then *finished* or *failed*, to the
daemon's listener. Standard library only.
"""

from dassco_hpc._version import __version__
from dassco_hpc.client import Ack, CallbackClient
from dassco_hpc.context import JobContext
from dassco_hpc.errors import (
    CallbackError,
    CallbackRejected,
    CallbackUndelivered,
    ConfigError,
    ModuleFailed,
)

__all__ = [
    "Ack",
    "CallbackClient",
    "CallbackError",
    "CallbackRejected",
    "CallbackUndelivered",
    "ConfigError",
    "JobContext",
    "ModuleFailed",
    "__version__",
]
