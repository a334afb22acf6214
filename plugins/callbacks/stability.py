"""Training-stability monitoring for scale-up studies (the metrics MERT-330M needed).

Logs, every ``every_n_steps`` optimizer steps: per-block gradient norms (``grad_norm/<block>``,
blocks from ``Backbone.block_names()`` plus one per objective head), per-layer max attention
logits and activation RMS (``attn/max_logit/layer<i>``, ``act_rms/layer<i>``) and the relative
update size (``update_ratio/total`` = ||w_after - w_before|| / ||w_before||). Every logging
step: the loss-spike z-score against an exponential moving average (``stability/loss_spike_z``)
and the running count of spikes (``stability/loss_spikes``).

What happens on a spike is ``spike_action``: ``log`` (count it), ``skip`` (also drop the step's
update, as for a non-finite step) or ``rollback`` (reload the weights and optimizer state of the
newest checkpoint, multiply the learning rate by ``rollback_lr_scale`` and continue; the step
counter, data order and schedule go on). Under DDP every rank takes the same action at the
same step, and a rollback happens on all ranks or none (:mod:`mertlab.train.rollback`). Each
action is counted (``stability/spike_skips``, ``stability/rollbacks``) and described in the
run tag ``mertlab.stability.last_action``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from mertlab.experiment import metric_names as M
from mertlab.plugins.callbacks.stability_plugin import StabilityParams
from mertlab.train.agreement import any_rank
from mertlab.train.rollback import rollback_to_last_checkpoint
from mertlab.train.strategy import global_norms
from mertlab.train.tracking_logger import set_run_tag


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
        self.spike_skips = 0
        self.rollbacks = 0
        self._z: float | None = None
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
        self._check_spike(trainer, pl_module, optimizer)
        if not self._due() or pl_module.last_loss is None:  # a skipped step: no gradient to measure
            return
        groups = {}
        named = dict(pl_module.backbone.named_parameters())
        for block, prefixes in pl_module.backbone.block_names().items():
            groups[M.grad_norm(block)] = [
                p.grad for n, p in named.items() if p.grad is not None and n.startswith(tuple(prefixes))
            ]
        for alias, objective in pl_module.objectives.items():
            groups[M.grad_norm(f"head.{alias}")] = [p.grad for p in objective.parameters() if p.grad is not None]
        # Under FSDP each rank holds a shard of the gradients: the norms are summed over ranks.
        metrics = {key: float(norm) for key, norm in global_norms(trainer, groups).items()}
        self._log(trainer, metrics, self._step)
        if self.params.update_ratio:
            self._before = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]

    def _check_spike(self, trainer: L.Trainer, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        """Score this step's finite loss (``pl_module.last_loss``) and act on a spike before the update."""
        self._z = None
        if pl_module.last_loss is None:  # non-finite: the module skips it and counts it
            return
        self._z = self._update_spike_stats(pl_module.last_loss)
        action = self.params.spike_action
        spike = self._z > self.params.spike_z
        if action != "log":  # acted on by every rank or by none (the z-score is of the mean loss over ranks)
            spike = any_rank(trainer, spike)
        if not spike:
            return
        what = f"step {self._step}: loss spike z={self._z:.1f}"
        if action == "skip":
            pl_module.skip_update(optimizer)
            self.spike_skips += 1
            self._log(trainer, {M.SPIKE_SKIPS: float(self.spike_skips)}, self._step)
            what += ", update skipped"
        elif action == "rollback":
            outcome = rollback_to_last_checkpoint(trainer, pl_module, optimizer, self.params.rollback_lr_scale)
            if outcome.rolled_back:
                self.rollbacks += 1
                self._log(trainer, {M.ROLLBACKS: float(self.rollbacks)}, self._step)
            what += f", {outcome.message}"
        else:
            what += ", logged"
        set_run_tag(trainer, "mertlab.stability.last_action", what)

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
            norms = global_norms(
                trainer, {"delta": [a - b for a, b in zip(after, self._before, strict=True)], "before": self._before}
            )
            if "delta" in norms:
                metrics[M.UPDATE_RATIO_TOTAL] = float(norms["delta"]) / max(float(norms["before"]), 1e-12)
            self._before = None
        if self._step % trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]  # set by Trainer.__init__
            # a non-finite step has no z-score: NaN, never the previous step's value
            metrics[M.LOSS_SPIKE_Z] = self._z if self._z is not None else float("nan")
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
        return {
            "loss_mean": self.loss_mean,
            "loss_var": self.loss_var,
            "seen": self.seen,
            "spikes": self.spikes,
            "spike_skips": self.spike_skips,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
