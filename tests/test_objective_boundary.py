"""Broken objectives (tests/broken_objectives.py) are caught at the boundary: by mertlab.testing
and in the training step, each time with one line naming the objective, its alias and its
distribution, never a traceback."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

import broken_objectives
from mertlab.cli import main
from mertlab.plugin_system.plugin_manager import PluginSource
from mertlab.testing import CHECKS, ContractViolation, run_check

SOURCE = PluginSource("broken_objectives", "broken-objectives", "0.0.1")
LABEL = "(broken-objectives 0.0.1)"


@pytest.fixture
def broken_registry(registry_with):
    """The built-ins plus the broken objectives, as the process-wide registry (the CLI sees it)."""
    return registry_with(broken_objectives, SOURCE)


@pytest.mark.parametrize("name", sorted(broken_objectives.BROKEN))
def test_contract_checks_name_the_broken_objective(broken_registry, name, one_thread):
    check, fragment = broken_objectives.BROKEN[name]
    with pytest.raises(ContractViolation) as err:
        run_check("objective", name, check, broken_registry)
    message = str(err.value)
    assert message.startswith(f"objective '{name}' {LABEL}: check '{check}'") and fragment in message, message
    assert len(message.splitlines()) == 1
    if check != "loss":  # the mistake only the new checks see: the plain loss check passes
        run_check("objective", name, "loss", broken_registry)


def test_correct_objective_passes_every_check(broken_registry, one_thread):
    for check in CHECKS["objective"]:
        if check != "vocabularies":  # continuous only: skipped
            run_check("objective", "masked_l1", check, broken_registry)


@pytest.mark.integration
def test_training_step_stops_a_non_scalar_loss_with_one_line_and_tags_the_failed_run(
    broken_registry, demo_dir, tmp_path, tracking_uri, write_yaml, capsys
):
    spec = write_yaml(
        {
            "name": "broken-objective",
            "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.0},
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 12}}},
            "objectives": {"flat": {"name": "per_frame_loss", "teacher": "cqt"}},
            "trainer": {"max_steps": 1, "output_dir": str(tmp_path / "runs")},
            "tracking": {"tracking_uri": tracking_uri},
        }
    )
    assert main(["train", str(spec), "--no-progress"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    expected = f"error: objectives.flat: objective 'per_frame_loss' {LABEL}: loss must be a scalar tensor (shape ())"
    assert errors[0].startswith(expected + ", got shape (2, "), errors[0]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("broken-objective").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["mertlab.error"] == errors[0].removeprefix("error: ")


def test_a_training_step_whose_loss_has_no_graph_is_one_line_naming_the_objective(broken_registry, one_thread):
    """Without the check, backward fails deep inside Lightning ("element 0 of tensors does not
    require grad"), blaming nobody."""
    import torch

    from mertlab.data.dataset import AudioBatch
    from mertlab.errors import ObjectiveError
    from mertlab.experiment.spec import resolve_spec
    from mertlab.train.module import PretrainModule

    spec = resolve_spec(
        {
            "name": "detached",
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 12}}},
            "objectives": {"flat": {"name": "detached_loss", "teacher": "cqt"}},
            "callbacks": {},
        },
        registry=broken_registry,
    )
    module = PretrainModule(spec, broken_registry)
    wav = torch.randn(2, 12000, generator=torch.Generator().manual_seed(0)) * 0.1
    batch = AudioBatch(wav, torch.tensor([12000, 9000]), (), torch.zeros(2, dtype=torch.float64))
    module.shared_step(batch, 0, "val")  # no gradient needed outside training
    with pytest.raises(ObjectiveError) as err:
        module.shared_step(batch, 0, "train")
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(
        f"loss/total has no gradient: objectives.flat: objective 'detached_loss' {LABEL} returned a loss not "
        "connected to the model"
    ), message
