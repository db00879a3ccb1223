"""The pipeline modules shipped with dassco-hpc land here (a later issue brings HERB0001's).

A module `dassco_hpc.modules.<name>` defines `run(ctx: JobContext) -> dict`; see the
package README for the interface.
"""
