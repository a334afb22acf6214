"""Training-stability monitoring for scale-up studies (the metrics MERT-330M needed).

Logs, every ``every_n_steps`` optimizer steps: per-block gradient norms (``grad_norm/<block>``,
blocks from ``Backbone.block_names()`` plus one per objective head), per-layer max attention
logits and activation RMS (``attn/max_logit/layer<i>``, ``act_rms/layer<i>``) and the relative
update size (``update_ratio/total`` = ||w_after - w_before|| / ||w_before||). Every logging
step: the loss-spike z-score against an exponential moving average (``stability/loss_spike_z``)
and the running count of spikes (``stability/loss_spikes``).
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from mertlab import metric_names as M
from mertlab.plugins.callbacks.stability_plugin import StabilityParams


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])))


class StabilityMonitor(L.Callback):
    """Gradient norms per block, attention-logit/activation growth, update ratios, loss spikes."""

    name = "stability"
    summary = "Stability metrics: per-block grad norms, attention logits, activation RMS, update ratio, loss spikes"
    Params = StabilityParams

    def __init__(self, params: StabilityParams) -> None:
        self.params = params
        self.loss_mean: float | None = None
        self.loss_var = 0.0
        self.seen = 0
        self.spikes = 0
        self._step = 0
        self._before: list[torch.Tensor] | None = None

    def _due(self) -> bool:
        return self._step % self.params.every_n_steps == 0

    @staticmethod
    def _log(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step
        pl_module.instrument_next_step = self._due()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        if not self._due():
            return
        metrics = {}
        named = dict(pl_module.backbone.named_parameters())
        for block, prefixes in pl_module.backbone.block_names().items():
            grads = [p.grad for n, p in named.items() if p.grad is not None and n.startswith(tuple(prefixes))]
            if grads:
                metrics[M.grad_norm(block)] = _norm(grads)
        for alias, objective in pl_module.objectives.items():
            grads = [p.grad for p in objective.parameters() if p.grad is not None]
            if grads:
                metrics[M.grad_norm(f"head.{alias}")] = _norm(grads)
        self._log(trainer, metrics, self._step)
        if self.params.update_ratio:
            self._before = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        metrics: dict[str, float] = {}
        out = pl_module.last_output
        if out is not None and out.attn_max_logits is not None:
            metrics.update({M.attn_max_logit(i): float(v) for i, v in enumerate(out.attn_max_logits)})
        if out is not None and out.act_rms is not None:
            metrics.update({M.act_rms(i): float(v) for i, v in enumerate(out.act_rms)})
        pl_module.instrument_next_step = False
        if self._before is not None:
            after = [p.detach() for p in pl_module.parameters() if p.requires_grad]
            delta = _norm([a - b for a, b in zip(after, self._before)])
            metrics[M.UPDATE_RATIO_TOTAL] = delta / max(_norm(self._before), 1e-12)
            self._before = None
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and torch.isfinite(loss):
            z = self._update_spike_stats(float(loss))
            if self._step % trainer.log_every_n_steps == 0:
                metrics[M.LOSS_SPIKE_Z] = z
                metrics[M.LOSS_SPIKES] = float(self.spikes)
        if metrics:
            self._log(trainer, metrics, self._step)

    def _update_spike_stats(self, loss: float) -> float:
        """z-score of ``loss`` against the EMA so far, then fold it into the EMA."""
        self.seen += 1
        if self.loss_mean is None:
            self.loss_mean = loss
            return 0.0
        std = math.sqrt(max(self.loss_var, 1e-12))
        z = (loss - self.loss_mean) / std if self.seen > self.params.warmup_steps else 0.0
        if z > self.params.spike_z:
            self.spikes += 1
        d = self.params.ema_decay
        diff = loss - self.loss_mean
        self.loss_mean += (1 - d) * diff
        self.loss_var = d * (self.loss_var + (1 - d) * diff * diff)
        return z

    def state_dict(self) -> dict[str, Any]:
        return {"loss_mean": self.loss_mean, "loss_var": self.loss_var, "seen": self.seen, "spikes": self.spikes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)

