"""``mertlab sweep``: the variants of one spec as MLflow child runs under one parent run.

A spec's ``sweep:`` block (:class:`mertlab.experiment.spec.SweepSpec`) expands into variants, each a list
of dotted overrides with a readable, deterministic name (``lr=0.001,preset=small`` for grid
points, the given name for named variants, ``<variant>,<grid point>`` when both are used).

* :func:`plan_sweep` validates *every* variant before anything starts; an invalid one fails
  with ``variant '<name>': <field>: <message>``.
* The parent run (tag ``mertlab.sweep=<spec name>``) is found again by that tag, so re-running
  a sweep reuses it; it holds the base ``spec.yaml``, ``sweep.yaml`` (the variants, in order)
  and, after ``mertlab compare``, the comparison table and plots.
* Each variant is one child run (``mlflow.parentRunId``, tag ``variant``, its overrides as
  params ``override.<key>``), trained by :func:`run_child`. The same function serves
  ``mertlab train SPEC -o ... --parent-run-id ID --variant NAME`` -- the command
  ``mertlab sweep --dry-run`` prints for a cluster scheduler -- so both paths behave alike:
  a finished child is skipped, an unfinished one resumes from its ``last.ckpt`` (or starts
  over when it has none), and a finished child whose spec has since changed is an error
  rather than a silently stale result. A child that another process is training (its run
  lock is held) is refused. Under ``srun``/``torchrun`` rank 0 alone takes these decisions
  and the other ranks follow them (:mod:`mertlab.train.startup`).
"""

from __future__ import annotations

import itertools
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mertlab.errors import MertlabError, SpecError
from mertlab.experiment.phase_times import log_phase_times
from mertlab.experiment.spec import ExperimentSpec, SweepSpec, dump_spec, load_spec, spec_fingerprint
from mertlab.experiment.tracking import ensure_experiment, resolve_tracking_uri, run_tags
from mertlab.plugin_system.registry import get_registry
from mertlab.probe.experiment import probe_spec_tasks
from mertlab.toolkit.checkpoint import is_sharded_checkpoint
from mertlab.toolkit.run_lock import acquire_run_lock
from mertlab.toolkit.timing import PhaseTimer

log = logging.getLogger(__name__)

SWEEP_TAG = "mertlab.sweep"  # parent and children: the sweep's (spec's) name
VARIANT_TAG = "variant"  # children: the variant name
SPEC_SHA_TAG = "mertlab.spec_sha"  # children: fingerprint of the resolved child spec
INDEX_TAG = "mertlab.sweep.index"  # children: position of the variant in the sweep
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
OVERRIDE_PARAM_PREFIX = "override."
SWEEP_ARTIFACT = "sweep.yaml"


# --------------------------------------------------------------------------- variants
class _OneLineDumper(yaml.SafeDumper):
    """Safe YAML whose strings holding a line break are double-quoted: escaped, never a line break."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if any(c in data for c in "\n\r\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_OneLineDumper.add_representer(str, _represent_str)


def format_value(value: Any) -> str:
    """A value as one line of YAML that parses back to it (``-o key=<this>``, variant names)."""
    text = yaml.dump(value, Dumper=_OneLineDumper, default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") else text


def parse_override(override: str) -> tuple[str, str]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", "1e-3")`` (the value as written)."""
    key, _, raw = override.partition("=")
    return key.strip(), raw.strip()


@dataclass(frozen=True)
class Variant:
    """One child of a sweep: its name and its ``(dotted key, value)`` overrides."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def args(self) -> list[str]:
        """The overrides as ``key=value`` strings for :func:`mertlab.experiment.spec.load_spec` / ``-o``."""
        return [f"{key}={format_value(value)}" for key, value in self.overrides]


def short_keys(keys: list[str]) -> dict[str, str]:
    """Shortest distinct dotted suffix of each key: ``optim.lr`` -> ``lr``; two keys ending in
    ``.lr`` keep one more segment each."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != key and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        out[key] = suffix
    return out


def expand(sweep: SweepSpec) -> list[Variant]:
    """Every variant of ``sweep``, in a fixed order: named variants in file order, each crossed
    with the grid points (grid keys in file order, the last varying fastest)."""
    keys = list(sweep.grid)
    short = short_keys(keys)
    points = (
        [
            (
                ",".join(f"{short[k]}={format_value(v)}" for k, v in zip(keys, values, strict=True)),
                tuple(zip(keys, values, strict=True)),
            )
            for values in itertools.product(*(sweep.grid[k] for k in keys))
        ]
        if keys
        else [("", ())]
    )
    named = list(sweep.variants.items()) or [("", {})]
    variants = []
    for (vname, overrides), (gname, gpoint) in itertools.product(named, points):
        name = ",".join(n for n in (vname, gname) if n)
        variants.append(Variant(name, (*overrides.items(), *gpoint)))
    return variants


# --------------------------------------------------------------------------- planning
def load_child_spec(
    spec_path: str | Path, overrides: list[str] | tuple[str, ...], registry: Any = None
) -> ExperimentSpec:
    """The spec of one child: the YAML, then ``overrides``, without the ``sweep`` block."""
    return load_spec(spec_path, [*overrides, "sweep=null"], registry=registry)


def spec_sha(spec: ExperimentSpec) -> str:
    """Fingerprint of what a run trains (:func:`~mertlab.experiment.spec.spec_fingerprint`)."""
    return spec_fingerprint(spec.model_dump(mode="json"))


@dataclass
class ChildPlan:
    variant: Variant
    overrides: list[str]  # the sweep command's overrides, then the variant's
    spec: ExperimentSpec


@dataclass
class SweepPlan:
    spec_path: str
    overrides: list[str]
    spec: ExperimentSpec  # the base spec, sweep block included
    children: list[ChildPlan]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tracking_uri(self) -> str:
        return resolve_tracking_uri(self.spec)

    @property
    def experiment(self) -> str:
        return self.spec.tracking.experiment or self.spec.name


def plan_sweep(spec_path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Any = None) -> SweepPlan:
    """Load the spec and validate every variant; all problems of all variants in one error."""
    base = load_spec(spec_path, overrides, registry=registry)
    if base.sweep is None:
        raise SpecError(
            [("sweep", "this spec has no `sweep:` block (add `grid:` and/or `variants:`)")], source=str(spec_path)
        )
    # overrides of the sweep block itself only shape the expansion; children do not repeat them
    shared = [o for o in overrides if not parse_override(o)[0].split(".")[0] == "sweep"]
    children, problems = [], []
    for variant in expand(base.sweep):
        child_overrides = [*shared, *variant.args()]
        try:
            children.append(ChildPlan(variant, child_overrides, load_child_spec(spec_path, child_overrides, registry)))
        except SpecError as exc:
            problems += [
                (f"variant '{variant.name}': {path}" if path else f"variant '{variant.name}'", msg)
                for path, msg in exc.problems
            ]
    first_of: dict[str, str] = {}
    for child in children:
        same = first_of.setdefault(spec_sha(child.spec), child.variant.name)
        if same != child.variant.name:
            problems.append(
                (
                    f"variant '{child.variant.name}'",
                    f"trains exactly the spec of variant '{same}' (their overrides give the same values); "
                    "drop one or make them differ",
                )
            )
    if problems:
        raise SpecError(problems, source=str(spec_path))
    return SweepPlan(str(spec_path), list(overrides), base, children)


# --------------------------------------------------------------------------- MLflow runs
def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def experiment_id(client: Any, name: str, create: bool = False) -> str | None:
    if create:
        return ensure_experiment(client, name)
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def find_parent(client: Any, experiment: str, sweep_name: str) -> Any | None:
    """The newest active parent run of sweep ``sweep_name`` in ``experiment``, if any."""
    exp_id = experiment_id(client, experiment)
    if exp_id is None:
        return None
    return next(iter(sweep_parents(client, exp_id, sweep_name)), None)


def sweep_parents(client: Any, exp_id: str, sweep_name: str | None = None) -> list[Any]:
    """Active sweep parent runs in an experiment (of one sweep, or of any), newest first."""
    # quotes cannot be escaped in MLflow filters: such names are matched here instead
    by_name = sweep_name is not None and "'" not in sweep_name
    query = f"tags.`{SWEEP_TAG}` = '{sweep_name}'" if by_name else ""
    runs = client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=50000)
    return [
        r
        for r in runs
        if PARENT_TAG not in r.data.tags
        and SWEEP_TAG in r.data.tags
        and (sweep_name is None or r.data.tags[SWEEP_TAG] == sweep_name)
    ]


def children_of(client: Any, parent: Any) -> list[Any]:
    """Active child runs of ``parent`` (any status)."""
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'", max_results=50000
    )


def find_child(client: Any, parent: Any, variant: str) -> Any | None:
    """The child of ``parent`` for ``variant``: a finished one if there is one, else the newest."""
    runs = [r for r in children_of(client, parent) if r.data.tags.get(VARIANT_TAG) == variant]
    runs.sort(key=lambda r: (r.info.status == "FINISHED", r.info.start_time or 0), reverse=True)
    return runs[0] if runs else None


def ensure_parent(client: Any, plan: SweepPlan, registry: Any) -> Any:
    """Find or create the sweep's parent run, and record the base spec and variant list on it."""
    parent = find_parent(client, plan.experiment, plan.name)
    if parent is None:
        tags = {
            **run_tags(plan.spec, registry),
            SWEEP_TAG: plan.name,
            "mlflow.note.content": (
                f"Sweep of {plan.spec_path} ({len(plan.children)} variants). {plan.spec.description}"
            ).strip(),
        }
        exp_id = experiment_id(client, plan.experiment, create=True)
        parent = client.create_run(exp_id, run_name=plan.spec.tracking.run_name or plan.name, tags=tags)
    run_id = parent.info.run_id
    client.set_tag(run_id, "mertlab.sweep.size", str(len(plan.children)))
    client.log_text(run_id, dump_spec(plan.spec), "spec.yaml")
    listing = {
        "spec": plan.spec_path,
        "overrides": plan.overrides,
        "variants": [
            {"name": c.variant.name, "overrides": dict(parse_override(a) for a in c.variant.args())}
            for c in plan.children
        ],
    }
    client.log_text(run_id, yaml.safe_dump(listing, sort_keys=False), SWEEP_ARTIFACT)
    return client.get_run(run_id)


# --------------------------------------------------------------------------- children
@dataclass
class ChildOutcome:
    variant: str
    run_id: str | None
    status: str  # trained | resumed | skipped | failed
    message: str = ""
    lead: bool = True  # False in the other ranks of a distributed child


def run_child(
    spec_path: str | Path,
    overrides: list[str] | tuple[str, ...],
    parent_run_id: str,
    variant: str,
    registry: Any = None,
    progress: bool = True,
    timer: PhaseTimer | None = None,
) -> ChildOutcome:
    """Train one sweep child under ``parent_run_id`` (skip it if finished, resume it if not).

    Distributed (``srun``/``torchrun`` start every rank at once), rank 0 alone finds, creates or
    replaces the child run and picks its checkpoint; the other ranks follow that decision
    (:mod:`mertlab.train.startup`). A child another process is training (its run lock is held:
    :mod:`mertlab.toolkit.run_lock`) is refused, never resumed or replaced underneath it.
    Raises on failure, after marking the child run FAILED. The child's per-phase times
    (``timer``, training and probes) are logged to its run at the end (:mod:`.phase_times`).
    """
    from mertlab.train.run import run_folder, train  # imported here: Lightning loads only when a child trains
    from mertlab.train.startup import join_startup  # imported here: Lightning loads only when a child trains

    if registry is None:
        registry = get_registry()
    full = load_spec(spec_path, overrides, registry=registry)
    spec = full.model_copy(update={"sweep": None})  # == load_child_spec(spec_path, overrides)
    names = [v.name for v in expand(full.sweep)] if full.sweep is not None else []
    tracking_uri = resolve_tracking_uri(spec)
    startup = join_startup(spec.trainer)
    held: list[Any] = []  # rank 0: the child's run lock
    timer = timer or PhaseTimer()

    def decide() -> dict[str, Any]:
        from mlflow.entities import Param

        client = _client(tracking_uri)
        parent = checked_parent(client, spec, parent_run_id, tracking_uri)
        sha = spec_sha(spec)
        existing = find_child(client, parent, variant)
        ckpt = None
        if existing is not None:
            run_id = existing.info.run_id
            same = existing.data.tags.get(SPEC_SHA_TAG) == sha
            if existing.info.status == "FINISHED":
                if same:
                    return {"status": "skipped", "run_id": run_id, "checkpoint": None}
                raise MertlabError(
                    f"variant '{variant}': run {run_id} under parent {parent_run_id} finished with a different "
                    "spec; give the sweep a new `name`, or delete that run to train the variant again"
                )
            held.append(acquire_run_lock(run_folder(spec, run_id)))  # refused while another process trains it
            last = run_folder(spec, run_id) / "checkpoints" / "last.ckpt"
            if same and last.exists():  # a file, or a sharded (fsdp) folder
                ckpt = last
            else:  # an unfinished run with nothing to resume from (or of an older spec): start over
                client.delete_run(run_id)
                held.pop().release()
                existing = None
        if existing is None:
            tags = {
                **run_tags(spec, registry),
                PARENT_TAG: parent_run_id,
                SWEEP_TAG: parent.data.tags.get(SWEEP_TAG, spec.name),
                VARIANT_TAG: variant,
                SPEC_SHA_TAG: sha,
            }
            if variant in names:  # position in the sweep, for ordering comparisons
                tags[INDEX_TAG] = str(names.index(variant))
            run_id = client.create_run(parent.info.experiment_id, run_name=variant, tags=tags).info.run_id
            held.append(acquire_run_lock(run_folder(spec, run_id)))
            params = dict(parse_override(o) for o in overrides)
            client.log_batch(run_id, params=[Param(OVERRIDE_PARAM_PREFIX + k, v or "''") for k, v in params.items()])
        return {"status": "resumed" if ckpt else "trained", "run_id": run_id, "checkpoint": str(ckpt) if ckpt else None}

    try:
        decision = startup.decide("sweep child", decide)
        run_id = decision["run_id"]
        final_step = None  # a skipped child's times are those of the process that trained it
        if decision["status"] != "skipped":
            try:
                final_step = train(
                    spec,
                    resume=decision["checkpoint"] or False,
                    registry=registry,
                    progress=progress,
                    run_id=run_id,
                    startup=startup,
                    timer=timer,
                ).global_step
            except BaseException:
                if startup.lead:
                    _client(tracking_uri).set_terminated(run_id, "FAILED")
                raise
        if startup.lead:
            probe_child(spec, run_id, tracking_uri, registry, progress, timer)
            if final_step is not None:  # at the run's last step, as `mertlab train` logs them
                log_phase_times(run_id, tracking_uri, timer, final_step)
    finally:
        for lock in held:
            lock.release()
    message = "already finished" if decision["status"] == "skipped" else ""
    return ChildOutcome(variant, run_id, decision["status"], message, startup.lead)


def checked_parent(client: Any, spec: ExperimentSpec, parent_run_id: str, tracking_uri: str) -> Any:
    """The parent run ``parent_run_id``, which must be in the experiment of ``spec``."""
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise MertlabError(f"--parent-run-id: no MLflow run {parent_run_id} in {tracking_uri}") from None
    experiment = spec.tracking.experiment or spec.name
    if experiment_id(client, experiment) != parent.info.experiment_id:
        raise MertlabError(
            f"--parent-run-id: run {parent_run_id} is not in experiment '{experiment}' of this spec; "
            "children must log to their parent's experiment"
        )
    return parent


def probe_child(
    spec: ExperimentSpec, run_id: str, tracking_uri: str, registry: Any, progress: bool, timer: PhaseTimer | None = None
) -> None:
    """Run the spec's ``probe:`` tasks on a finished child's ``last.ckpt`` (tasks already probed
    on the run with the same settings are skipped: re-running a sweep is idempotent)."""
    if spec.probe is None:
        return
    from mertlab.train.run import run_directory  # imported here: Lightning loads only when a child trains

    checkpoint = run_directory(spec) / run_id / "checkpoints" / "last.ckpt"
    if is_sharded_checkpoint(checkpoint):  # probing needs one file: `mertlab probe` the consolidated one
        log.warning(
            "variant run %s: probe section skipped, %s is sharded (fsdp); consolidate it first", run_id, checkpoint
        )
        return
    probe_spec_tasks(spec.probe, checkpoint, run_id, tracking_uri, progress=progress, registry=registry, timer=timer)


def child_argv(plan: SweepPlan, child: ChildPlan, parent_run_id: str) -> list[str]:
    """``mertlab train ...`` of ``child`` nested under ``parent_run_id``, as an argument list."""
    argv = ["mertlab", "train", plan.spec_path]
    for override in child.overrides:
        argv += ["-o", override]
    argv += ["--parent-run-id", parent_run_id, "--variant", child.variant.name]
    return argv + ["--resume", "auto", "--no-progress"]  # a child always resumes when it can; a requeue relies on it


def child_env(plan: SweepPlan) -> dict[str, str]:
    """Environment the children need: the MLflow store the parent was created in, when the spec
    names none (children must not fall back to another machine's ./mlflow.db)."""
    return {} if plan.spec.tracking.tracking_uri else {"MLFLOW_TRACKING_URI": plan.tracking_uri}


def child_command(plan: SweepPlan, child: ChildPlan, parent_run_id: str) -> str:
    """The shell command that trains ``child`` on any machine sharing the tracking store."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in child_env(plan).items())
    command = " ".join(shlex.quote(a) for a in child_argv(plan, child, parent_run_id))
    return f"{env} {command}" if env else command


# --------------------------------------------------------------------------- the sweep
@dataclass
class SweepResult:
    parent_run_id: str
    tracking_uri: str
    experiment: str
    plan: SweepPlan
    outcomes: list[ChildOutcome] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    pending: list[ChildPlan] = field(default_factory=list)  # dry run: the children still to train

    @property
    def failed(self) -> list[ChildOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def run_sweep(
    spec_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    dry_run: bool = False,
    registry: Any = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> SweepResult:
    """Validate all variants, find or create the parent run, then train the children one after
    another here (``dry_run``: only return the ``mertlab train`` command of each unfinished child).

    A failing child is recorded (run FAILED) and the sweep goes on with the next one.
    """
    echo = echo or (lambda _: None)
    if registry is None:
        registry = get_registry()
    plan = plan_sweep(spec_path, overrides, registry)
    wide = [c.variant.name for c in plan.children if c.spec.trainer.devices * c.spec.trainer.num_nodes > 1]
    if wide and not dry_run:
        raise MertlabError(
            f"variant '{wide[0]}': trainer.devices x trainer.num_nodes > 1, but `mertlab sweep` trains the children "
            "one after another in this process; give each child its own launcher: `mertlab sweep --dry-run` prints "
            "their commands, `--launcher slurm` writes them as one SLURM array job"
        )
    client = _client(plan.tracking_uri)
    parent = ensure_parent(client, plan, registry)
    parent_id = parent.info.run_id
    result = SweepResult(parent_id, plan.tracking_uri, plan.experiment, plan=plan)
    echo(f"sweep '{plan.name}': {len(plan.children)} variants, parent run {parent_id} (experiment '{plan.experiment}')")
    if dry_run:
        for child in plan.children:
            done = find_child(client, parent, child.variant.name)
            if done is not None and done.info.status == "FINISHED":
                echo(f"# {child.variant.name}: finished (run {done.info.run_id})")
                continue
            command = child_command(plan, child, parent_id)
            result.commands.append(command)
            result.pending.append(child)
            echo(command)
        client.update_run(parent_id, status="SCHEDULED" if result.commands else "FINISHED")
        return result

    client.update_run(parent_id, status="RUNNING")
    for i, child in enumerate(plan.children, 1):
        name = child.variant.name
        echo(f"[{i}/{len(plan.children)}] {name}")
        try:
            outcome = run_child(plan.spec_path, child.overrides, parent_id, name, registry, progress)
        except KeyboardInterrupt:
            client.set_terminated(parent_id, "KILLED")
            raise
        except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the others
            found = find_child(client, parent, name)
            message = str(exc) if isinstance(exc, MertlabError) else f"{type(exc).__name__}: {exc}"
            outcome = ChildOutcome(name, found.info.run_id if found else None, "failed", message)
        result.outcomes.append(outcome)
        echo(f"    {outcome.status}{': ' + outcome.message if outcome.message else ''} (run {outcome.run_id})")
    client.set_terminated(parent_id, "FAILED" if result.failed else "FINISHED")
    return result
