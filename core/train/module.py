"""The pre-training LightningModule: assembled from a spec, it only talks to the contracts.

One step, top to bottom (``training_step``):

1. the target source gives each teacher's targets of the *clean* audio, aligned to the
   backbone's frames: the teachers run on the crops, or the crops' frames are read from the
   target cache (``data.target_cache``; see :mod:`mertlab.train.targets`);
2. mixup perturbs the *student* input only;
3. the masking picks frames to hide; the backbone sees them as the mask embedding;
4. each objective scores the backbone output against its teacher's targets;
   ``loss/total = sum(weight * loss) (+ feature penalty)``;
5. non-finite losses or gradients skip the step (counted in ``stability/*``).

Stability instrumentation beyond that (per-block gradient norms, attention logits, update
ratios, loss spikes) lives in the ``stability`` callback.
"""
from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mertlab import metric_names as M
from mertlab.augment import mixup
from mertlab.contracts import BackboneOutput, Targets
from mertlab.data.dataset import AudioBatch
from mertlab.seeding import derive_seed, generator
from mertlab.spec import ExperimentSpec
from mertlab.train.schedule import lr_factor
from mertlab.train.targets import target_source


def code_perplexity(codes: Tensor, vocab_size: int) -> Tensor:
    """exp(entropy) of the code histogram: how many codes are effectively used."""
    counts = torch.bincount(codes.flatten(), minlength=vocab_size).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp()


class PretrainModule(L.LightningModule):
    """Backbone + teachers + weighted objectives + masking, built from a resolved spec."""

    def __init__(self, spec: ExperimentSpec, registry: Any = None) -> None:
        super().__init__()
        if registry is None:
            from mertlab.registry import get_registry

            registry = get_registry()
        self.spec = spec
        self.backbone = registry.build("backbone", spec.backbone.name, spec.backbone.params)
        self.teachers = nn.ModuleDict(
            {alias: registry.build("teacher", t.name, t.params) for alias, t in spec.teachers.items()}
        )
        for teacher in self.teachers.values():
            teacher.requires_grad_(False)
        # Teachers stay modules of the model either way (their info types the objectives; the
        # checkpoint layout does not depend on where targets come from).
        self.target_source = target_source(spec.data.target_cache, self.teachers, self.backbone.sample_rate)
        self.objectives = nn.ModuleDict({
            alias: registry.build(
                "objective", o.name, o.params,
                hidden_dim=self.backbone.hidden_dim,
                num_layers=self.backbone.num_layers,
                target_info=self.teachers[o.teacher].info,
            )
            for alias, o in spec.objectives.items()
        })
        self.masking = registry.build("masking", spec.masking.name, spec.masking.params)
        # Stability bookkeeping, saved in checkpoints so resumed runs keep counting.
        self.nonfinite_steps = 0
        self.skipped_steps = 0
        self.instrument_next_step = False  # set by the stability callback
        self.last_output: BackboneOutput | None = None
        self._last_step_start: float | None = None

    # ------------------------------------------------------------------ plumbing
    def train(self, mode: bool = True) -> "PretrainModule":
        super().train(mode)
        self.teachers.eval()  # teachers are frozen feature extractors, never in train mode
        return self

    def configure_optimizers(self):
        optim = self.spec.optim
        params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teachers.")]
        cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
        max_steps = self.spec.trainer.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mertlab_spec"] = self.spec.model_dump(mode="json")
        checkpoint["mertlab_stability"] = {"nonfinite_steps": self.nonfinite_steps, "skipped_steps": self.skipped_steps}
        logger = self.logger
        if logger is not None and getattr(logger, "run_id", None):
            checkpoint["mlflow_run_id"] = logger.run_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("mertlab_stability", {})
        self.nonfinite_steps = counters.get("nonfinite_steps", 0)
        self.skipped_steps = counters.get("skipped_steps", 0)

    # ------------------------------------------------------------------ the step
    def frame_padding(self, wav: Tensor, lengths: Tensor) -> tuple[int, Tensor, Tensor]:
        """Frames per clip and the ``[B, T]`` padding mask for a batch."""
        num_frames = self.backbone.num_frames(wav.shape[1])
        frame_lengths = self.backbone.frame_lengths(lengths).clamp(max=num_frames)
        steps = torch.arange(num_frames, device=wav.device)
        return num_frames, frame_lengths, steps[None, :] >= frame_lengths[:, None]

    @torch.no_grad()
    def compute_targets(self, batch: AudioBatch, num_frames: int, frame_lengths: Tensor) -> dict[str, Targets]:
        """Each teacher's targets of the clean audio, aligned to the backbone's frames."""
        return self.target_source.targets(batch, self.backbone.frame_rate, num_frames, frame_lengths)

    def distributed_position(self) -> tuple[int, int, int]:
        """``(rank, world size, gradient-accumulation steps)``; ``(0, 1, 1)`` outside a Trainer."""
        trainer = self._trainer
        if trainer is None:
            return 0, 1, 1
        return trainer.global_rank, trainer.world_size, trainer.accumulate_grad_batches

    def frame_masks(self, padding: Tensor, stage: str, batch_idx: int) -> Tensor:
        """Masks of a batch, one random stream per clip.

        Training clip ``i`` on rank ``r`` draws from (seed, step, micro-batch, ``i * world + r``):
        masks differ across micro-batches of one step and across ranks, and ``i * world + r`` is
        the clip's position in the global batch under the interleaved
        :class:`~torch.utils.data.DistributedSampler` mertlab always uses -- so N ranks draw
        exactly the masks one process would for the same global batch. Validation clips use
        (seed, batch index, position): the same masks at every validation.
        """
        rank, world, accumulation = self.distributed_position()
        if stage == "train":
            stream, key = "mask", (self.spec.seed, self.global_step, batch_idx % accumulation)
        else:
            stream, key = "val_mask", (self.spec.seed, batch_idx)
        rows = [self.masking(padding[i:i + 1], generator(stream, *key, i * world + rank)) for i in range(padding.shape[0])]
        return torch.cat(rows) if rows else padding.clone()

    def mixup_generator(self, batch_idx: int) -> torch.Generator:
        """Mixup pairs are drawn within the local batch: seeded by (seed, step, micro-batch, rank)."""
        rank, _, accumulation = self.distributed_position()
        return generator("mixup", self.spec.seed, self.global_step, batch_idx % accumulation, rank)

    def layer_drop_seed(self, batch_idx: int) -> int:
        """Seed of the backbone's structural randomness (layer drop): (seed, step, micro-batch),
        deliberately *not* the rank, so every rank skips the same layers -- the global batch
        then sees one network, as it would in one process (see :meth:`Backbone.set_step_seed`)."""
        _, _, accumulation = self.distributed_position()
        return derive_seed("layer_drop", self.spec.seed, self.global_step, batch_idx % accumulation)

    def shared_step(self, batch: AudioBatch, batch_idx: int, stage: str) -> tuple[Tensor, dict[str, Tensor], dict[str, Targets]]:
        wav, lengths = batch.wav, batch.lengths
        num_frames, frame_lengths, padding = self.frame_padding(wav, lengths)
        targets = self.compute_targets(batch, num_frames, frame_lengths)
        student = wav
        mix = self.spec.augment.mixup
        if stage == "train" and mix.probability > 0:
            student = mixup(wav, lengths, mix.probability, mix.max_gain, self.mixup_generator(batch_idx))
        if stage == "train":
            self.backbone.set_step_seed(self.layer_drop_seed(batch_idx))
        mask = self.frame_masks(padding.cpu(), stage, batch_idx).to(wav.device) & ~padding
        out = self.backbone(student, lengths, mask, instrument=stage == "train" and self.instrument_next_step)
        self.last_output = out if stage == "train" else None

        total = wav.new_zeros(())
        logs: dict[str, Tensor] = {}
        for alias, objective in self.objectives.items():
            spec = self.spec.objectives[alias]
            result = objective(out, targets[spec.teacher], mask)
            total = total + spec.weight * result.loss
            logs[M.loss(alias)] = result.loss.detach()
            for key, value in result.metrics.items():
                logs[M.objective_metric(alias, key)] = value.detach()
        if self.spec.feature_penalty > 0 and out.extractor_features is not None:
            penalty = out.extractor_features.float().pow(2).mean()
            total = total + self.spec.feature_penalty * penalty
            logs[M.FEATURE_PENALTY] = penalty.detach()
        logs[M.LOSS_TOTAL] = total.detach()
        return total, logs, targets

    def training_step(self, batch: AudioBatch, batch_idx: int) -> Tensor | None:
        loss, logs, targets = self.shared_step(batch, batch_idx, "train")
        self.log_throughput(batch)
        logs.update(self.teacher_statistics(targets))  # cheap histograms; Lightning throttles logging
        logs[M.LR] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"])
        if not torch.isfinite(loss):
            self.nonfinite_steps += 1
            self.skipped_steps += 1
            logs = {k: v for k, v in logs.items() if torch.isfinite(v).all()}
            loss = None  # Lightning skips backward and the optimizer step
        logs[M.NONFINITE_STEPS] = torch.tensor(float(self.nonfinite_steps))
        logs[M.SKIPPED_STEPS] = torch.tensor(float(self.skipped_steps))
        total = logs.pop(M.LOSS_TOTAL, None)
        if total is not None:
            # The mean over ranks (one all-reduce; a no-op in one process): the loss of the global batch.
            self.log(M.LOSS_TOTAL, total, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch), sync_dist=True)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=len(batch))
        return loss

    def validation_step(self, batch: AudioBatch, batch_idx: int) -> None:
        _, logs, _ = self.shared_step(batch, batch_idx, "val")
        # Averaged over ranks at the end of validation, so every rank's checkpoint callback sees
        # the same (global) val/loss/total when it picks the best checkpoint.
        self.log_dict({M.val(k): v for k, v in logs.items()}, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the global gradient norm; under FSDP through the sharded module's own
        ``clip_grad_norm_`` (the norm over every rank's shard), which Lightning's FSDP precision
        plugin leaves to the module."""
        model = self.trainer.model
        if gradient_clip_val and hasattr(model, "clip_grad_norm_"):
            model.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure the global gradient norm (before clipping); drop non-finite gradients."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        if not torch.isfinite(norm):
            self.nonfinite_steps += 1
            self.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)  # Adam skips parameters without gradients
            return
        self.log(M.GRAD_NORM_TOTAL, norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ metrics
    def teacher_statistics(self, targets: dict[str, Targets]) -> dict[str, Tensor]:
        """Codebook usage (perplexity) of each discrete teacher's targets on valid frames."""
        logs = {}
        for alias, t in targets.items():
            if t.info.kind != "discrete":
                continue
            valid = ~t.padding_mask
            for cb, vocab in enumerate(t.info.vocab_sizes):
                logs[M.code_perplexity(alias, cb)] = code_perplexity(t.values[..., cb][valid], vocab)
        return logs

    def log_throughput(self, batch: AudioBatch) -> None:
        """Audio seconds and clips per wall-clock second, measured step start to step start,
        summed over ranks (each rank measures its own share of the global batch)."""
        now = time.perf_counter()
        if self._last_step_start is not None:
            elapsed = max(now - self._last_step_start, 1e-9)
            seconds = float(batch.lengths.sum()) / self.backbone.sample_rate
            self.log_dict({
                M.AUDIO_SECONDS_PER_S: seconds / elapsed,
                M.SAMPLES_PER_S: len(batch) / elapsed,
            }, on_step=True, on_epoch=False, sync_dist=True, reduce_fx="sum")
        self._last_step_start = now
