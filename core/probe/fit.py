"""MARBLE-style probes on frozen clip features: one MLP per layer, plus a learnable weighted sum.

Protocol (MARBLE, Yuan et al. 2023): an MLP with one hidden layer of
512, ReLU, dropout 0.2, trained with Adam (lr 1e-3) and early stopping on the valid split; also a
probe on a softmax-weighted sum of all layers. Features are standardised with train statistics
(per layer), regression targets too (predictions are mapped back before scoring).

Deterministic for a given seed on CPU: the initial weights and the minibatch order come from
the seed, and the best epoch (by the valid split's primary metric) is restored at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from mertlab.contracts import Params
from mertlab.probe.metrics import baseline_scores, compute_metrics, primary_metric
from mertlab.probe.task import Task
from mertlab.probe.uncertainty import Interval, confidence_intervals


class ProbeParams(Params):
    """Probe hyper-parameters; defaults follow MARBLE's MLP probe."""

    hidden_dim: int = Field(512, gt=0, description="Hidden units of the MLP (MARBLE: 512).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout after the hidden layer (MARBLE: 0.2).")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate (MARBLE: 1e-3).")
    layer_weights_lr: float = Field(
        1e-2,
        gt=0.0,
        description="Adam learning rate of the weighted-sum probe's layer logits: above the MLP's so the weights "
        "can move within the few hundred steps of a small task (at 1e-3 they barely leave uniform).",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="Adam L2 weight decay of the MLP.")
    batch_size: int = Field(64, gt=0, description="Minibatch size.")
    max_epochs: int = Field(200, gt=0, description="Upper bound on training epochs.")
    patience: int = Field(10, gt=0, description="Stop after this many epochs without a better valid metric.")
    seed: int = Field(0, description="Seed of the probe's initial weights and minibatch order.")


@dataclass
class ProbeResult:
    """Scores of one probe. ``name``: ``layer<i>``, ``weighted`` or ``majority``; ``scores``:
    the probe's predictions for every row of the task (probabilities or values), row order of the
    task (kept, so two probes can be compared clip by clip); ``test_ci``: the 95% bootstrap
    interval of each test metric (:mod:`.uncertainty`)."""

    name: str
    valid: dict[str, float]
    test: dict[str, float]
    scores: np.ndarray
    layer: int | None = None
    best_epoch: int = 0
    layer_weights: list[float] | None = None
    test_ci: dict[str, Interval] = field(default_factory=dict)


@dataclass
class ProbeReport:
    """Every probe of one task on one feature set, plus the input-independent baseline."""

    task: Task
    probes: list[ProbeResult]
    baseline: ProbeResult
    metric: str
    layers: list[int] = field(default_factory=list)

    @property
    def best(self) -> ProbeResult:
        """The probe with the best *valid* primary metric (the test split never selects)."""
        return max(self.probes, key=lambda r: orderable(r.valid[self.metric]))


def orderable(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _standardise(features: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per layer and dimension, with the train rows' mean and std (constant dims: std 1)."""
    mean = features[train].mean(axis=0, keepdims=True)
    std = features[train].std(axis=0, keepdims=True)
    return (features - mean) / np.where(std > 1e-8, std, 1.0)


class ProbeBank(nn.Module):
    """Several independent probe MLPs (MARBLE's: one hidden layer, ReLU, dropout) trained side by
    side as one batched module.

    Member ``m`` reads layer ``sources[m]`` of a ``[B, K, D]`` input, or (``None``, at most one,
    last) the learnable softmax-weighted sum of all K layers. Each member has its own weights
    and its own loss; the losses are summed, so each member's gradient -- and, Adam being
    element-wise, each update -- is the one it would get trained alone. One minibatch step
    updates every member at once: the probes of all layers cost about one probe's Python
    overhead per step (:func:`fit_probes`).
    """

    def __init__(self, sources: list[int | None], num_layers: int, dim: int, outputs: int, params: ProbeParams) -> None:
        super().__init__()
        if None in sources[:-1]:
            raise ValueError("the weighted-sum member must come last")
        self.sources = list(sources)
        self.fixed = [k for k in sources if k is not None]
        members = len(sources)
        # Every member starts from the same weights (nn.Linear's initialisation, drawn from the
        # seed): each starts where a bank of that member alone starts.
        first, last = nn.Linear(dim, params.hidden_dim), nn.Linear(params.hidden_dim, outputs)
        self.w1 = nn.Parameter(first.weight.detach().T.repeat(members, 1, 1).contiguous())  # [M, D, H]
        self.b1 = nn.Parameter(first.bias.detach().repeat(members, 1)[:, None, :].contiguous())  # [M, 1, H]
        self.w2 = nn.Parameter(last.weight.detach().T.repeat(members, 1, 1).contiguous())  # [M, H, O]
        self.b2 = nn.Parameter(last.bias.detach().repeat(members, 1)[:, None, :].contiguous())  # [M, 1, O]
        self.dropout = nn.Dropout(params.dropout)
        # Zero logits = equal weights at the start; only the weighted-sum member (K > 1) learns them.
        self.layer_logits = nn.Parameter(torch.zeros(num_layers), requires_grad=sources[-1] is None and num_layers > 1)

    @property
    def layer_weights(self) -> Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, K, D]`` -> ``[M, B, O]``."""
        inputs = [x[:, self.fixed].transpose(0, 1)] if self.fixed else []
        if self.sources[-1] is None:
            inputs.append(torch.einsum("bkd,k->bd", x, self.layer_weights)[None])
        hidden = torch.relu(torch.baddbmm(self.b1, torch.cat(inputs), self.w1))
        return torch.baddbmm(self.b2, self.dropout(hidden), self.w2)


def _member_losses(task_type: str, out: Tensor, y: Tensor) -> Tensor:
    """Sum over members of each member's mean loss (``out`` ``[M, B, O]``): cross-entropy for
    classification, MSE for regression, binary cross-entropy per tag for multilabel."""
    if task_type == "classification":
        members = out.shape[0]
        return nn.functional.cross_entropy(out.flatten(0, 1), y.repeat(members)) * members
    if task_type == "regression":
        return ((out - y) ** 2).mean(dim=(1, 2)).sum()
    return (
        nn.functional.binary_cross_entropy_with_logits(out, y.expand_as(out), reduction="none").mean(dim=(1, 2)).sum()
    )


def fit_probes(
    features: np.ndarray,
    task: Task,
    params: ProbeParams,
    sources: list[int | None],
    names: list[str],
    device: str | torch.device = "cpu",
) -> list[ProbeResult]:
    """Train one probe per entry of ``sources`` on ``features`` ``[N, K, D]`` (rows = the task's
    rows): on layer slice ``sources[m]``, or (``None``, last) on the learnable weighted sum of
    all K slices. The probes train side by side (:class:`ProbeBank`), each with MARBLE's early
    stopping on its own valid score: its best epoch is kept, and it stops counting once
    ``patience`` epochs pass without a better one; training ends when every probe has stopped or
    at ``max_epochs``. Each starts from the weights and sees the minibatch order a lone probe
    of the same seed gets."""
    train, valid = task.indices("train"), task.indices("valid")
    x_all = torch.as_tensor(_standardise(features.astype(np.float64), train), dtype=torch.float32, device=device)
    targets = task.targets
    if task.type == "regression":
        target_mean, target_std = float(targets[train].mean()), float(targets[train].std()) or 1.0
        y_all = torch.as_tensor((targets - target_mean) / target_std, dtype=torch.float32, device=device)[:, None]
    elif task.type == "multilabel":
        y_all = torch.as_tensor(targets, dtype=torch.float32, device=device)
    else:
        y_all = torch.as_tensor(targets, dtype=torch.long, device=device)

    def predict(model: ProbeBank) -> np.ndarray:
        """Every member's predictions for every row: ``[M, N, O]`` (regression: ``[M, N]``)."""
        model.eval()
        with torch.no_grad():
            out = model(x_all).double().cpu()
        if task.type == "regression":
            return out[..., 0].numpy() * target_std + target_mean
        return (torch.sigmoid(out) if task.type == "multilabel" else torch.softmax(out, dim=2)).numpy()

    torch.manual_seed(params.seed)
    model = ProbeBank(sources, features.shape[1], features.shape[2], task.num_outputs, params).to(device)
    mlp = [model.w1, model.b1, model.w2, model.b2]
    groups: list[dict[str, Any]] = [{"params": mlp}]
    if model.layer_logits.requires_grad:
        groups.append({"params": [model.layer_logits], "lr": params.layer_weights_lr, "weight_decay": 0.0})
    optimizer = torch.optim.Adam(groups, lr=params.lr, weight_decay=params.weight_decay)
    order = torch.Generator().manual_seed(params.seed)
    metric = primary_metric(task.type)
    members = len(sources)
    best_value, best_epoch = [-math.inf] * members, [0] * members
    best = [p.detach().clone() for p in (*mlp, model.layer_logits)]
    stopped = [False] * members
    train_rows = torch.as_tensor(train, device=device)
    for epoch in range(1, params.max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(train), generator=order).split(params.batch_size):
            rows = train_rows[batch.to(device)]
            optimizer.zero_grad()
            _member_losses(task.type, model(x_all[rows]), y_all[rows]).backward()
            optimizer.step()
        predictions = predict(model)
        for m in range(members):
            if stopped[m]:
                continue
            value = orderable(compute_metrics(task.type, targets[valid], predictions[m][valid])[metric])
            if value > best_value[m] or epoch == 1:
                best_value[m], best_epoch[m] = value, epoch
                for kept, param in zip(best[:4], mlp, strict=True):
                    kept[m] = param.detach()[m]
                if sources[m] is None:
                    best[4] = model.layer_logits.detach().clone()
            elif epoch - best_epoch[m] >= params.patience:
                stopped[m] = True
        if all(stopped):
            break
    with torch.no_grad():
        for param, kept in zip((*mlp, model.layer_logits), best, strict=True):
            param.copy_(kept)
    scores = predict(model)
    weights = model.layer_weights.detach().cpu().tolist() if model.layer_logits.requires_grad else None
    return [
        scored(name, task, scores[m], best_epoch=best_epoch[m], layer_weights=weights if source is None else None)
        for m, (source, name) in enumerate(zip(sources, names, strict=True))
    ]


def scored(name: str, task: Task, scores: np.ndarray, **fields: Any) -> ProbeResult:
    """The :class:`ProbeResult` of predictions ``scores`` (every row of ``task``): valid and test
    metrics, and the test metrics' bootstrap intervals."""
    valid, test = task.indices("valid"), task.indices("test")
    return ProbeResult(
        name,
        compute_metrics(task.type, task.targets[valid], scores[valid]),
        compute_metrics(task.type, task.targets[test], scores[test]),
        scores,
        test_ci=confidence_intervals(task.type, task.targets[test], scores[test]),
        **fields,
    )


def baseline(task: Task) -> ProbeResult:
    """The chance/majority baseline: predictions from the train labels alone (see metrics)."""
    scores = baseline_scores(task.type, task.targets[task.indices("train")], len(task.paths), len(task.classes))
    return scored("majority" if task.type == "classification" else "chance", task, scores)


def probe_task(
    features: np.ndarray,
    layers: list[int],
    task: Task,
    params: ProbeParams | None = None,
    probe_layers: list[int] | None = None,
    weighted: bool = True,
    device: str | torch.device = "cpu",
) -> ProbeReport:
    """Probes on ``features`` ``[N, K, D]`` whose slice ``k`` is layer ``layers[k]``: one per
    layer in ``probe_layers`` (default: all) and, with ``weighted`` and K > 1, one on the
    learnable weighted sum of all K layers."""
    params = params or ProbeParams()
    chosen = layers if probe_layers is None else probe_layers
    sources: list[int | None] = [layers.index(layer) for layer in chosen]
    names = [f"layer{layer}" for layer in chosen]
    if weighted and len(layers) > 1:
        sources.append(None)
        names.append("weighted")
    probes = fit_probes(features, task, params, sources, names, device) if sources else []
    for result, layer in zip(probes, chosen, strict=False):
        result.layer = layer
    return ProbeReport(task, probes, baseline(task), primary_metric(task.type), list(layers))
