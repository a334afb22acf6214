"""The CLI as a user meets it: exit codes, one clear message per problem, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mertlab.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_help_lists_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("plugins", "validate", "schema"):
        assert command in out


def test_plugins_table_and_filter(toy_registry, capsys):
    code, out, _ = run(capsys, "plugins", "--kind", "teacher", "toy_*")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "kind", "source", "summary"]
    assert any(line.startswith("toy_cqt") and "toy_plugins" not in line for line in lines)
    assert not any(line.startswith("toy_backbone") for line in lines)


def test_validate_prints_resolved_spec(toy_registry, toy_spec, write_yaml, capsys):
    code, out, _ = run(capsys, "validate", str(write_yaml(toy_spec)), "-o", "optim.lr=0.002")
    assert code == 0 and "lr: 0.002" in out and "magnitude: linear" in out


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s.update(bogus=1), "bogus: Extra inputs are not permitted"),
        (
            lambda s: s["optim"].update(lr="x") if "optim" in s else s.update(optim={"lr": "x"}),
            "optim.lr: Input should be a valid number",
        ),
        (lambda s: s["teachers"]["rvq"].update(name="nope"), "teachers.rvq.name: unknown teacher 'nope'"),
        (
            lambda s: s["objectives"]["cqt_recon"].update(teacher="ghost"),
            "objectives.cqt_recon.teacher: no teacher alias 'ghost'",
        ),
        (
            lambda s: s["teachers"]["cqt"]["params"].update(n_bins=-3),
            "teachers.cqt.params.n_bins: Input should be greater than 0",
        ),
    ],
)
def test_validate_errors_exit_1_with_one_line_each(toy_registry, toy_spec, write_yaml, capsys, mutate, expected):
    mutate(toy_spec)
    path = write_yaml(toy_spec)
    code, out, err = run(capsys, "validate", str(path))
    assert code == 1 and out == ""
    assert f"error: {path}: {expected}" in err
    assert len(err.strip().splitlines()) == 1


def test_validate_missing_file_and_bad_yaml(toy_registry, write_yaml, tmp_path, capsys):
    code, _, err = run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert code == 1 and "no such spec file" in err
    code, _, err = run(capsys, "validate", str(write_yaml("a: [1,\n")))
    assert code == 1 and "malformed YAML" in err


def test_schema_of_spec_and_component(toy_registry, capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and "teachers" in json.loads(out)["properties"]
    code, out, _ = run(capsys, "schema", "teacher", "toy_cqt")
    assert code == 0 and json.loads(out)["properties"]["n_bins"]["description"] == "Bins."
    code, _, err = run(capsys, "schema", "teacher", "toy_cqq")
    assert code == 1 and "did you mean 'toy_cqt'" in err


@pytest.mark.integration
def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mertlab", "validate", str(tmp_path / "none.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_mean_accuracies_of_the_run_summary():
    from mertlab.cli import mean_accuracies

    metrics = {"acc/rvq/cb0": 0.1, "acc/rvq/cb1": 0.3, "val/acc/rvq/cb0": 0.2, "loss/total": 3.0, "acc/units/cb0": 0.5}
    assert mean_accuracies(metrics) == pytest.approx({"rvq": 0.2, "units": 0.5, "val/rvq": 0.2})
