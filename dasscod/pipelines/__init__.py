"""The built-in pipelines (one TOML file each, named after the pipeline it declares) and
reading a folder of pipeline files (`pipelines_dir`)."""

from __future__ import annotations

from pathlib import Path

from dasscod.pipeline import Pipeline, PipelineError, parse_pipeline

BUILTIN_PIPELINES = Path(__file__).parent


def load_pipelines(directory: Path = BUILTIN_PIPELINES) -> dict[str, Pipeline]:
    """Read every `*.toml` in `directory`; one pipeline per file."""
    if not directory.is_dir():
        raise PipelineError(f"pipeline folder {directory} does not exist")
    pipelines: dict[str, Pipeline] = {}
    for path in sorted(directory.glob("*.toml")):
        pipeline = parse_pipeline(path.read_text(encoding="utf-8"), source=str(path))
        if pipeline.name in pipelines:
            raise PipelineError(f"{path}: pipeline {pipeline.name} is defined twice")
        pipelines[pipeline.name] = pipeline
    if not pipelines:
        raise PipelineError(f"pipeline folder {directory} holds no *.toml pipeline")
    return pipelines
