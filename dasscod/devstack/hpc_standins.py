"""Stand-ins for HPC modules that cannot run on the embedded stack yet.

`upload` puts derivative files into ARS, which the daemon does not talk to yet (issue #3);
until then the demo's upload job reports success without uploading anything, and says so in
its log. Every other HERB0001 job runs the real module from `hpc/`.
"""

from __future__ import annotations

from typing import Any


def upload(ctx: Any) -> dict[str, Any]:
    ctx.log("upload skipped: ARS synchronisation is not built yet (demo stand-in)")
    return {}


MODULES = {"upload": upload}
