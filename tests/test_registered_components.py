"""Every registered component, built-in or installed, is checked here for free (timm-style):
default params valid, JSON schema exportable, and a small instance (``test_params``) honours
its contract on real tensors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mertlab.checkpoint import save_backbone
from mertlab.contracts import Backbone, BackboneOutput, Masking, Objective, TargetInfo, Targets, Teacher
from mertlab.errors import MertlabError
from mertlab.plugin_manager import create_plugin_manager
from mertlab.registry import Registry

REGISTRY = Registry(create_plugin_manager())  # built-ins and installed plugins alike
ENTRIES = REGISTRY.list()
IDS = [f"{e.kind}:{e.name}" for e in ENTRIES]


def by_kind(kind):
    entries = [e for e in ENTRIES if e.kind == kind]
    return pytest.mark.parametrize("entry", entries, ids=[e.name for e in entries])


def build(entry, **context):
    return entry.build(getattr(entry.component, "test_params", {}), **context)


def test_every_kind_has_builtins():
    assert {e.kind for e in ENTRIES} == {"teacher", "backbone", "objective", "masking", "callback"}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_default_params_valid_and_schema_documented(entry):
    params = entry.params_model()
    assert entry.params_model.model_validate(params.model_dump(mode="json")) == params
    schema = entry.params_model.model_json_schema()
    json.dumps(schema)
    undocumented = [k for k, v in schema.get("properties", {}).items() if not v.get("description")]
    assert not undocumented, f"{entry.name}: params without a description: {undocumented}"
    assert entry.summary and len(entry.summary.splitlines()) == 1
    assert entry.params_model.model_config.get("extra") == "forbid"


def audio(batch: int, seconds: float, rate: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * rate)) / rate
    tones = torch.stack([torch.sin(2 * math.pi * (220 + 110 * i) * t) for i in range(batch)])
    return 0.5 * tones + 0.05 * torch.randn(tones.shape, generator=g)


@pytest.fixture(scope="module")
def tiny_backbone_file(tmp_path_factory):
    torch.manual_seed(0)
    backbone = REGISTRY.build("backbone", "transformer", {"preset": "tiny"})
    return str(save_backbone(tmp_path_factory.mktemp("contract") / "backbone.pt", backbone))


def build_teacher(entry, backbone_file):
    """A teacher from its test_params; one reading a trained backbone (a `checkpoint` param it
    cannot do without) gets a tiny one, as in tests/test_experiments.py."""
    try:
        return build(entry)
    except MertlabError:
        if "checkpoint" not in entry.params_model.model_fields:
            raise
        return entry.build({**getattr(entry.component, "test_params", {}), "checkpoint": backbone_file})


@by_kind("teacher")
def test_teacher_contract(entry, tiny_backbone_file):
    teacher = build_teacher(entry, tiny_backbone_file)
    assert isinstance(teacher, Teacher) and teacher.target_kind == teacher.info.kind
    if teacher.requires_fit:
        pytest.skip("needs fitting first; covered by its own tests")
    rate = teacher.sample_rate
    wav = audio(2, 0.6, rate)
    lengths = torch.tensor([wav.shape[1], wav.shape[1] // 2])
    out = teacher.targets(wav, lengths)
    info = teacher.info
    assert isinstance(out, Targets) and out.values.shape[0] == 2 and out.values.shape[2] == info.dim
    expected = wav.shape[1] / rate * info.frame_rate
    assert abs(out.values.shape[1] - expected) <= 2, (out.values.shape, expected)
    assert out.lengths[1] < out.lengths[0] <= out.values.shape[1]
    if info.kind == "discrete":
        assert out.values.dtype == torch.long and len(info.vocab_sizes) == info.dim
        for cb, vocab in enumerate(info.vocab_sizes):
            codes = out.values[0, : out.lengths[0], cb]
            assert 0 <= int(codes.min()) and int(codes.max()) < vocab
    else:
        assert out.values.dtype == torch.float32 and torch.isfinite(out.values).all()
    assert teacher.fingerprint() == build_teacher(entry, tiny_backbone_file).fingerprint()


@by_kind("backbone")
def test_backbone_contract(entry):
    torch.manual_seed(0)
    backbone = build(entry).eval()
    assert isinstance(backbone, Backbone)
    samples = int(0.5 * backbone.sample_rate)
    wav = audio(2, 0.5, backbone.sample_rate)
    frames = backbone.num_frames(samples)
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 2:5] = True
    out = backbone(wav, torch.tensor([samples, samples // 2]), mask, instrument=True)
    assert isinstance(out, BackboneOutput) and len(out.hidden_states) == backbone.num_layers + 1
    assert out.last_hidden_state.shape == (2, frames, backbone.hidden_dim)
    assert out.padding_mask.shape == (2, frames) and out.padding_mask[1].any() and not out.padding_mask[0].any()
    assert out.frame_rate == backbone.frame_rate
    assert len(out.attn_max_logits) == len(out.act_rms) == backbone.num_layers
    assert set(backbone.block_names())


@by_kind("objective")
def test_objective_contract(entry):
    torch.manual_seed(0)
    kind = entry.component.accepts[0]
    info = TargetInfo(kind, 2, 75.0, (16, 16)) if kind == "discrete" else TargetInfo(kind, 6, 75.0)
    objective = build(entry, hidden_dim=8, num_layers=2, target_info=info)
    assert isinstance(objective, Objective)
    hidden = tuple(torch.randn(2, 20, 8, requires_grad=True) for _ in range(3))
    out = BackboneOutput(hidden, torch.zeros(2, 20, dtype=torch.bool), 75.0)
    values = torch.randint(0, 16, (2, 20, 2)) if kind == "discrete" else torch.randn(2, 20, 6)
    targets = Targets(values, torch.tensor([20, 20]), info)
    mask = torch.rand(2, 20) < 0.5
    result = objective(out, targets, mask)
    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    result.loss.backward()
    assert hidden[-1].grad is not None and hidden[-1].grad.abs().sum() > 0
    assert all("/" in key for key in result.metrics)


@by_kind("masking")
def test_masking_contract(entry):
    masking = build(entry)
    assert isinstance(masking, Masking)
    padding = torch.zeros(3, 100, dtype=torch.bool)
    padding[1, 60:] = True
    padding[2, 10:] = True
    mask = masking(padding, torch.Generator().manual_seed(0))
    assert mask.shape == padding.shape and mask.dtype == torch.bool
    assert not (mask & padding).any() and mask[0].any()


@by_kind("callback")
def test_callback_constructs(entry):
    import lightning as L

    assert isinstance(build(entry), L.Callback)
