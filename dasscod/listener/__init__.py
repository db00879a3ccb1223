"""The embedded HTTP listener: HPC callbacks, the reads the HPC side needs, health."""
