"""An in-process ARS simulator (Keycloak tokens, asset service, file proxy, ERDA) for tests and
the demo. See `server.ars_simulator` to run it and `faults.Faults` to make it misbehave."""

from dasscod.devstack.ars.faults import Faults, RequestRecord
from dasscod.devstack.ars.server import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    ArsSimulator,
    ars_simulator,
)
from dasscod.devstack.ars.state import ErdaSettings, SimError, SimState

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "ArsSimulator",
    "ErdaSettings",
    "Faults",
    "RequestRecord",
    "SimError",
    "SimState",
    "ars_simulator",
]
