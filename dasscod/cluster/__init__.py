"""Where jobs run: transports (how commands reach a machine) and schedulers (how jobs are
started and followed there). The interfaces are in `dasscod.cluster.base`."""
