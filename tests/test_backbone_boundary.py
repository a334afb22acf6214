"""A third-party backbone's output is checked: by the contract checks (``mertlab check-plugin``)
and at every training step (:mod:`mertlab.toolkit.backbone_output`), as one line naming the
backbone and its distribution -- never a shape error inside an objective, blamed on it."""

from __future__ import annotations

import pytest
import torch

import broken_backbones
from mertlab.data.dataset import AudioBatch
from mertlab.errors import BackboneOutputError
from mertlab.experiment.spec import resolve_spec
from mertlab.plugin_system.plugin_manager import PluginSource
from mertlab.testing import CHECKS, ContractViolation, run_check
from mertlab.train.module import PretrainModule

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = PluginSource("broken_backbones", "broken-backbones", "0.0.1")
LABEL = "(broken-backbones 0.0.1)"


@pytest.fixture
def broken_registry(registry_with):
    return registry_with(broken_backbones, SOURCE)


def module_for(backbone: str, registry) -> PretrainModule:
    spec = resolve_spec(
        {
            "name": f"broken-{backbone}",
            "backbone": {"name": backbone},
            "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 12}}},
            "objectives": {"recon": {"name": "masked_regression", "teacher": "cqt"}},
            "callbacks": {},
        },
        registry=registry,
    )
    return PretrainModule(spec, registry)


def batch() -> AudioBatch:
    wav = torch.randn(2, 12000, generator=torch.Generator().manual_seed(0)) * 0.1
    return AudioBatch(wav, torch.tensor([12000, 9000]), (), torch.zeros(2, dtype=torch.float64))


def test_the_correct_backbone_passes_every_check_and_trains(broken_registry):
    for check in CHECKS["backbone"]:
        run_check("backbone", "frame_mlp", check, broken_registry)
    loss, _, _ = module_for("frame_mlp", broken_registry).shared_step(batch(), 0, "train")
    assert loss.requires_grad and torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(broken_backbones.BROKEN))
def test_contract_checks_name_the_broken_backbone(broken_registry, name):
    fragment = broken_backbones.BROKEN[name][0]
    with pytest.raises(ContractViolation) as err:
        run_check("backbone", name, "forward", broken_registry)
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"backbone '{name}' {LABEL}: check 'forward': ") and fragment in message, message


def test_non_finite_features_are_named_as_such_by_the_determinism_check(broken_registry):
    """NaN != NaN: without a finiteness check first, NaN features read as non-determinism."""
    with pytest.raises(ContractViolation) as err:
        run_check("backbone", "nan_hidden", "determinism", broken_registry)
    assert "holds NaN/inf" in str(err.value), err.value


@pytest.mark.parametrize("name", sorted(n for n, (_, step) in broken_backbones.BROKEN.items() if step))
def test_a_training_step_stops_a_malformed_output_with_one_line_naming_the_backbone(broken_registry, name):
    fragment = broken_backbones.BROKEN[name][1]
    module = module_for(name, broken_registry)
    with pytest.raises(BackboneOutputError) as err:
        module.shared_step(batch(), 0, "train")
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"backbone '{name}' {LABEL}: ") and fragment in message, message
