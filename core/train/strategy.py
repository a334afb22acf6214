"""Lightning strategies from ``trainer.strategy``: one process, DDP or FSDP, on one or many nodes.

Everything distributed is PyTorch's, through Lightning; this module only chooses and configures:

* ``ddp``: :class:`~lightning.pytorch.strategies.DDPStrategy` with ``find_unused_parameters``
  on. Every preset uses layer drop: a skipped layer has no gradient on that step, which plain
  DDP rejects ("Expected to have finished reduction..."). The *decision* is the same on every
  rank (seeded from seed, step and micro-batch: :meth:`PretrainModule.layer_drop_seed`), so the
  global batch trains one network, as in one process; ``find_unused_parameters`` lets DDP
  reduce the layers that did run. Its cost is one walk over the autograd graph per step, small
  next to the forward pass; masks hiding no frame or an objective without targets can leave
  parameters unused too, so it stays on whatever the backbone.
* ``fsdp``: :class:`~lightning.pytorch.strategies.FSDPStrategy`; each backbone layer
  (:meth:`Backbone.layer_classes`) is one wrapped, sharded unit and, with
  ``trainer.activation_checkpointing``, recomputed in backward; ``trainer.precision:
  bf16-mixed`` gives bf16 compute and gradient reduction with fp32 master weights, the batch
  left in its own dtypes (:func:`fsdp_mixed_precision`);
  checkpoints are sharded (one folder, a file per rank; torch distributed checkpoint, which
  reshards to another device count on load).
* ``auto``: one device -> no strategy; several -> ``ddp`` as above (Lightning's own choice
  would leave ``find_unused_parameters`` off).

The frozen teachers are not part of what either strategy wraps: the module holds them outside
its submodules (:class:`~mertlab.train.targets.FrozenTeachers`), so DDP registers and
broadcasts only the trained model's tensors, FSDP shards and casts only those, and the teachers
run in float32 whatever ``trainer.precision`` is.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from torch import Tensor
from torch.distributed.fsdp import MixedPrecision

from mertlab.contracts import Backbone
from mertlab.errors import MertlabError
from mertlab.experiment.spec import TrainerSpec


def world_size(trainer: TrainerSpec) -> int:
    """Processes of the run: ``devices x num_nodes``."""
    return trainer.devices * trainer.num_nodes


def ddp_strategy(trainer: TrainerSpec, backbone: Backbone) -> Strategy:
    return DDPStrategy(find_unused_parameters=True)


def fsdp_strategy(trainer: TrainerSpec, backbone: Backbone) -> Strategy:
    if trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available()):
        raise MertlabError(
            f"trainer.strategy: fsdp needs CUDA GPUs (Lightning's FSDP does not run on CPU; accelerator here: "
            f"{trainer.accelerator}); use ddp on CPU"
        )
    layers = backbone.layer_classes() or None
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if trainer.activation_checkpointing else None,
        state_dict_type="sharded",
        # The original parameters (not one flat tensor per unit): the stability callback
        # reads gradient norms per named block of the backbone.
        use_orig_params=True,
        mixed_precision=fsdp_mixed_precision(trainer.precision),
    )


#: The half dtype of each mixed ``trainer.precision`` (others compute in float32).
HALF_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def fsdp_mixed_precision(precision: str) -> MixedPrecision:
    """FSDP's mixed-precision policy for ``trainer.precision``.

    Lightning's policy (parameters, gradient reduction and buffers in the half dtype, autocast
    around the step; float32 for ``32``), except that the root module's inputs are left as
    they are: FSDP would otherwise cast every floating tensor of the batch to the compute dtype
    before the training step -- the audio the teachers read (so targets on the fly would no
    longer equal the fp32 target cache's) and each crop's float64 start in its file (which
    bf16 rounds by whole seconds). The backbone gets float32 audio, which autocast turns into
    the half dtype where it computes.
    """
    dtype = HALF_DTYPES.get(precision, torch.float32)
    return MixedPrecision(param_dtype=dtype, reduce_dtype=dtype, buffer_dtype=dtype, cast_root_forward_inputs=False)


STRATEGIES = {"ddp": ddp_strategy, "fsdp": fsdp_strategy}


def build_strategy(trainer: TrainerSpec, backbone: Backbone) -> Strategy | str:
    """The Lightning ``strategy`` argument for ``trainer.strategy`` (see the module doc)."""
    name = trainer.strategy
    if name == "auto":
        if world_size(trainer) == 1:
            return "auto"
        name = "ddp"
    return STRATEGIES[name](trainer, backbone)


def sharded(trainer: Any) -> bool:
    """Whether each rank holds only a shard of the parameters and gradients (FSDP)."""
    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy)


def global_norms(trainer: Any, groups: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    """The 2-norm of each group of tensors (e.g. gradients), over the whole model.

    Unsharded (one process, DDP), from this process's tensors. Under FSDP each rank holds a
    shard of every group: the squared norms are summed over the ranks in one all-reduce (in
    float64; every rank must call this, with the same groups). Groups without a tensor on any
    rank are left out.
    """

    def norm(tensors: list[Tensor]) -> Tensor:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))

    if not sharded(trainer):
        return {key: norm(tensors) for key, tensors in groups.items() if tensors}
    keys = list(groups)
    if not keys:
        return {}
    device = trainer.strategy.root_device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    squares = [norm(groups[k]).to(device, torch.float64) ** 2 if groups[k] else zero for k in keys]
    counts = torch.tensor([float(len(groups[k])) for k in keys], dtype=torch.float64, device=device)
    packed = trainer.strategy.reduce(torch.cat([torch.stack(squares), counts]), reduce_op="sum")
    return {k: packed[i].sqrt().float() for i, k in enumerate(keys) if packed[len(keys) + i] > 0}
