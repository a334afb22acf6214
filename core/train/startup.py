"""Start-up of a distributed run: rank 0 decides, every rank follows, and ranks prove they agree.

Which MLflow run to write (create, resume, replace a stale sweep child), which checkpoint to
resume and whether data must be prepared (the generated demo set and tasks, the target cache)
are decided by **rank 0 alone**; every other rank receives the decision and waits until the
preparation is done. How the ranks hear each other before Lightning's Trainer runs depends on
who started them (:func:`detect_launch`, using the same cluster environments as Lightning):

* **one process**: nothing to coordinate;
* **all processes at once** (``torchrun``, ``srun`` with one task per device, or ``RANK`` /
  ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set by hand): every process
  joins the ``torch.distributed`` process group first thing (``gloo`` on CPU; on GPUs ``nccl``
  bound to the local device, as Lightning would), and Lightning's strategy later finds the
  group initialised and uses it. The start-up messages go through a second, ``gloo`` group with
  a long timeout (:data:`STARTUP_TIMEOUT`): rank 0 may build a target cache for a long time
  while the others wait for it;
* **Lightning's own launcher** (one command on one node, ``trainer.devices > 1``): rank 0 runs
  the whole start-up alone; Lightning then starts the other ranks as copies of the command, and
  they find rank 0's decisions in the environment (:data:`STARTUP_ENV`), follow them and skip
  what rank 0 already did. Several nodes need a launcher that starts every process (the other
  nodes' first processes could not hear rank 0 before training): refused with one line.

Every step that can fail on one rank only (a file missing on a node, a checkpoint that does
not load there) is :meth:`Startup.each`: its error is raised on every rank, naming the rank,
instead of leaving the others waiting. Finally :class:`StartAgreement` compares, before the
first step, each rank's run id, checkpoint, step and :func:`~mertlab.train.agreement.state_digest`
of the state it loaded: a difference is one error on every rank.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from mertlab.errors import MertlabError
from mertlab.experiment.spec import TrainerSpec
from mertlab.train.agreement import all_ranks

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Environment variable in which rank 0 hands its decisions to the ranks Lightning's launcher starts.
STARTUP_ENV = "MERTLAB_STARTUP"
#: How long the other ranks wait for rank 0's decisions and data preparation (a target cache
#: of a large data set takes long; build it beforehand with ``mertlab targets build`` if longer).
STARTUP_TIMEOUT = timedelta(hours=24)
#: Timeout of the training process group (Lightning's default for its strategies).
TRAINING_TIMEOUT = timedelta(minutes=30)


# --------------------------------------------------------------------------- who started us
@dataclass(frozen=True)
class Launch:
    """This process's place in the run, as Lightning will see it."""

    rank: int
    world_size: int
    #: started together with all others by an outside launcher (torchrun, srun, ...)
    external: bool
    #: the cluster environment Lightning uses (handed to the Trainer); None in one process
    environment: ClusterEnvironment | None = None

    @property
    def lead(self) -> bool:
        return self.rank == 0


def cluster_environment() -> ClusterEnvironment:
    """The cluster environment Lightning's Trainer would choose (the same order of detection)."""
    for kind in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if kind.detect():
            return kind()
    return LightningEnvironment()


def detect_launch(trainer: TrainerSpec) -> Launch:
    """Rank, world size and launcher of this process for ``trainer`` (``devices x num_nodes``
    processes); a launcher that disagrees with the spec is one clear error."""
    world = trainer.devices * trainer.num_nodes
    if world == 1:
        return Launch(0, 1, False)
    env = cluster_environment()
    try:
        env.validate_settings(num_devices=trainer.devices, num_nodes=trainer.num_nodes)
    except ValueError as exc:
        raise MertlabError(f"trainer: {exc}") from None
    env.set_world_size(world)
    env.set_global_rank(env.node_rank() * trainer.devices + env.local_rank())
    rank, launched = env.global_rank(), env.world_size()
    told_world = os.environ.get("WORLD_SIZE", "")
    if told_world.isdigit():
        launched = int(told_world)
    if launched != world:
        raise MertlabError(
            f"trainer.devices x trainer.num_nodes = {world} processes, but the launcher started {launched}; "
            "make them agree"
        )
    told = os.environ.get("RANK", "")
    if told.isdigit() and int(told) != rank:
        raise MertlabError(
            f"the launcher set RANK={told}, but NODE_RANK x trainer.devices + LOCAL_RANK is {rank}; "
            "set NODE_RANK (or GROUP_RANK) on every node"
        )
    external = env.creates_processes_externally
    if not external and trainer.num_nodes > 1:
        raise MertlabError(
            f"trainer.num_nodes: {trainer.num_nodes} nodes need a launcher that starts every process at once "
            "(torchrun, or srun with one task per device); see docs/scaling.md"
        )
    if external and isinstance(env, LightningEnvironment) and "MASTER_PORT" not in os.environ:
        raise MertlabError("MASTER_PORT: set it (and MASTER_ADDR) for every process the launcher starts")
    return Launch(rank, world, external, env)


def _uses_cuda(trainer: TrainerSpec) -> bool:
    return trainer.accelerator in ("cuda", "gpu") or (trainer.accelerator == "auto" and torch.cuda.is_available())


_STARTUP_GROUP: Any = None


def join_process_group(launch: Launch, trainer: TrainerSpec) -> Any:
    """Join the training process group now (processes started together) and return the start-up
    group. Lightning's strategy finds the group initialised and uses it as it is."""
    global _STARTUP_GROUP
    dist = torch.distributed
    if not dist.is_initialized():
        env = launch.environment
        assert env is not None
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        if _uses_cuda(trainer):  # as Lightning's DDP/FSDP strategies initialise it
            device = torch.device("cuda", env.local_rank())
            torch.cuda.set_device(device)
            dist.init_process_group(
                "nccl", rank=launch.rank, world_size=launch.world_size, timeout=TRAINING_TIMEOUT, device_id=device
            )
        else:
            dist.init_process_group("gloo", rank=launch.rank, world_size=launch.world_size, timeout=TRAINING_TIMEOUT)
        atexit.register(_leave_process_group)
        _STARTUP_GROUP = None
    if _STARTUP_GROUP is None:
        _STARTUP_GROUP = dist.new_group(backend="gloo", timeout=STARTUP_TIMEOUT)
    return _STARTUP_GROUP


def _leave_process_group() -> None:
    """At exit, as Lightning does for the groups it creates (torch warns about a group left open)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- deciding together
@dataclass
class Startup:
    """The start-up collectives of one process (see the module docstring)."""

    launch: Launch
    #: the start-up process group (processes started together), else None
    group: Any = None
    #: rank 0's decisions, in a rank that Lightning's launcher started
    published: dict[str, Any] | None = None
    #: rank 0 under Lightning's launcher: the decisions to hand to the ranks it will start
    decisions: dict[str, Any] = field(default_factory=dict)

    @property
    def lead(self) -> bool:
        return self.launch.lead

    def decide(self, what: str, choose: Callable[[], T]) -> T:
        """Rank 0 runs ``choose``; every rank returns its result (a JSON value), or raises its error."""
        if self.published is not None:
            if what not in self.published:
                raise MertlabError(f"start-up: rank 0 handed over no decision on the {what}")
            return self.published[what]
        if self.group is None:
            value = choose()
            if self.launch.world_size > 1:
                self.decisions[what] = json.loads(json.dumps(value))
            return value
        return self._together(what, choose, lead_only=True, share=True)

    def lead_only(self, what: str, action: Callable[[], Any]) -> None:
        """Rank 0 runs ``action`` (data preparation) while the others wait; its error is every rank's."""
        if self.published is not None:
            return  # done by rank 0 before this process was started
        if self.group is None:
            action()
            return
        self._together(what, action, lead_only=True, share=False)

    def each(self, what: str, action: Callable[[], T]) -> T:
        """Every rank runs ``action``; an error on any rank is raised on every rank."""
        if self.group is None:
            return action()
        return self._together(what, action, lead_only=False, share=False)

    def _together(self, what: str, action: Callable[[], Any], lead_only: bool, share: bool) -> Any:
        """Run ``action`` (on rank 0 only, or everywhere), then exchange the errors -- and with
        ``share`` rank 0's result -- in one collective; returns rank 0's result, or this rank's."""
        error: BaseException | None = None
        message, value = None, None
        if self.lead or not lead_only:
            try:
                value = action()
            except Exception as exc:  # noqa: BLE001 - shared with every rank, then raised here as it is
                error = exc
                message = str(exc) if isinstance(exc, MertlabError) else f"{type(exc).__name__}: {exc}"
        found = all_ranks((message, value if share else None), self.group)
        if error is not None:
            raise error
        failed = [(rank, problem) for rank, (problem, _) in enumerate(found) if problem is not None]
        if failed:
            rank, problem = failed[0]
            raise MertlabError(f"{what} failed on rank {rank}: {problem}")
        return found[0][1] if share else value

    @contextlib.contextmanager
    def handed_to_launched_ranks(self) -> Iterator[None]:
        """While Lightning's launcher starts the other ranks (in ``fit``): rank 0's decisions in
        :data:`STARTUP_ENV` of the environment they inherit."""
        if not (self.lead and self.group is None and self.launch.world_size > 1):
            yield
            return
        os.environ[STARTUP_ENV] = json.dumps({"pid": os.getpid(), "decisions": self.decisions})
        try:
            yield
        finally:
            os.environ.pop(STARTUP_ENV, None)


def handed_over_decisions() -> dict[str, Any] | None:
    """Rank 0's decisions when this process was started by Lightning's launcher from rank 0."""
    text = os.environ.get(STARTUP_ENV)
    if not text:
        return None
    data = json.loads(text)
    return data["decisions"] if data.get("pid") == os.getppid() else None


def join_startup(trainer: TrainerSpec) -> Startup:
    """This process's :class:`Startup` for a run of ``trainer`` (joins the process group when
    all processes were started together)."""
    launch = detect_launch(trainer)
    if launch.world_size == 1:
        return Startup(launch)
    published = handed_over_decisions() if not launch.lead else None
    if published is not None:
        return Startup(launch, published=published)
    if launch.external:
        return Startup(launch, group=join_process_group(launch, trainer))
    return Startup(launch)


# --------------------------------------------------------------------------- the proof
@dataclass(frozen=True)
class StartState:
    """What one rank starts training from."""

    run_id: str
    checkpoint: str | None  # None: a fresh start
    step: int
    digest: str | None  # state_digest of the loaded checkpoint

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"run {self.run_id}, a fresh start"
        return f"run {self.run_id}, step {self.step} of {self.checkpoint} (state sha256 {str(self.digest)[:12]})"


def check_agreement(states: list[StartState]) -> None:
    """One error naming the first rank whose start differs from rank 0's."""
    for rank, state in enumerate(states[1:], 1):
        if state != states[0]:
            raise MertlabError(
                f"ranks disagree before the first step: rank {rank} has {state.describe()}, rank 0 "
                f"{states[0].describe()}; every rank must read the checkpoint rank 0 chose (keep "
                "trainer.output_dir on a file system all nodes share)"
            )


class StartAgreement(L.Callback):
    """Before the checkpoint is restored and the first step runs, every rank's
    :class:`StartState` is compared with rank 0's; a difference is the same error on every rank."""

    def __init__(self, state: StartState, group: Any = None) -> None:
        self.state = state
        self.group = group

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            check_agreement(all_ranks(self.state, self.group))
