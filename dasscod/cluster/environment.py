"""The environment a job (and every command run on this machine for a cluster) starts from.

Never the daemon's own: it holds `DASSCOD_*` settings, and the environment is where a secret
given that way (the token secret, the MongoDB URI with its password, the ARS client secret)
lives. A job that inherited it could mint tokens for every asset or write to the database. So
a command gets only these basics from the daemon, then the cluster's `env` and the runner's
own `DASSCO_*` variables on top (`JobSpec.env`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: What a job needs from the machine: where programs are, a home, the locale, scratch space.
BASICS = ("PATH", "HOME", "LANG", "TMPDIR")


def job_environment(extra: Mapping[str, str] | None = None,
                    inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The basics taken from `inherited`, with `extra` on top."""
    base = {name: inherited[name] for name in BASICS if name in inherited}
    return {**base, **(extra or {})}
