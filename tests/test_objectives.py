"""Objectives on hand-made backbone outputs and targets (no backbone, no teacher needed)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from mertlab.contracts import BackboneOutput, Objective, TargetInfo, Targets
from mertlab.errors import MertlabError, ObjectiveError
from mertlab.plugin_system.registry import get_registry

B, T, D, LAYERS = 3, 20, 16, 2
DISCRETE = ("masked_prediction", "linear_classification")
METRIC_KEY = re.compile(r"^[a-z_]+/[a-z0-9_]+$")  # "<family>/<rest>", logged as "<family>/<alias>/<rest>"


def discrete_info(vocab=(8, 8, 8)) -> TargetInfo:
    return TargetInfo(kind="discrete", dim=len(vocab), frame_rate=75.0, vocab_sizes=tuple(vocab))


def continuous_info(dim=6) -> TargetInfo:
    return TargetInfo(kind="continuous", dim=dim, frame_rate=75.0)


def build(name: str, info: TargetInfo, hidden_dim: int = D, num_layers: int = LAYERS, **params) -> Objective:
    return get_registry().build(
        "objective", name, params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=info
    )


def backbone_output(hidden: torch.Tensor | list[torch.Tensor], lengths: torch.Tensor) -> BackboneOutput:
    states = tuple(hidden) if isinstance(hidden, list) else tuple(hidden for _ in range(LAYERS + 1))
    frames = states[-1].shape[1]
    padding = torch.arange(frames)[None, :] >= lengths[:, None]
    return BackboneOutput(hidden_states=states, padding_mask=padding, frame_rate=75.0)


def random_targets(info: TargetInfo, lengths: torch.Tensor, frames: int = T, seed: int = 0) -> Targets:
    g = torch.Generator().manual_seed(seed)
    batch = lengths.shape[0]
    if info.kind == "discrete":
        values = torch.stack([torch.randint(0, v, (batch, frames), generator=g) for v in info.vocab_sizes], -1)
    else:
        values = torch.randn(batch, frames, info.dim, generator=g)
    return Targets(values=values, lengths=lengths, info=info)


def info_for(name: str) -> TargetInfo:
    return continuous_info() if name == "masked_regression" else discrete_info()


def every_other_mask(batch: int = B, frames: int = T) -> torch.Tensor:
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    mask[:, ::2] = True
    return mask


LENGTHS = torch.tensor([T, T - 5, 7])


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- registration + params
def test_objectives_are_registered_with_their_target_kinds():
    registry = get_registry()
    accepts = {e.name: e.component.accepts for e in registry.list("objective")}
    assert accepts["masked_prediction"] == ("discrete",)
    assert accepts["linear_classification"] == ("discrete",)
    assert accepts["masked_regression"] == ("continuous",)


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
def test_every_param_has_a_default_and_a_description(name):
    model = get_registry().get("objective", name).params_model
    for field_name, field in model.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"
        assert not field.is_required(), f"{name}.{field_name} has no default"


@pytest.mark.parametrize(
    "name,params,fragment",
    [
        ("masked_prediction", {"final_dim": 0}, "final_dim"),
        ("masked_prediction", {"logit_temp": 0}, "logit_temp"),
        ("masked_prediction", {"codebooks": [1, 1]}, "distinct"),
        ("masked_prediction", {"codebooks": []}, "codebooks"),
        ("linear_classification", {"codebooks": [-1]}, "codebooks"),
        ("linear_classification", {"reduction": "max"}, "reduction"),
        ("masked_regression", {"loss": "huber"}, "loss"),
        ("masked_regression", {"unmasked_weight": -1}, "unmasked_weight"),
        ("masked_regression", {"bogus": 1}, "bogus"),
    ],
)
def test_bad_params_give_a_clear_error(name, params, fragment):
    with pytest.raises(MertlabError, match=fragment):
        build(name, info_for(name), **params)


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
def test_wrong_target_kind_is_refused(name):
    wrong = discrete_info() if name == "masked_regression" else continuous_info()
    with pytest.raises(ObjectiveError, match=f"objective '{name}' needs"):
        build(name, wrong)


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
@pytest.mark.parametrize("layer", [LAYERS + 1, -(LAYERS + 2)])
def test_layer_out_of_range_is_refused(name, layer):
    with pytest.raises(ObjectiveError, match=r"layer .* does not exist; the backbone has 2 encoder layers"):
        build(name, info_for(name), layer=layer)


@pytest.mark.parametrize("name", DISCRETE)
def test_unknown_codebook_is_refused(name):
    with pytest.raises(ObjectiveError, match=r"codebooks \[3\] do not exist; the teacher has 3 codebooks"):
        build(name, discrete_info(), codebooks=[0, 3])


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
def test_misaligned_targets_are_refused(name):
    info = info_for(name)
    objective = build(name, info)
    out = backbone_output(torch.randn(B, T, D), LENGTHS)
    short = random_targets(info, LENGTHS, frames=T - 1)
    with pytest.raises(ObjectiveError, match="aligned"):
        objective(out, short, every_other_mask())
    with pytest.raises(ObjectiveError, match="mask has shape"):
        objective(out, random_targets(info, LENGTHS), every_other_mask(frames=T + 1))


# --------------------------------------------------------------------------- forward contract
@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
def test_forward_gives_finite_loss_metrics_and_gradients(name):
    info = info_for(name)
    objective = build(name, info)
    hidden = torch.randn(B, T, D, requires_grad=True)
    out = backbone_output(hidden, LENGTHS)
    result = objective(out, random_targets(info, LENGTHS), every_other_mask())
    assert result.loss.dim() == 0 and torch.isfinite(result.loss)
    result.loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    for param_name, param in objective.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert any(p.grad.abs().sum() > 0 for p in objective.parameters())
    assert result.metrics
    for key, value in result.metrics.items():
        assert METRIC_KEY.match(key), key
        assert value.dim() == 0 and torch.isfinite(value) and not value.requires_grad, key


@pytest.mark.parametrize("name", DISCRETE)
def test_metrics_are_named_per_teacher_codebook(name):
    objective = build(name, discrete_info(), codebooks=[2, 0])
    result = objective(
        backbone_output(torch.randn(B, T, D), LENGTHS), random_targets(discrete_info(), LENGTHS), every_other_mask()
    )
    assert set(result.metrics) == {"acc/cb2", "ce/cb2", "acc/cb0", "ce/cb0"}


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
def test_loss_ignores_unmasked_and_padding_frames(name):
    info = info_for(name)
    objective = build(name, info)
    out = backbone_output(torch.randn(B, T, D), LENGTHS)
    mask = every_other_mask()  # also True on padding frames: they must still be ignored
    targets = random_targets(info, LENGTHS, seed=0)
    other = random_targets(info, LENGTHS, seed=1)
    valid = ~targets.padding_mask
    counted = mask & valid
    changed = torch.where(counted[..., None], targets.values, other.values)
    assert not torch.equal(changed, targets.values)
    base = objective(out, targets, mask)
    moved = objective(out, Targets(changed, LENGTHS, info), mask)
    assert torch.equal(base.loss, moved.loss)
    for key in base.metrics:
        assert torch.equal(base.metrics[key], moved.metrics[key]), key
    # ...and changing a masked, valid frame does change it
    poked = targets.values.clone()
    first = counted.nonzero()[0]
    poked[first[0], first[1]] = other.values[first[0], first[1]] + (1 if info.kind == "discrete" else 0)
    if info.kind == "discrete":
        poked %= info.vocab_sizes[0]
    assert not torch.equal(objective(out, Targets(poked, LENGTHS, info), mask).loss, base.loss)


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
def test_unmasked_weight_adds_the_unmasked_frames(name):
    info = info_for(name)
    torch.manual_seed(0)
    plain = build(name, info)
    torch.manual_seed(0)
    weighted = build(name, info, unmasked_weight=0.5)
    out = backbone_output(torch.randn(B, T, D), LENGTHS)
    targets, other = random_targets(info, LENGTHS, seed=0), random_targets(info, LENGTHS, seed=1)
    mask = every_other_mask()
    unmasked = ~mask & ~targets.padding_mask
    changed = Targets(torch.where(unmasked[..., None], other.values, targets.values), LENGTHS, info)
    assert torch.equal(plain(out, targets, mask).loss, plain(out, changed, mask).loss)
    assert weighted(out, targets, mask).loss > plain(out, targets, mask).loss
    assert not torch.equal(weighted(out, targets, mask).loss, weighted(out, changed, mask).loss)


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
@pytest.mark.parametrize("unmasked_weight", [0.0, 1.0])
def test_empty_mask_gives_zero_loss_with_graph(name, unmasked_weight):
    info = info_for(name)
    objective = build(name, info, unmasked_weight=unmasked_weight)
    hidden = torch.randn(B, T, D, requires_grad=True)
    lengths = torch.zeros(B, dtype=torch.long) if unmasked_weight else LENGTHS  # nothing counts at all
    result = objective(
        backbone_output(hidden, lengths), random_targets(info, lengths), torch.zeros(B, T, dtype=torch.bool)
    )
    assert result.loss.item() == 0.0 and result.loss.requires_grad
    result.loss.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in objective.parameters())
    assert all(torch.isfinite(v) for v in result.metrics.values())


@pytest.mark.parametrize("name", [*DISCRETE, "masked_regression"])
def test_reads_the_chosen_layer_only(name):
    info = info_for(name)
    objective = build(name, info, layer=0)
    states = [torch.randn(B, T, D, requires_grad=True) for _ in range(LAYERS + 1)]
    objective(backbone_output(states, LENGTHS), random_targets(info, LENGTHS), every_other_mask()).loss.backward()
    assert states[0].grad is not None and states[0].grad.abs().sum() > 0
    assert all(s.grad is None for s in states[1:])
    # negative layers count from the end: -2 is encoder layer 1 of 2
    assert build(name, info, layer=-2).layer_index == 1


@pytest.mark.parametrize("name", DISCRETE)
def test_codebook_reduction_sum_is_codebooks_times_mean(name):
    info = discrete_info()
    torch.manual_seed(3)
    summed = build(name, info, reduction="sum")
    torch.manual_seed(3)
    averaged = build(name, info, reduction="mean")
    out = backbone_output(torch.randn(B, T, D), LENGTHS)
    targets = random_targets(info, LENGTHS)
    loss_sum = summed(out, targets, every_other_mask()).loss
    loss_mean = averaged(out, targets, every_other_mask()).loss
    torch.testing.assert_close(loss_sum, 3 * loss_mean)


# --------------------------------------------------------------------------- hand-computed values
def one_hot_case(vocab: int = 4):
    """Frames whose features are one-hot in class ``k``; targets right on 2 of 3 masked frames."""
    hidden = torch.zeros(1, 4, vocab)
    predicted = [0, 1, 2, 3]
    for t, k in enumerate(predicted):
        hidden[0, t, k] = 1.0
    codes = torch.tensor([[[0], [1], [3], [0]]])  # frame 3 is unmasked, its target never counts
    mask = torch.tensor([[True, True, True, False]])
    lengths = torch.tensor([4])
    out = BackboneOutput(hidden_states=(hidden,), padding_mask=torch.zeros(1, 4, dtype=torch.bool), frame_rate=75.0)
    info = discrete_info((vocab,))
    return out, Targets(codes, lengths, info), mask, info


def test_masked_prediction_accuracy_and_loss_by_hand():
    vocab = 4
    out, targets, mask, info = one_hot_case(vocab)
    objective = build("masked_prediction", info, hidden_dim=vocab, num_layers=0, final_dim=vocab, logit_temp=0.1)
    with torch.no_grad():  # projection = identity, code embeddings = one-hot: cosine = 1 for the frame's class, else 0
        objective.final_proj.weight.copy_(torch.eye(vocab))
        objective.final_proj.bias.zero_()
        objective.label_embs[0].copy_(torch.eye(vocab) * 3.0)  # scale must not matter (cosine)
    result = objective(out, targets, mask)
    assert result.metrics["acc/cb0"].item() == pytest.approx(2 / 3)
    # logits: 10 for the predicted class, 0 elsewhere
    right = -math.log(math.exp(10) / (math.exp(10) + vocab - 1))
    wrong = -math.log(1 / (math.exp(10) + vocab - 1))
    expected = (2 * right + wrong) / 3
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert result.metrics["ce/cb0"].item() == pytest.approx(expected, rel=1e-5)


def test_linear_classification_accuracy_and_loss_by_hand():
    vocab = 4
    out, targets, mask, info = one_hot_case(vocab)
    objective = build("linear_classification", info, hidden_dim=vocab, num_layers=0)
    with torch.no_grad():
        objective.head.weight.copy_(torch.eye(vocab) * 2.0)
        objective.head.bias.zero_()
    result = objective(out, targets, mask)
    assert result.metrics["acc/cb0"].item() == pytest.approx(2 / 3)
    right = -math.log(math.exp(2) / (math.exp(2) + vocab - 1))
    wrong = -math.log(1 / (math.exp(2) + vocab - 1))
    assert result.loss.item() == pytest.approx((2 * right + wrong) / 3, rel=1e-5)


@pytest.mark.parametrize("loss,expected", [("mse", (1 + 4 + 9 + 16) / 4), ("l1", (1 + 2 + 3 + 4) / 4)])
def test_masked_regression_loss_by_hand(loss, expected):
    info = continuous_info(dim=2)
    objective = build("masked_regression", info, hidden_dim=D, num_layers=0, loss=loss)
    nn.init.zeros_(objective.head.weight)
    nn.init.zeros_(objective.head.bias)  # predictions are 0: the loss is a statistic of the targets
    # mean over the 2 dims of each masked frame, then over the 2 masked frames; frame 2 is unmasked
    values = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])
    out = BackboneOutput((torch.randn(1, 3, D),), torch.zeros(1, 3, dtype=torch.bool), 75.0)
    result = objective(out, Targets(values, torch.tensor([3]), info), torch.tensor([[True, True, False]]))
    assert result.loss.item() == pytest.approx(expected)
    assert result.metrics["mse/masked"].item() == pytest.approx((1 + 4 + 9 + 16) / 4)


# --------------------------------------------------------------------------- learning
def planted_batch(seed: int, batch: int = 16, frames: int = 48, dim: int = 24):
    """Random features; span-like mask; planted weights fixed across seeds."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, frames, dim, generator=g)
    lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=g)
    mask = torch.rand(batch, frames, generator=g) < 0.6
    return hidden, lengths, mask


def train(objective: Objective, out: BackboneOutput, targets: Targets, mask: torch.Tensor, steps: int, lr: float):
    optimizer = torch.optim.Adam(objective.parameters(), lr=lr)
    first = objective(out, targets, mask)
    for _ in range(steps):
        result = objective(out, targets, mask)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
    return first, objective(out, targets, mask)


@pytest.mark.parametrize("name", DISCRETE)
def test_learning_planted_codes(name):
    """Codes are a fixed function of the features (argmax of a random linear map, 16 codes, 2
    codebooks); the head alone must learn it: masked accuracy far above chance (1/16), on the
    training batch and on a fresh batch of the same function."""
    vocab, dim = 16, 24
    info = discrete_info((vocab, vocab))
    planted = torch.randn(2, dim, vocab, generator=torch.Generator().manual_seed(123))

    def batch(seed):
        hidden, lengths, mask = planted_batch(seed, dim=dim)
        codes = torch.stack([(hidden @ planted[c]).argmax(-1) for c in range(2)], -1)
        return backbone_output(hidden, lengths), Targets(codes, lengths, info), mask

    torch.manual_seed(0)
    objective = build(name, info, hidden_dim=dim)
    out, targets, mask = batch(0)
    first, last = train(objective, out, targets, mask, steps=300, lr=1e-2)
    assert last.loss < 0.3 * first.loss
    for cb in (0, 1):
        assert first.metrics[f"acc/cb{cb}"] < 0.2
        assert last.metrics[f"acc/cb{cb}"] > 0.9
    with torch.no_grad():
        held_out = objective(*batch(1))
    for cb in (0, 1):
        assert held_out.metrics[f"acc/cb{cb}"] > 0.4  # chance: 0.0625


def test_learning_planted_regression():
    """Targets are a fixed linear map of the features plus a little noise: masked MSE must fall
    far below its start, also on a fresh batch."""
    dim, target_dim = 24, 10
    info = continuous_info(target_dim)
    planted = torch.randn(dim, target_dim, generator=torch.Generator().manual_seed(7)) / dim**0.5

    def batch(seed):
        hidden, lengths, mask = planted_batch(seed, dim=dim)
        noise = 0.05 * torch.randn(
            hidden.shape[:2] + (target_dim,), generator=torch.Generator().manual_seed(seed + 100)
        )
        return backbone_output(hidden, lengths), Targets(hidden @ planted + noise, lengths, info), mask

    torch.manual_seed(0)
    objective = build("masked_regression", info, hidden_dim=dim)
    out, targets, mask = batch(0)
    first, last = train(objective, out, targets, mask, steps=300, lr=1e-2)
    assert last.metrics["mse/masked"] < 0.05 * first.metrics["mse/masked"]
    with torch.no_grad():
        held_out = objective(*batch(1))
    assert held_out.metrics["mse/masked"] < 0.1 * first.metrics["mse/masked"]
