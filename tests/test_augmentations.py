"""Augmentations are plugins (``register_augmentations``), named by a spec's ``augment`` section."""

from __future__ import annotations

import pytest
import torch

import toy_plugins
from mertlab.cli import main
from mertlab.errors import SpecError
from mertlab.experiment.spec import resolve_spec
from mertlab.plugin_system.registry import get_registry

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {
    "name": "augment",
    "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
    "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}}},
    "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
    "callbacks": {},
}


def test_the_registry_and_mertlab_plugins_list_mixup(capsys):
    assert "mixup" in get_registry().names("augmentation")
    assert main(["plugins", "--kind", "augmentation"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:3] == ["mixup", "augmentation", "builtin"] for line in out.splitlines())


def test_short_form_name_defaults_and_the_default_section():
    short = resolve_spec({**SPEC, "augment": {"mixup": {"probability": 0.25}}})
    long = resolve_spec({**SPEC, "augment": {"mixup": {"name": "mixup", "params": {"probability": 0.25}}}})
    assert short == long and short.augment["mixup"].params == {"probability": 0.25, "max_gain": 0.5}
    assert resolve_spec(SPEC).augment["mixup"].params["probability"] == 0.5  # MERT's mixup unless removed
    assert resolve_spec({**SPEC, "augment": {"mixup": None}}).augment == {}
    two = resolve_spec({**SPEC, "augment": {"soft": {"name": "mixup", "params": {"max_gain": 0.1}}, "mixup": {}}})
    assert [(alias, a.name) for alias, a in two.augment.items()] == [("soft", "mixup"), ("mixup", "mixup")]


def test_an_unknown_augmentation_is_a_one_line_error_naming_the_field():
    with pytest.raises(SpecError) as info:
        resolve_spec({**SPEC, "augment": {"noise": {"name": "mixupp"}}})
    message = str(info.value)
    assert len(message.strip().splitlines()) == 1, message
    assert "augment.noise.name" in message and "unknown augmentation 'mixupp'" in message and "mixup" in message


def test_a_third_party_augmentation_changes_the_student_input_of_a_training_step(toy_registry):
    """toy_gain (tests/toy_plugins.py) registered through the hook, named in the spec: the
    backbone of a training step sees its output, teachers and validation steps the clean audio."""
    from mertlab.data.dataset import AudioBatch
    from mertlab.toolkit.seeding import AUGMENT, generator, name_key
    from mertlab.train.module import PretrainModule

    spec = resolve_spec({**SPEC, "seed": 3, "augment": {"louder": {"name": "toy_gain", "params": {"gain": 3.0}}}})
    module = PretrainModule(spec, toy_registry)
    seen = []
    module.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    wav[1, 6000:] = 0.0
    batch = AudioBatch(wav, torch.tensor([8000, 6000]), (), torch.zeros(2, dtype=torch.float64))
    toy_plugins.ToyGain.calls.clear()

    module.shared_step(batch, 0, "train")
    (call,) = toy_plugins.ToyGain.calls
    assert torch.equal(call["input"], wav) and torch.equal(seen[-1], call["output"])
    assert torch.allclose(seen[-1], wav * 3.0)
    expected = torch.rand(1, generator=generator(3, AUGMENT, 0, 0, 0, name_key("louder"))).item()
    assert call["draw"] == expected  # seeded by (seed, step, micro-batch, rank, alias)

    module.shared_step(batch, 0, "val")
    assert len(toy_plugins.ToyGain.calls) == 1 and torch.equal(seen[-1], wav)
