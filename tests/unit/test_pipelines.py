"""Pipelines as data: the built-in TOML files and the errors a bad file gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from dasscod.model import Flag
from dasscod.pipeline import PipelineError, parse_pipeline
from dasscod.pipelines import BUILTIN_PIPELINES, load_pipelines

MINIMAL = """
name = "PIPEMINI"
[[jobs]]
name = "load"
priority = 1
"""


def test_builtin_pipelines_are_exactly_herb_and_piof() -> None:
    assert sorted(load_pipelines()) == ["PIPEHERB0001", "PIPEPIOF0001"]
    assert sorted(load_pipelines(BUILTIN_PIPELINES)) == ["PIPEHERB0001", "PIPEPIOF0001"]


def test_each_builtin_pipeline_file_is_named_after_the_pipeline_it_declares() -> None:
    for path in BUILTIN_PIPELINES.glob("*.toml"):
        assert parse_pipeline(path.read_text(), source=path.name).name == path.stem


def test_herb0001_runs_its_six_jobs_one_after_another() -> None:
    herb = load_pipelines()["PIPEHERB0001"]
    assert [j.name for j in herb.jobs] == [
        "load",
        "barcode",
        "ocr",
        "derivatives",
        "upload",
        "clean_up",
    ]
    priorities = [j.priority for j in herb.jobs]
    assert priorities == sorted(priorities)
    assert len(set(priorities)) == len(priorities), "HERB0001 jobs run strictly in sequence"
    assert not any(j.allow_failure for j in herb.jobs)
    assert herb.spec("clean_up").max_attempts == 5
    assert herb.spec("load").module_name == "load"
    assert herb.spec("barcode").command == ["{python}", "-m", "dassco_hpc", "run", "{module}"]


def test_piof0001_runs_barcode_and_ocr_in_parallel_and_tolerates_derivative_failure() -> None:
    piof = load_pipelines()["PIPEPIOF0001"]
    assert [j.name for j in piof.jobs] == [
        "load",
        "barcode",
        "ocr",
        "derivatives",
        "upload",
        "clean_up",
    ]
    assert piof.spec("barcode").priority == piof.spec("ocr").priority
    assert piof.spec("load").priority < piof.spec("barcode").priority
    assert piof.spec("derivatives").allow_failure is True
    assert piof.spec("upload").allow_failure is False


def test_initial_jobs_are_waiting_and_never_queued() -> None:
    jobs = load_pipelines()["PIPEHERB0001"].initial_jobs()
    assert {j.status.value for j in jobs} == {"WAITING"}
    assert {j.attempt for j in jobs} == {0}
    assert {j.hpc_job_id for j in jobs} == {-9}
    assert [j.max_attempts for j in jobs] == [3, 3, 3, 3, 3, 5]


def test_jobs_are_sorted_by_priority_whatever_the_file_order() -> None:
    pipeline = parse_pipeline(
        """
        name = "PIPEX"
        [[jobs]]
        name = "second"
        priority = 2
        [[jobs]]
        name = "first"
        priority = 1
        requires = {is_in_ars = "YES"}
        """
    )
    assert [j.name for j in pipeline.jobs] == ["first", "second"]
    assert pipeline.spec("first").requires == {"is_in_ars": Flag.YES}


def test_unknown_job_lookup_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        parse_pipeline(MINIMAL).spec("nope")


# --------------------------------------------------------------------------- errors


def test_bad_toml_names_the_file() -> None:
    with pytest.raises(PipelineError, match=r"^herb\.toml: not valid TOML"):
        parse_pipeline('name = "PIPEX"\n[[jobs]\n', source="herb.toml")


def test_duplicate_job_names_are_refused() -> None:
    text = MINIMAL + '[[jobs]]\nname = "load"\npriority = 2\n'
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, source="dup.toml")
    message = str(info.value)
    assert message.startswith("dup.toml: jobs:")
    assert "repeated: load" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('colour = "red"\n' + MINIMAL, "colour"),  # top level
        (MINIMAL + "prio = 3\n", "jobs.0.prio"),  # inside the job
    ],
)
def test_unknown_fields_are_refused_and_named(text: str, field: str) -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, source="odd.toml")
    message = str(info.value)
    assert message.startswith("odd.toml: ")
    assert f"{field}: Extra inputs are not permitted" in message


@pytest.mark.parametrize("priority", ["0", "-1", '"high"', "1.5"])
def test_bad_priority_is_refused_and_named(priority: str) -> None:
    text = f'name = "PIPEX"\n[[jobs]]\nname = "load"\npriority = {priority}\n'
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, source="prio.toml")
    assert str(info.value).startswith("prio.toml: jobs.0.priority: ")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('name = "PIPEX"\njobs = []\n', "jobs"),
        ('name = "PIPEX"\n', "jobs"),
        ('name = "lower"\n[[jobs]]\nname = "load"\npriority = 1\n', "name"),
        ('name = "PIPEX"\n[[jobs]]\nname = "Load"\npriority = 1\n', "jobs.0.name"),
        (
            'name = "PIPEX"\n[[jobs]]\nname = "load"\npriority = 1\nmax_attempts = 0\n',
            "jobs.0.max_attempts",
        ),
        (
            'name = "PIPEX"\n[[jobs]]\nname = "load"\npriority = 1\nclusters = []\n',
            "jobs.0.clusters",
        ),
        (
            'name = "PIPEX"\n[[jobs]]\nname = "load"\npriority = 1\n'
            'requires = {is_in_ars = "MAYBE"}\n',
            "jobs.0.requires.is_in_ars",
        ),
    ],
)
def test_other_invalid_values_name_the_field(text: str, field: str) -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, source="bad.toml")
    assert str(info.value).startswith(f"bad.toml: {field}: ")


def test_requires_naming_an_unknown_flag_is_refused() -> None:
    text = MINIMAL + 'requires = {is_in_arss = "YES"}\n'
    with pytest.raises(PipelineError, match="is_in_arss"):
        parse_pipeline(text, source="typo.toml")


# --------------------------------------------------------------------------- folders


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_pipelines_reads_every_toml_file(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", MINIMAL)
    write(tmp_path, "b.toml", MINIMAL.replace("PIPEMINI", "PIPEOTHER"))
    write(tmp_path, "notes.txt", "not a pipeline")
    assert sorted(load_pipelines(tmp_path)) == ["PIPEMINI", "PIPEOTHER"]


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "README.md", "no pipelines here")
    with pytest.raises(PipelineError, match="holds no"):
        load_pipelines(tmp_path)


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="does not exist"):
        load_pipelines(tmp_path / "nope")


def test_the_same_pipeline_name_in_two_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", MINIMAL)
    second = write(tmp_path, "b.toml", MINIMAL)
    with pytest.raises(PipelineError) as info:
        load_pipelines(tmp_path)
    assert str(info.value) == f"{second}: pipeline PIPEMINI is defined twice"


def test_an_invalid_file_in_a_folder_is_named(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", MINIMAL)
    bad = write(tmp_path, "b.toml", MINIMAL.replace("priority = 1", "priority = 0"))
    with pytest.raises(PipelineError) as info:
        load_pipelines(tmp_path)
    assert str(info.value).startswith(f"{bad}: jobs.0.priority: ")
