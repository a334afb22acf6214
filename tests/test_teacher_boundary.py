"""Broken teachers (tests/broken_teachers.py) are caught at the boundary: at registration, in
training on the fly, in `targets build`, from the cache and by mertlab.testing -- each time with
one line naming the teacher and its distribution, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import broken_teachers
from mertlab.cli import main
from mertlab.plugin_system.plugin_manager import PluginSource, create_plugin_manager
from mertlab.plugin_system.registry import Registry
from mertlab.testing import CHECKS, ContractViolation, run_check

SOURCE = PluginSource("broken_teachers", "broken-teachers", "0.0.1")
LABEL = "(broken-teachers 0.0.1)"
CASES = sorted(broken_teachers.OUTPUT_BROKEN.items())


@pytest.fixture
def broken_registry(registry_with):
    """The built-ins plus the broken teachers, as the process-wide registry (the CLI sees it)."""
    return registry_with(broken_teachers, SOURCE)


def spec_for(teacher: str, demo_dir, tmp_path, tracking_uri, write_yaml, **data):
    discrete = teacher in ("energy_codes", "codes_out_of_range", "float_codes")
    return write_yaml(
        {
            "name": f"broken-{teacher}",
            "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.0, **data},
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {"t": {"name": teacher}},
            "objectives": {"o": {"name": "masked_prediction" if discrete else "masked_regression", "teacher": "t"}},
            "trainer": {"max_steps": 1, "output_dir": str(tmp_path / "runs")},
            "tracking": {"tracking_uri": tracking_uri},
        }
    )


def one_error_line(capsys, teacher: str, fragment: str) -> str:
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # other lines: MLflow/Lightning info
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"teacher '{teacher}' {LABEL}" in errors[0] and fragment in errors[0], err
    assert errors[0].startswith("error: teachers.t"), err  # the spec's alias, at build and train time alike
    return errors[0]


@pytest.mark.parametrize("name", sorted(broken_teachers.REGISTRATION_BROKEN))
def test_registration_contract_names_teacher_and_distribution(name):
    plugin, fragment = broken_teachers.REGISTRATION_BROKEN[name]
    pm = create_plugin_manager(autoload=False)
    pm.register_source(plugin, SOURCE)
    registry = Registry(pm)  # the plugin is skipped, the built-ins stay
    message = registry.skipped["broken_teachers"].message
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"plugin 'broken_teachers' {LABEL}: teacher '{name}': {fragment}"), message
    assert registry.get("teacher", "cqt")


def test_registration_failure_from_an_installed_package_is_one_warning_and_one_error_where_needed(
    fake_dist, capsys, caplog
):
    code = (
        "from pydantic import Field\nfrom mertlab.contracts import Params\nfrom mertlab.hookspecs import hookimpl\n"
        "class P(Params):\n    k: int = Field(3)\n"
        "class T:\n    name = 'no_docs'\n    summary = 's'\n    Params = P\n    target_kind = 'continuous'\n"
        "@hookimpl\ndef register_teachers(register):\n    register(T)\n"
    )
    fake_dist("nodoc-teacher", "nodoc_teacher_mod", code, version="1.2")
    reason = (
        "plugin 'nodoc_teacher_mod' (nodoc-teacher 1.2): teacher 'no_docs': Params field 'k' has no description "
        "(Field(..., description=...))"
    )
    assert main(["plugins"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(reason + "; skipped"), warnings
    assert f"not loaded: {reason}" in capsys.readouterr().out
    assert main(["check-plugin", "no_docs"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: unknown component 'no_docs'") and reason in err


@pytest.mark.parametrize(("teacher", "fragment"), CASES)
def test_contract_checks_name_the_broken_teacher(broken_registry, teacher, fragment):
    with pytest.raises(ContractViolation) as err:
        run_check("teacher", teacher, "outputs", broken_registry)
    message = str(err.value)
    assert message.startswith(f"teacher '{teacher}' {LABEL}: check 'outputs': ") and fragment in message, message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("teacher", ["log_energy", "energy_codes", "onset_levels"])
def test_correct_teachers_pass_every_check(broken_registry, teacher):
    for check in CHECKS["teacher"]:
        run_check("teacher", teacher, check, broken_registry)


@pytest.mark.parametrize("levels", [3, 16])
def test_a_vocabulary_from_params_reaches_the_objective(broken_registry, levels, contract_audio):
    from mertlab.toolkit.teacher_output import check_targets

    teacher = broken_registry.build("teacher", "onset_levels", {"levels": levels})
    assert teacher.info.vocab_sizes == (levels,)
    wav = contract_audio(1.0, 24000)[None]
    codes = check_targets(teacher, teacher.targets(wav, torch.tensor([24000])), 24000, torch.tensor([24000])).values
    assert int(codes.max()) == levels - 1 and int(codes.min()) == 0
    objective = broken_registry.build(
        "objective", "masked_prediction", {}, hidden_dim=8, num_layers=2, target_info=teacher.info
    )
    assert [e.shape[0] for e in objective.label_embs] == [levels]


@pytest.mark.integration
@pytest.mark.parametrize(("teacher", "fragment"), CASES)
def test_train_on_the_fly_stops_with_one_line(
    broken_registry, demo_dir, tmp_path, tracking_uri, write_yaml, capsys, teacher, fragment
):
    spec = spec_for(teacher, demo_dir, tmp_path, tracking_uri, write_yaml)
    assert main(["train", str(spec), "--no-progress"]) == 1
    one_error_line(capsys, teacher, fragment)


@pytest.mark.parametrize(("teacher", "fragment"), CASES)
def test_targets_build_stops_with_one_line_and_writes_nothing(
    broken_registry, demo_dir, tmp_path, tracking_uri, write_yaml, capsys, teacher, fragment
):
    cache = tmp_path / "cache"
    spec = spec_for(teacher, demo_dir, tmp_path, tracking_uri, write_yaml, target_cache=str(cache))
    assert main(["targets", "build", str(spec), "--no-progress"]) == 1
    one_error_line(capsys, teacher, fragment)
    assert not list(cache.rglob("*.npy"))


@pytest.mark.integration
def test_out_of_range_codes_in_the_cache_stop_training_with_one_line(
    broken_registry, demo_dir, tmp_path, tracking_uri, write_yaml, capsys
):
    cache = tmp_path / "cache"
    spec = spec_for("energy_codes", demo_dir, tmp_path, tracking_uri, write_yaml, target_cache=str(cache))
    assert main(["targets", "build", str(spec), "--no-progress"]) == 0
    for entry in cache.rglob("*.npy"):  # a cache from an older, buggy version of the teacher
        np.save(entry, np.load(entry) + 8)
        entry.with_name(entry.stem + ".sum.json").unlink()  # (older caches have no checksum records)
    capsys.readouterr()
    assert main(["train", str(spec), "--no-progress"]) == 1
    err = one_error_line(capsys, "energy_codes", "codes must lie in [0, 8)")
    assert "cached targets of " in err and str(cache) in err
