"""The ``mertlab`` command line: one thin command per user task, calling the library."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mertlab import __version__
from mertlab.errors import MertlabError
from mertlab.plugin_system.registry import KINDS

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence

DISABLE_PLUGIN_OPTION = "--disable-plugin"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mertlab")
@click.option(
    DISABLE_PLUGIN_OPTION,
    multiple=True,
    metavar="NAME",
    expose_value=False,  # applied by main() before the plugins load (see leading_disabled_plugins)
    help="Skip plugin NAME (entry-point, built-in module or distribution name; repeatable), like pytest's "
    "-p no:NAME; adds to $MERTLAB_DISABLE_PLUGINS. Goes before the command.",
)
def cli() -> None:
    """mertlab: MERT-style self-supervised music-audio pre-training.

    Compose a backbone, teachers and weighted objectives in a YAML spec; train; compare in MLflow.
    """


OVERRIDE_OPTION = click.option(
    "-o",
    "--override",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override applied after the YAML, value parsed as YAML (repeatable), e.g. -o optim.lr=1e-4.",
)


class _ListByDefault(click.Group):
    """A group whose first argument, when it is not one of its commands, goes to ``list``:
    ``mertlab plugins 'enc*'`` lists, ``mertlab plugins install PKG`` installs."""

    default_command = "list"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group("plugins", cls=_ListByDefault)
def plugins_group() -> None:
    """List, install and uninstall plugins. `mertlab plugins [PATTERN]` lists the registered
    components (built-in and installed plugins)."""


@plugins_group.command("list")
@click.option("--kind", type=click.Choice(KINDS), help="Only components of this kind.")
@click.argument("pattern", default="*")
def plugins_command(kind: str | None, pattern: str) -> None:
    """List registered components (built-in and installed plugins), filtered by a wildcard PATTERN;
    then the plugins that were not loaded, and why."""
    from mertlab.plugin_system.registry import get_registry

    registry = get_registry()
    entries = registry.list(kind, pattern)
    if not entries:
        click.echo(f"no {kind or 'component'} matches {pattern!r}")
    else:
        rows = [(e.name, e.kind, e.source.label, e.summary) for e in entries]
        click.echo(format_table(("name", "kind", "source", "summary"), rows))
    for skipped in registry.skipped.values():
        click.echo(f"not loaded: {skipped.message}")


@plugins_group.command("install", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-e", "--editable", is_flag=True, help="Install a local folder in editable mode (pip install -e).")
@click.argument("target", metavar="PKG|PATH")
@click.argument("pip_args", nargs=-1, type=click.UNPROCESSED, metavar="[PIP_OPTIONS]...")
def plugins_install_command(editable: bool, target: str, pip_args: tuple[str, ...]) -> None:
    """Install a plugin package (a PyPI name, a local folder or a wheel) into this environment.

    Runs this environment's pip with torch, torchaudio and mertlab pinned to their installed
    versions (a plugin never pulls another torch build), then lists what the plugin registers.
    Options after PKG|PATH go to pip, e.g. `mertlab plugins install ./mertlab-flux --no-index`.
    """
    from mertlab.plugin_system.installer import install_plugin

    installed = install_plugin(target, editable, pip_args)
    if not installed:
        click.echo(f"{target}: already installed at that version (nothing changed)")
    for plugin in installed:
        components = ", ".join(f"{kind} '{name}'" for kind, name in plugin.components) or "no components"
        click.echo(f"installed {plugin.distribution} {plugin.version}: {components}")
        for problem in plugin.problems:
            click.echo(f"  not loaded: {problem}")
    if any(not p.components and not p.problems for p in installed):
        click.echo(
            "  (no `mertlab` entry point registers anything: see `[project.entry-points.mertlab]` in its "
            "pyproject.toml)"
        )


@plugins_group.command("uninstall")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def plugins_uninstall_command(names: tuple[str, ...]) -> None:
    """Uninstall plugin packages (each NAME a distribution or entry-point name) from this environment."""
    from mertlab.plugin_system.installer import uninstall_plugins

    for distribution in uninstall_plugins(names):
        click.echo(f"uninstalled {distribution}")


@cli.command("check-plugin")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), help="The component's kind, where NAME is registered under several.")
def check_plugin_command(name: str, kind: str | None) -> None:
    """Run mertlab's contract checks (mertlab.testing) on the registered component NAME."""
    from mertlab.plugin_system.registry import get_registry
    from mertlab.testing import run_contract_checks

    registry = get_registry()
    entries = [e for e in registry.list(kind) if e.name == name]
    if not entries:
        from mertlab.plugin_system.registry import unknown_name_message

        raise MertlabError(
            unknown_name_message(kind or "component", name, sorted({e.name for e in registry.list(kind)}))
            + registry.skipped_note()
        )
    if len(entries) > 1:
        raise click.UsageError(f"'{name}' is a {' and a '.join(e.kind for e in entries)}; choose one with --kind")
    entry = entries[0]
    click.echo(f"{entry.kind} '{entry.name}' ({entry.source.label}):")
    failed = []
    for result in run_contract_checks(entry.kind, entry.name, registry):
        note = f"  ({result.message})" if result.status == "skipped" else ""
        click.echo(f"  {result.status:7s} {result.check}{note}")
        if result.status == "failed":
            failed.append(result.message)
    if failed:
        raise MertlabError("\n".join(failed))


@cli.command("new")
@click.argument("kind", type=click.Choice(["teacher", "backbone", "objective"]))
@click.argument("name")
@click.argument("directory", required=False, metavar="[DIR]")
def new_command(kind: str, name: str, directory: str | None) -> None:
    """Write a ready plugin package for a new KIND named NAME into DIR [default: ./mertlab-NAME].

    The package has the entry point, the component with documented Params, a test file running
    mertlab's contract checks and a README; install it with `mertlab plugins install -e DIR`.
    """
    from mertlab.plugin_system.scaffold import next_steps, write_package

    click.echo(next_steps(kind, name, write_package(kind, name, directory)))


@cli.command("validate")
@click.argument("spec_path", metavar="SPEC")
@OVERRIDE_OPTION
def validate_command(spec_path: str, overrides: tuple[str, ...]) -> None:
    """Validate SPEC (with overrides; and every sweep variant) and print the fully resolved spec as YAML.

    Also checks that trainer.output_dir can be written (creating nothing); data and the tracking
    store are checked when training starts.
    """
    from mertlab.experiment.spec import dump_spec, load_spec
    from mertlab.toolkit.atomic import check_creatable

    spec = load_spec(spec_path, overrides)
    check_creatable(spec.trainer.output_dir, "trainer.output_dir")
    if spec.sweep is not None:  # every variant must be valid too
        from mertlab.experiment.sweep import plan_sweep

        plan = plan_sweep(spec_path, overrides)
        click.echo(f"sweep: {len(plan.children)} variants, all valid", err=True)
    click.echo(dump_spec(spec), nl=False)


@cli.command("schema")
@click.argument("kind", required=False, type=click.Choice(KINDS))
@click.argument("name", required=False)
def schema_command(kind: str | None, name: str | None) -> None:
    """JSON Schema of the experiment spec, or of one component's params (KIND NAME)."""
    if kind is None:
        from mertlab.experiment.spec import ExperimentSpec

        schema = ExperimentSpec.model_json_schema()
    else:
        if name is None:
            raise click.UsageError("give the component NAME after KIND, e.g. `mertlab schema teacher cqt`")
        from mertlab.plugin_system.registry import get_registry

        schema = get_registry().get(kind, name).params_model.model_json_schema()
    click.echo(json.dumps(schema, indent=2))


@cli.command("train")
@click.argument("spec_path", metavar="SPEC")
@OVERRIDE_OPTION
@click.option(
    "--resume",
    "resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[CKPT|auto]",
    help="Continue the newest run of this spec (or the given checkpoint): same step, optimizer state and MLflow run. "
    "`--resume auto`: the same when the spec has a checkpoint, else start fresh (one command for the first "
    "submission and every requeue of a cluster job).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (e.g. in batch jobs).")
@click.option(
    "--parent-run-id",
    metavar="RUN_ID",
    help=(
        "Train as a sweep child nested under this MLflow run (with --variant); as printed by `mertlab sweep --dry-run`."
    ),
)
@click.option("--variant", metavar="NAME", help="Sweep variant name of this child run (with --parent-run-id).")
@click.option(
    "--profile",
    "profile",
    type=click.IntRange(min=1),
    is_flag=False,
    flag_value=5,
    default=None,
    metavar="[N]",
    help="Record a torch.profiler trace of N steps (default 5) after 2 warm-up steps; logged with a "
    "top-ops table as the run's profile/ artifacts.",
)
def train_command(
    spec_path: str,
    overrides: tuple[str, ...],
    resume: str | None,
    no_progress: bool,
    parent_run_id: str | None,
    variant: str | None,
    profile: int | None,
) -> None:
    """Pre-train the model described by SPEC; metrics go to MLflow."""
    from mertlab.experiment import metric_names
    from mertlab.toolkit.timing import PhaseTimer

    timer = PhaseTimer()
    timer.start(metric_names.PHASE_STARTUP)  # the library's imports and the spec's validation
    from mertlab.experiment.spec import load_spec
    from mertlab.train.run import train

    if (parent_run_id is None) != (variant is None):
        raise click.UsageError("--parent-run-id and --variant go together")
    if parent_run_id is not None and variant is not None:
        if resume not in (None, "auto"):
            raise click.UsageError("sweep children resume by themselves (--resume auto): drop --resume")
        if profile is not None:
            raise click.UsageError("--profile is for single runs: drop it for sweep children")
        from mertlab.experiment.sweep import run_child

        timer.stop(metric_names.PHASE_STARTUP)
        outcome = run_child(spec_path, list(overrides), parent_run_id, variant, progress=not no_progress, timer=timer)
        if outcome.lead:  # the other processes of a distributed child stay quiet
            click.echo(
                f"variant '{variant}': {outcome.status}"
                f"{' (' + outcome.message + ')' if outcome.message else ''}, run {outcome.run_id}"
            )
            click.echo("\n" + TIME_TABLE_TITLE + timer.table())
        return
    spec = load_spec(spec_path, overrides)
    timer.stop(metric_names.PHASE_STARTUP)
    result = train(
        spec,
        resume=True if resume == "latest" else (resume or False),
        progress=not no_progress,
        profile_steps=profile,
        timer=timer,
    )
    if result.is_global_zero:
        finish_training(spec, result, no_progress)


TIME_TABLE_TITLE = "where the time went (wall and CPU seconds per phase; logged as time/<phase>_s):\n"


def finish_training(spec: Any, result: Any, no_progress: bool) -> None:
    """After ``train``: the run's summary, its ``probe:`` section (the verdict), the per-phase
    times (printed and logged as ``time/*``), then where to look in the MLflow UI."""
    from mertlab.experiment.mlflow_ui import LinkTarget, ui_lines
    from mertlab.experiment.phase_times import log_phase_times

    losses = ", ".join(
        f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()) if k.startswith(("loss/", "val/loss/"))
    )
    accuracy = ", ".join(f"{alias} {value:.3f}" for alias, value in mean_accuracies(result.metrics).items())
    click.echo(
        f"\nrun {result.run_id} finished (experiment '{result.experiment}')\n"
        f"  final: {losses}\n"
        + (f"  masked accuracy (mean over codebooks): {accuracy}\n" if accuracy else "")
        + (
            f"  skipped {len(result.skipped_files)} bad audio files (each named in the log; listed with the reason "
            f"in the run's data/skipped_files.tsv artifact)\n"
            if result.skipped_files
            else ""
        )
        + f"  metrics: {result.tracking_uri}\n"
        f"  checkpoints: {result.checkpoint_dir}"
    )
    results = []
    if spec.probe is not None:
        from mertlab.probe.experiment import probe_spec_tasks
        from mertlab.toolkit.checkpoint import is_sharded_checkpoint

        last = result.checkpoint_dir / "last.ckpt"
        if is_sharded_checkpoint(last):
            click.echo(
                f"\nprobe: section skipped: {last} is sharded (fsdp); consolidate it into one file "
                f"(python -m lightning.pytorch.utilities.consolidate_checkpoint {last}), then `mertlab probe` it"
            )
        else:
            click.echo(f"\nprobing the final checkpoint on {len(spec.probe.tasks)} task(s) (probe: section)")
            results = probe_spec_tasks(
                spec.probe,
                result.checkpoint_dir / "last.ckpt",
                result.run_id,
                result.tracking_uri,
                progress=not no_progress,
                echo=click.echo,
                timer=result.timer,
            )
    log_phase_times(result.run_id, result.tracking_uri, result.timer, result.global_step)
    click.echo("\n" + TIME_TABLE_TITLE + result.timer.table())
    if results:
        echo_probe_results(results)
    targets = [LinkTarget("this run", result.run_id), LinkTarget("its experiment's runs")]
    click.echo("\n" + "\n".join(ui_lines(result.tracking_uri, targets)))


def echo_probe_results(results: list[Any]) -> None:
    """The table of a ``probe:`` section's results, then one verdict line per task."""
    from mertlab.probe.experiment import results_table

    header, rows = results_table(results)
    if rows:
        click.echo("\n" + format_table(header, rows))
    click.echo("\n".join(r.verdict for r in results))


def mean_accuracies(metrics: dict[str, float]) -> dict[str, float]:
    """``{"rvq_pred": mean of acc/rvq_pred/cb*, "val/rvq_pred": ...}`` from final metrics."""
    groups: dict[str, list[float]] = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"(val/)?acc/(.+)/cb\d+", key)
        if match:
            groups.setdefault((match.group(1) or "") + match.group(2), []).append(value)
    return {alias: sum(v) / len(v) for alias, v in sorted(groups.items())}


@cli.command("sweep")
@click.argument("spec_path", metavar="SPEC")
@OVERRIDE_OPTION
@click.option(
    "--dry-run",
    is_flag=True,
    help=(
        "Validate, create the parent run, and print the `mertlab train` command of each unfinished child instead "
        "of running it."
    ),
)
@click.option(
    "--launcher",
    type=click.Choice(["shell", "slurm"]),
    default="shell",
    show_default=True,
    help="With --dry-run: print shell commands, or write one SLURM array job (--sbatch) whose tasks are the children.",
)
@click.option(
    "--sbatch",
    "sbatch_path",
    metavar="FILE",
    help="Where --launcher slurm writes the job [default: <sweep name>.sbatch].",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option(
    "--no-compare",
    is_flag=True,
    help="Do not tabulate the children and log the comparison to the parent run at the end.",
)
def sweep_command(
    spec_path: str,
    overrides: tuple[str, ...],
    dry_run: bool,
    launcher: str,
    sbatch_path: str | None,
    no_progress: bool,
    no_compare: bool,
) -> None:
    """Run every variant of SPEC's `sweep:` block as a child of one MLflow parent run.

    Overrides apply to every variant. All variants are validated before the first starts;
    re-running skips finished children and resumes unfinished ones.
    """
    from mertlab.experiment.mlflow_ui import LinkTarget, ui_lines
    from mertlab.experiment.sweep import run_sweep

    if launcher == "slurm" and not dry_run:
        raise click.UsageError("--launcher slurm writes a job for the scheduler: add --dry-run")
    result = run_sweep(spec_path, overrides, dry_run=dry_run, progress=not no_progress, echo=click.echo)
    if dry_run:
        if launcher == "slurm" and result.pending:
            from mertlab.experiment.slurm import write_sbatch

            path = write_sbatch(result, sbatch_path or f"{result.plan.name}.sbatch")
            click.echo(f"SLURM array job of {len(result.pending)} children written to {path}; submit: sbatch {path}")
        return
    parent = LinkTarget("the parent run", result.parent_run_id)
    if not no_compare:
        from mertlab.experiment.compare import ARTIFACT_DIR, MARKDOWN_FILE, compare, to_text

        report = compare(result.parent_run_id, result.tracking_uri)
        click.echo("\n" + to_text(report.comparison))
        click.echo(
            f"\ncomparison table and plots logged to the parent run ({', '.join(report.files)} under artifacts/compare)"
        )
        parent = LinkTarget("the comparison", result.parent_run_id, f"{ARTIFACT_DIR}/{MARKDOWN_FILE}")
    targets = [LinkTarget("the sweep's runs"), parent]
    click.echo(
        f"parent run {result.parent_run_id} (experiment '{result.experiment}')\n"
        f"  compare: mertlab compare {result.parent_run_id}\n" + "\n".join(ui_lines(result.tracking_uri, targets))
    )
    if result.failed:
        raise MertlabError(
            f"{len(result.failed)} of {len(result.outcomes)} variants failed: "
            + ", ".join(o.variant for o in result.failed)
        )


@cli.command("compare")
@click.argument("target", metavar="PARENT_RUN_ID|EXPERIMENT")
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    metavar="PATTERN",
    help="Metrics to tabulate and plot as final/best (repeatable; * within a /-segment, ** across). "
    "Default: loss/* val/loss/* probe/*/* (each task's best probe).",
)
@click.option(
    "--out",
    "out_dir",
    metavar="DIR",
    help="Folder for comparison.csv, comparison.md and the plots [default: comparisons/<name>].",
)
@click.option(
    "--tracking-uri", metavar="URI", help="MLflow store [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db]."
)
@click.option("--no-log", is_flag=True, help="Do not log the table and plots as artifacts of the parent run.")
def compare_command(
    target: str, metrics: tuple[str, ...], out_dir: str | None, tracking_uri: str | None, no_log: bool
) -> None:
    """Compare the child runs of a sweep (a parent run id, or an experiment: its newest sweep)."""
    import re

    from mertlab.experiment.compare import ARTIFACT_DIR, MARKDOWN_FILE, load_comparison, to_text, write_comparison
    from mertlab.experiment.mlflow_ui import LinkTarget, ui_lines

    comparison = load_comparison(target, tracking_uri, metrics)
    if out_dir is None:
        out_dir = str(Path("comparisons") / re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", comparison.title))
    result = write_comparison(comparison, out_dir, log_artifacts=not no_log)
    click.echo(
        f"{comparison.title}: {len(comparison.rows)} runs" + (f" ({comparison.note})" if comparison.note else "")
    )
    click.echo(to_text(comparison))
    click.echo(f"\nwrote {', '.join(result.files)} to {result.out_dir}")
    if result.logged_to:
        click.echo(f"logged them to parent run {result.logged_to} (artifacts/compare)")
        targets = [
            LinkTarget("the sweep's runs"),
            LinkTarget("the comparison", result.logged_to, f"{ARTIFACT_DIR}/{MARKDOWN_FILE}"),
        ]
        click.echo("\n".join(ui_lines(comparison.tracking_uri, targets)))


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> int:
    """SIGTERM to ``process``'s whole process group, SIGKILL after ``grace_s``; its exit status."""
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # the group is gone
            break
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # give the server's own children a moment to follow it
    return process.wait()


@cli.command("ui")
@click.option(
    "--tracking-uri", metavar="URI", help="MLflow store [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db]."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option(
    "--experiment",
    "experiment_name",
    metavar="NAME",
    help="Experiment to link to [default: the one with the newest run].",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the link in a web browser once the UI answers.")
def ui_cli_command(
    tracking_uri: str | None, host: str, port: int, experiment_name: str | None, open_browser: bool
) -> None:
    """Start the MLflow UI on mertlab's tracking store and print a link to an experiment's runs
    (Ctrl-C stops it)."""
    import subprocess

    from mlflow.tracking import MlflowClient

    from mertlab.experiment.mlflow_ui import newest_experiment, open_when_up, refresh_comparison_view_safely, ui_link
    from mertlab.experiment.tracking import default_tracking_uri, ui_argv

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise MertlabError(
            f"--tracking-uri: no MLflow store at {uri[len('sqlite:///') :]} (run `mertlab train SPEC` first, "
            "or run this command in the folder you trained from)"
        )
    client = MlflowClient(uri)
    experiment = newest_experiment(client, experiment_name)
    if experiment is None and experiment_name is not None:
        names = ", ".join(sorted(e.name for e in client.search_experiments(max_results=1000)))
        raise MertlabError(f"--experiment: no experiment '{experiment_name}' in {uri} (it has: {names or 'none'})")
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    base = f"http://{shown}:{port}"
    click.echo(f"MLflow UI for {uri}: {base}  (Ctrl-C to stop)")
    if experiment is not None:
        view = refresh_comparison_view_safely(client, experiment.experiment_id)
        link = ui_link(base, experiment.experiment_id, view=view)
        click.echo(f"  experiment '{experiment.name}': {link}")
    else:
        link = ui_link(base)
        click.echo(f"  experiments: {link}")
    # The server runs in a new process session (MLflow 3 starts workers, a job runner and a task
    # consumer that hold the sqlite store); stopping mertlab -- Ctrl-C or SIGTERM -- stops all of it.
    process = subprocess.Popen(ui_argv(uri, host, port), start_new_session=True)
    if open_browser:
        local = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        open_when_up(link, f"{local}/health", process)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        code = _stop_process_group(process)  # the server and what it started (or left behind)
    if code not in (0, -2, -15, 130):
        raise MertlabError(f"the MLflow UI exited with status {code} (is port {port} in use? try --port)")


@cli.group("tracking")
def tracking_group() -> None:
    """MLflow tracking tasks."""


@tracking_group.command("replay")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option(
    "--tracking-uri", default=None, help="MLflow store to send to (default: the one the file names, the run's own)."
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the store to answer.")
def tracking_replay_command(run_dir: str, tracking_uri: str | None, timeout: float) -> None:
    """Send a run's unsent_metrics.jsonl (written when its store was down at the end) and set the
    run's final status.

    RUN_DIR is the run's folder (<output_dir>/<name>/<run id>) or the file. Values the store
    already holds at a step are not sent again, so replaying twice changes nothing; the file is
    renamed unsent_metrics.replayed.jsonl once everything is sent.
    """
    from mertlab.experiment.replay import replay

    summary = replay(run_dir, tracking_uri, timeout)
    for run in summary.runs:
        status = f", status {run.status}" if run.status else ""
        click.echo(
            f"run {run.run_id}: {run.sent} metric values sent ({run.already_there} already in the store), "
            f"{len(run.tags)} tags{status} -> {summary.tracking_uri}"
        )


@cli.group("teachers")
def teachers_group() -> None:
    """Teacher tasks: fit the teachers that learn from data (k-means, Mel-RVQ), evaluate teachers on a labelled task."""


@teachers_group.command("fit")
@click.argument("spec_path", metavar="SPEC")
@OVERRIDE_OPTION
@click.option(
    "--passes",
    default=None,
    type=click.IntRange(min=1),
    help="Passes over the training files, each with fresh random crops [default: as many as the teacher's "
    "max_fit_frames need, at most 20].",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Torch device for features and fitting (k-means, Mel-RVQ), e.g. cuda.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars (e.g. in batch jobs).")
def teachers_fit_command(
    spec_path: str, overrides: tuple[str, ...], passes: int | None, device: str, no_progress: bool
) -> None:
    """Fit every teacher of SPEC that needs fitting on its training audio and write its state file."""
    from mertlab.experiment.spec import load_spec
    from mertlab.teachers.fitting import fit_teachers

    spec = load_spec(spec_path, overrides)
    fitted = fit_teachers(spec, device=device, passes=passes, progress=not no_progress)
    if not fitted:
        click.echo(f"no teacher in {spec_path} needs fitting ({', '.join(sorted(spec.teachers))} are ready to use)")
    for f in fitted:
        note = " (replaced the previous file)" if f.replaced else ""
        click.echo(f"teachers.{f.alias} ({f.name}): wrote {f.path}{note}; fingerprint {f.fingerprint}")
        if f.report:
            report = ", ".join(f"{k} {v:.4g}" for k, v in f.report.items())
            click.echo(f"  fit on {f.passes} pass(es) of random crops: {report}")


@teachers_group.command("evaluate")
@click.argument("spec_path", metavar="SPEC")
@click.argument("task_path", metavar="TASK")
@OVERRIDE_OPTION
@click.option(
    "--teacher", "aliases", multiple=True, metavar="ALIAS", help="Only this teacher of the spec (repeatable)."
)
@click.option(
    "--window-seconds",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Audio is fed to each teacher in windows of this length.",
)
@click.option(
    "--max-epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Epoch limit of the continuous teachers' probes [default: 200].",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the probes.")
@click.option(
    "--experiment", default="teacher-eval", show_default=True, help="MLflow experiment (one run per teacher)."
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store [default: the spec's, else $MLFLOW_TRACKING_URI, else ./mlflow.db].",
)
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
@click.option("--device", default="cpu", show_default=True, help="Torch device the teachers run on, e.g. cuda.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def teachers_evaluate_command(
    spec_path: str,
    task_path: str,
    overrides: tuple[str, ...],
    aliases: tuple[str, ...],
    window_seconds: float,
    max_epochs: int | None,
    seed: int,
    experiment: str,
    tracking_uri: str | None,
    no_tracking: bool,
    device: str,
    no_progress: bool,
) -> None:
    """Rank SPEC's teachers on a labelled TASK without training anything.

    Discrete teachers: per-codebook code perplexity, cluster purity, label purity and PNMI
    (HuBERT's analysis, with the clip label on every frame). Continuous teachers: the MLP
    probe score of their clip-mean features. One MLflow run per teacher, metrics
    teacher_eval/<task>/<metric>.
    """
    from mertlab.experiment.spec import load_spec
    from mertlab.experiment.tracking import resolve_tracking_uri
    from mertlab.probe.fit import ProbeParams
    from mertlab.probe.task import load_task
    from mertlab.teachers.evaluation import evaluate_teachers, log_scores, scores_table

    spec = load_spec(spec_path, overrides)
    task = load_task(task_path)
    params = ProbeParams(seed=seed, **({"max_epochs": max_epochs} if max_epochs else {}))
    scores = evaluate_teachers(
        spec, task, window_seconds, params, device, progress=not no_progress, aliases=list(aliases)
    )
    header, rows = scores_table(scores)
    click.echo(format_table(header, rows))
    click.echo(
        f"task '{task.name}': {len(task.paths)} clips ({task.type}); discrete teachers ranked by PNMI, "
        "continuous ones by the probe's test score"
    )
    if no_tracking:
        return
    uri = tracking_uri or resolve_tracking_uri(spec)
    log_scores(scores, spec, uri, experiment)
    click.echo(f"logged teacher_eval/{task.name}/... to {len(scores)} runs of experiment '{experiment}' ({uri})")


@cli.command("demo-data")
@click.argument("directory", default="data/demo")
@click.option("--clips", default=40, show_default=True, help="Number of generated clips.")
@click.option("--seconds", default=6.0, show_default=True, help="Length of each clip.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--tasks/--no-tasks",
    default=True,
    show_default=True,
    help="Also write the labelled probe tasks (pitch, timbre, key, tempo) to DIRECTORY-tasks/.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo_data_command(directory: str, clips: int, seconds: float, seed: int, tasks: bool, no_progress: bool) -> None:
    """Write a small generated music set (chords, melodies, drums; 24 kHz WAV) to DIRECTORY, and
    labelled probe tasks from the same synthesiser (other clips) to DIRECTORY-tasks/."""
    from mertlab.data.demo import write_demo_dataset
    from mertlab.data.demo_tasks import demo_tasks_dir, write_demo_tasks

    paths = write_demo_dataset(directory, num_clips=clips, seconds=seconds, seed=seed, progress=not no_progress)
    click.echo(f"{len(paths)} clips ({len(paths) * seconds / 60:.1f} min) in {directory}")
    if tasks:
        written = write_demo_tasks(demo_tasks_dir(directory), seed=seed, progress=not no_progress)
        click.echo("probe tasks: " + ", ".join(str(p) for p in written.values()))


@cli.command("dev-data")
@click.argument("directory", default="data/dev")
@click.option(
    "--size",
    type=click.Choice(["full", "ci"]),
    default="full",
    show_default=True,
    help="full: ~2.3 h of recordings and 1,200-1,440 clips per task; ci: ~6 min and ~250 clips per task.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the generated probe-task clips.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def dev_data_command(directory: str, size: str, seed: int, no_progress: bool) -> None:
    """Build the real-music development set in DIRECTORY from Debian packages (install them
    with `make dev-data-packages`): game soundtracks cut into 10 s pieces for pre-training
    (DIRECTORY/recordings) and probe tasks rendered with FluidSynth and a sampled General MIDI
    soundfont (DIRECTORY/tasks/{pitch,instrument,chord,key,tempo}.csv), with a README stating
    each package's licence. Re-running finishes an interrupted build."""
    import time

    from mertlab.data.devset.build import build_dev_set

    started = time.monotonic()
    summary = build_dev_set(directory, size, seed, progress=not no_progress)
    pieces = sum(s.pieces for s in summary.recordings)
    click.echo(f"recordings: {pieces} pieces, {summary.recording_seconds / 3600:.2f} h in {directory}/recordings")
    for task in summary.tasks:
        splits = "/".join(str(task.splits[s]) for s in ("train", "valid", "test"))
        click.echo(f"task {task.name}: {task.clips} clips (train/valid/test {splits}) -> {task.csv}")
    click.echo(f"README: {directory}/README.md ({time.monotonic() - started:.0f} s)")


@cli.group("data")
def data_group() -> None:
    """Data set tasks: shards for streaming (local or object store)."""


@data_group.command("shard")
@click.argument("src")
@click.argument("dst")
@click.option(
    "--with-targets",
    "spec_path",
    metavar="SPEC",
    help="Also store each teacher's targets of SPEC per file (as the target cache computes them).",
)
@OVERRIDE_OPTION
@click.option(
    "--chunk-bytes", default="64MB", show_default=True, help="Size of one shard chunk file (e.g. 64MB, 256MB)."
)
@click.option(
    "--sample-rate",
    type=click.IntRange(min=1000),
    default=None,
    help="Store mono FLAC at this rate (e.g. 24000) instead of each file's original bytes.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Files held out into DST/val by the file dataset's rule  [default: SPEC's data.val_fraction, else 0.1]",
)
@click.option("--device", default="cpu", show_default=True, help="Torch device the teachers run on (--with-targets).")
@click.option("--no-progress", is_flag=True, help="No progress bar (e.g. in batch jobs).")
def data_shard_command(
    src: str,
    dst: str,
    spec_path: str | None,
    overrides: tuple[str, ...],
    chunk_bytes: str,
    sample_rate: int | None,
    val_fraction: float | None,
    device: str,
    no_progress: bool,
) -> None:
    """Write the audio files under SRC (a folder or manifest) as litdata shards in DST.

    Training streams them when data.path is DST, or the URL DST was copied to (s3://...). DST
    appears only once complete (written to a temporary folder first).
    """
    from mertlab.teachers.shard_targets import shard_with_spec

    spec = None
    if spec_path is not None:
        from mertlab.experiment.spec import load_spec

        spec = load_spec(spec_path, overrides)
    elif overrides:
        raise click.UsageError("-o/--override applies to the spec of --with-targets")
    options: dict[str, Any] = {
        "chunk_bytes": int(chunk_bytes) if chunk_bytes.isdigit() else chunk_bytes,
        "sample_rate": sample_rate,
        "progress": not no_progress,
    }
    if val_fraction is not None:
        options["val_fraction"] = val_fraction
    summary = shard_with_spec(spec, src, dst, device=device, **options)
    splits = ", ".join(f"{s}: {n} files ({summary.seconds[s] / 60:.1f} min)" for s, n in summary.files.items())
    targets = f"; targets of {', '.join(summary.teachers)}" if summary.teachers else ""
    skipped = (
        f"; {len(summary.skipped)} unusable files skipped (listed in {summary.path}/mertlab_shards.json)"
        if summary.skipped
        else ""
    )
    click.echo(f"{summary.path}: {splits}{targets}{skipped}")


@cli.group("targets")
def targets_group() -> None:
    """Target cache tasks: precompute teacher targets so training does not run the teachers."""


@targets_group.command("build")
@click.argument("spec_path", metavar="SPEC")
@OVERRIDE_OPTION
@click.option("--device", default="cpu", show_default=True, help="Torch device the teachers run on, e.g. cuda.")
@click.option("--no-progress", is_flag=True, help="No progress bar (e.g. in batch jobs).")
def targets_build_command(spec_path: str, overrides: tuple[str, ...], device: str, no_progress: bool) -> None:
    """Compute every teacher's targets of every file of data.path into data.target_cache.

    Files already cached for a teacher's current params are skipped, so an interrupted build
    resumes where it stopped and changing one teacher recomputes only that teacher.
    """
    from mertlab.data.skipped import SkippedFiles
    from mertlab.experiment.spec import load_spec
    from mertlab.teachers.target_cache import build_targets

    spec = load_spec(spec_path, overrides)
    skipped = SkippedFiles()
    for s in build_targets(spec, device=device, progress=not no_progress, skipped=skipped):
        repaired = f" (of which {len(s.repaired)} replaced damaged entries)" if s.repaired else ""
        bad = f", {len(s.bad)} unusable" if s.bad else ""
        click.echo(
            f"teachers.{s.alias} ({s.teacher}): {s.computed} files computed{repaired}, {s.skipped} already cached"
            f"{bad} -> {s.folder}"
        )
    if skipped:
        click.echo(
            f"skipped {len(skipped)} unusable audio files (each named in the log with the reason); training skips "
            "and counts them too"
        )


@targets_group.command("clean")
@click.argument("spec_path", metavar="SPEC")
@OVERRIDE_OPTION
@click.option("--dry-run", is_flag=True, help="List what would be removed, with sizes; remove nothing.")
def targets_clean_command(spec_path: str, overrides: tuple[str, ...], dry_run: bool) -> None:
    """Remove the folders of data.target_cache that no teacher of SPEC uses (targets of older
    params, fitted state or code). A cache shared by several specs: run it with --dry-run first."""
    from mertlab.experiment.spec import load_spec
    from mertlab.teachers.target_cache import remove_folders, unused_folders

    spec = load_spec(spec_path, overrides)
    folders = unused_folders(spec)
    if not folders:
        click.echo(f"{spec.data.target_cache}: every target folder is used by a teacher of {spec_path}")
        return
    verb = "would remove" if dry_run else "removing"
    for entry in folders:
        size = human_bytes(entry.bytes)
        click.echo(f"{verb} {entry.folder} (teacher '{entry.teacher}', fingerprint {entry.fingerprint}, {size})")
    if not dry_run:
        remove_folders(folders)
    total = human_bytes(sum(e.bytes for e in folders))
    click.echo(f"{len(folders)} folder(s), {total} {'would be freed' if dry_run else 'freed'}")


def human_bytes(size: int) -> str:
    """``1.5 MB``-style size (powers of 1000)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


@cli.command("model-info")
@click.argument("spec", metavar="SPEC")
@OVERRIDE_OPTION
def model_info_command(spec: str, overrides: tuple[str, ...]) -> None:
    """Parameter count, frame rate and size of a backbone.

    SPEC is an experiment spec file (overrides are spec keys: -o backbone.params.preset=large)
    or a backbone name (overrides are its params: `mertlab model-info transformer -o preset=large`).
    """
    from mertlab.experiment.model_info import model_info

    click.echo(format_table(("field", "value"), model_info(spec, overrides).rows()))


WINDOW_OPTION = click.option(
    "--window-seconds",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Long audio is cut into windows of this length; window means are averaged (MERT crops: 5 s).",
)
BATCH_OPTION = click.option(
    "--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Windows per forward pass."
)
DEVICE_OPTION = click.option(
    "--device", default="auto", show_default=True, help="auto (cuda if available), cpu, cuda, cuda:1..."
)
WORKERS_OPTION = click.option(
    "--num-workers", default=0, show_default=True, type=click.IntRange(min=0), help="Audio decoding processes."
)


@cli.command("export")
@click.argument("checkpoint", metavar="CKPT")
@click.argument("out", metavar="OUT")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hf"]),
    default="hf",
    show_default=True,
    help="hf: a transformers HubertModel directory (config.json, model.safetensors, README.md model card).",
)
def export_command(checkpoint: str, out: str, fmt: str) -> None:
    """Export the backbone of CKPT to OUT for sharing, e.g. `transformers.HubertModel.from_pretrained(OUT)`."""
    from mertlab.experiment.export import export

    directory = export(checkpoint, out, fmt)
    click.echo(f"exported {checkpoint} to {directory} (config.json, model.safetensors, README.md)")


@cli.command("extract")
@click.argument("checkpoint", metavar="CKPT")
@click.argument("data", metavar="DATA")
@click.option("--out", required=True, metavar="FILE.npz", help="Where to write the features.")
@click.option(
    "--layers", default="all", show_default=True, help="all, last, or comma-separated layers (0 = encoder input)."
)
@WINDOW_OPTION
@BATCH_OPTION
@DEVICE_OPTION
@WORKERS_OPTION
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_command(
    checkpoint: str,
    data: str,
    out: str,
    layers: str,
    window_seconds: float,
    batch_size: int,
    device: str,
    num_workers: int,
    no_progress: bool,
) -> None:
    """Mean-pooled per-layer features of every audio file in DATA, written to an .npz.

    CKPT is a training checkpoint (runs/<name>/<run>/checkpoints/last.ckpt) or a saved backbone.
    DATA is an audio folder, a manifest (one path per line) or a probe task CSV/YAML. The .npz
    holds `paths` [N], `features` [N, layers, dim], `layers`, `seconds` and `meta` (JSON).
    """
    from mertlab.probe.extract import extract_features
    from mertlab.probe.task import load_task
    from mertlab.toolkit.checkpoint import load_backbone

    if data.lower().endswith((".csv", ".yaml", ".yml")):
        paths = load_task(data).paths
    else:
        from mertlab.data.audio import list_audio_paths
        from mertlab.experiment.spec import DataSpec

        extensions = DataSpec().extensions
        paths = list_audio_paths(data, extensions)
        if not paths:
            raise MertlabError(f"{data}: no audio files ({', '.join(extensions)})")
    features = extract_features(
        load_backbone(checkpoint),
        paths,
        window_seconds,
        layers,
        batch_size,
        device,
        num_workers,
        progress=not no_progress,
    )
    features.meta["checkpoint"] = str(checkpoint)
    features.save(out)
    n, k, d = features.features.shape
    click.echo(f"{n} files x {k} layers x {d} dims -> {out}")


CACHE_OPTIONS = (
    click.option(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help=(
            "Feature cache folder [default: .mertlab-cache/features]; re-probing with other probe settings or "
            "layers reuses it."
        ),
    ),
    click.option("--no-cache", is_flag=True, help="Neither read nor write the feature cache."),
)


def _with_options(options: tuple) -> Any:
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@cli.command("probe")
@click.argument("checkpoint", metavar="CKPT", required=False)
@click.argument("task_path", metavar="TASK", required=False)
@click.option(
    "--hf-dir",
    default=None,
    metavar="DIR",
    help="Probe a local Hugging Face HuBERT/MERT directory (same as CKPT hf:DIR).",
)
@click.option(
    "--layers",
    default="all",
    show_default=True,
    help="Layers to probe one by one: all, last, or e.g. 6,12 (0 = encoder input).",
)
@click.option(
    "--type",
    "task_type",
    type=click.Choice(["auto", "classification", "multilabel", "regression"]),
    default=None,
    help="Task type (default: the task YAML's, else detected from the labels).",
)
@click.option(
    "--name", default=None, help="Task name in metric names (default: the YAML's name, else the CSV's file name)."
)
@click.option(
    "--random-init", is_flag=True, help="Also probe an untrained backbone of the same architecture (baseline)."
)
@click.option(
    "--baselines",
    default="",
    metavar="NAMES",
    help="Also probe handcrafted clip features with the same MLP and splits: comma-separated mfcc, chroma, cqt.",
)
@click.option("--no-weighted", is_flag=True, help="Skip the probe on the learnable weighted sum of all layers.")
@WINDOW_OPTION
@BATCH_OPTION
@click.option(
    "--patience", default=None, type=click.IntRange(min=1), help="Early-stopping patience in epochs [default: 10]."
)
@click.option(
    "--max-epochs", default=None, type=click.IntRange(min=1), help="Epoch limit of each probe [default: 200]."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the probes (and of the random-init backbone).")
@click.option(
    "--seeds",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Refit every probe with seeds SEED..SEED+N-1 and report the spread of the best probe's test score.",
)
@click.option(
    "--run-id",
    default=None,
    help="MLflow run to log to (default: the run that trained CKPT; for hf:DIR a run named after DIR).",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store (default: the checkpoint's, else $MLFLOW_TRACKING_URI, else ./mlflow.db).",
)
@click.option(
    "--experiment", default="probes", show_default=True, help="MLflow experiment of the run named after an hf:DIR."
)
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
@click.option("--out", default=None, metavar="FILE.json", help="Also write the full report as JSON.")
@_with_options(CACHE_OPTIONS)
@DEVICE_OPTION
@WORKERS_OPTION
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def probe_command(
    checkpoint: str | None,
    task_path: str | None,
    hf_dir: str | None,
    layers: str,
    task_type: str | None,
    name: str | None,
    random_init: bool,
    baselines: str,
    no_weighted: bool,
    window_seconds: float,
    batch_size: int,
    patience: int | None,
    max_epochs: int | None,
    seed: int,
    seeds: int,
    run_id: str | None,
    tracking_uri: str | None,
    experiment: str,
    no_tracking: bool,
    out: str | None,
    cache_dir: str | None,
    no_cache: bool,
    device: str,
    num_workers: int,
    no_progress: bool,
) -> None:
    """Probe CKPT's frozen features on a labelled TASK (MARBLE protocol) and log the scores.

    CKPT is a training checkpoint, a saved backbone, or hf:DIR -- a local Hugging Face
    HuBERT/MERT directory (or give --hf-dir DIR and only TASK). TASK is a CSV with columns
    path,label[,split] (paths relative to the CSV; without a split column a seeded 70/15/15
    split is used), a YAML with csv/name/type/seed, or a folder of class sub-folders (GTZAN
    layout: TASK/<class>/<file>, classification). One MLP probe per layer and one on a
    learnable weighted sum of layers; the best (by valid) gives probe/<task>/<metric> on the
    test split, logged to the checkpoint's MLflow run. Features are cached on disk.
    """
    from mertlab.experiment.mlflow_ui import LinkTarget, ui_lines
    from mertlab.experiment.spec import parse_baselines
    from mertlab.probe.cache import DEFAULT_CACHE_DIR, FeatureCache
    from mertlab.probe.fit import ProbeParams
    from mertlab.probe.run import log_probe, probe_run, report_dict, report_table, run_probe, summary_lines, verdict
    from mertlab.probe.task import load_task
    from mertlab.toolkit.checkpoint import HF_PREFIX

    if hf_dir is not None:
        if task_path is not None:
            raise click.UsageError("with --hf-dir give only TASK (the directory replaces CKPT)")
        checkpoint, task_path = HF_PREFIX + hf_dir, checkpoint
    if checkpoint is None or task_path is None:
        raise click.UsageError("give CKPT and TASK (or --hf-dir DIR and TASK)")
    chosen_baselines = parse_baselines(baselines)
    task = load_task(task_path, task_type=task_type, name=name)
    overrides = {k: v for k, v in {"patience": patience, "max_epochs": max_epochs}.items() if v is not None}
    params = ProbeParams(seed=seed, **overrides)
    # before the (long) extraction, so a wrong run fails fast
    destination = None if no_tracking else probe_run(checkpoint, run_id, tracking_uri, experiment)
    cache = FeatureCache(None if no_cache else (cache_dir or DEFAULT_CACHE_DIR))
    outcome = run_probe(
        checkpoint,
        task,
        layers,
        window_seconds,
        batch_size,
        params,
        random_init,
        not no_weighted,
        device,
        num_workers,
        progress=not no_progress,
        baselines=chosen_baselines,
        cache=cache,
        seeds=seeds,
    )
    header, rows = report_table(outcome)
    click.echo(format_table(header, rows))
    click.echo("\n".join(summary_lines(outcome)))
    if cache.root is not None:
        click.echo(f"features: {cache.hits} from the cache, {cache.misses} extracted ({cache.root})")
    click.echo(verdict(outcome))
    settings = {
        "checkpoint": str(checkpoint),
        "layers": layers,
        "window_seconds": window_seconds,
        "random_init": random_init,
        "baselines": chosen_baselines,
        "weighted": not no_weighted,
        **({"seeds": seeds} if seeds > 1 else {}),
        **params.model_dump(),
    }
    if out:
        Path(out).write_text(json.dumps(report_dict(outcome, settings), indent=2))
    if destination is None:
        return
    logged_run, logged_uri, step = destination
    if not logged_run:
        click.echo("not logged to MLflow: CKPT is not a training checkpoint (pass --run-id to log onto a run)")
        return
    log_probe(outcome, logged_run, logged_uri, settings, step)
    click.echo(f"logged probe/{task.name}/... to MLflow run {logged_run} ({logged_uri})")
    targets = [LinkTarget("the run", logged_run), LinkTarget("its experiment's runs")]
    click.echo("\n".join(ui_lines(logged_uri, targets)))


def format_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(cell)) for cell in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _add_plugin_commands() -> None:
    """Let every loaded plugin add its commands; one whose hook fails loses its commands (with a
    warning naming it) and the others keep theirs."""
    import logging

    from mertlab.plugin_system.registry import get_registry

    plugin_manager = get_registry().plugin_manager
    for impl in plugin_manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the others
            source = plugin_manager.source_of(impl.plugin_name)
            logging.getLogger(__name__).warning(
                "plugin '%s' (%s): register_commands failed (%s: %s); its commands are missing",
                source.plugin,
                source.label,
                type(exc).__name__,
                " ".join(str(exc).split()),
            )


def leading_disabled_plugins(args: list[str]) -> list[str]:
    """The ``--disable-plugin NAME`` values among the global options (before the command)."""
    names, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if arg == DISABLE_PLUGIN_OPTION and i + 1 < len(args):
            names.append(args[i + 1])
            i += 2
            continue
        if arg.startswith(DISABLE_PLUGIN_OPTION + "="):
            names.append(arg.split("=", 1)[1])
        i += 1
    return names


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one clear message per problem and exit 1."""
    from mertlab.plugin_system.plugin_manager import DISABLE_PLUGINS_ENV
    from mertlab.plugin_system.registry import reset_registry

    args = list(sys.argv[1:] if argv is None else argv)
    disabled = leading_disabled_plugins(args)
    previous = os.environ.get(DISABLE_PLUGINS_ENV)
    if disabled:  # in the environment, so processes this command starts (DDP ranks, sweeps) skip them too
        os.environ[DISABLE_PLUGINS_ENV] = ",".join(filter(None, [previous, *disabled]))
        reset_registry()
    try:
        _add_plugin_commands()
        cli.main(args=args, prog_name="mertlab", standalone_mode=False)
    except MertlabError as exc:
        click.echo(f"error: {exc}".replace("\n", "\nerror: "), err=True)
        return 1
    except click.exceptions.Abort as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, EOFError):  # click turns an EOFError from a damaged file into Abort
            click.echo(f"error: a file ended early (damaged or truncated): {cause or 'EOFError'}", err=True)
        else:
            click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    finally:
        if disabled:
            if previous is None:
                os.environ.pop(DISABLE_PLUGINS_ENV, None)
            else:
                os.environ[DISABLE_PLUGINS_ENV] = previous
            reset_registry()
    return 0


if __name__ == "__main__":
    sys.exit(main())
