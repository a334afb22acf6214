"""``mertlab sweep --dry-run --launcher slurm``: one SLURM array job, one task per sweep child.

Each array task runs its child's ``mertlab train ... --parent-run-id ... --variant ...
--resume auto`` under ``srun``, with ``trainer.num_nodes`` nodes and ``trainer.devices`` tasks
per node, which Lightning's SLURM environment turns into one DDP/FSDP process per device. All
tasks start at once: rank 0 alone sets the child run up and prepares the data, the others
follow it (:mod:`mertlab.train.startup`). Requeueing a task is safe: a child skips itself when
finished and resumes from its ``last.ckpt`` otherwise. A sqlite tracking store is warned about
(array tasks on several nodes write it at once).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from mertlab.experiment.sweep import SweepResult, child_argv, child_env
from mertlab.experiment.tracking import cluster_store_warning

log = logging.getLogger(__name__)


def sbatch_script(result: SweepResult) -> str:
    """The ``sbatch`` script of the unfinished children of a dry-run sweep."""
    plan = result.plan
    assert result.pending, "a dry-run sweep with children to train"
    nodes = max(c.spec.trainer.num_nodes for c in result.pending)
    devices = max(c.spec.trainer.devices for c in result.pending)
    gpus = any(c.spec.trainer.accelerator not in ("cpu",) for c in result.pending)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={plan.name}",
        f"#SBATCH --array=0-{len(result.pending) - 1}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={devices}",
        *([f"#SBATCH --gpus-per-node={devices}"] if gpus else []),
        "#SBATCH --output=slurm-%A_%a.out",
        "#SBATCH --requeue",
        "# Written by `mertlab sweep --dry-run --launcher slurm`; add your --partition/--time/--account.",
        f"# Sweep '{plan.name}', MLflow parent run {result.parent_run_id}; submit with: sbatch THIS_FILE",
        "# Needs `mertlab` on PATH (activate its environment first) and the same files on every node.",
        "set -euo pipefail",
        'cd "$SLURM_SUBMIT_DIR"',
        *(f"export {k}={shlex.quote(v)}" for k, v in child_env(plan).items()),
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for i, child in enumerate(result.pending):
        command = " ".join(shlex.quote(a) for a in child_argv(plan, child, result.parent_run_id))
        lines.append(f"  {i}) srun {command} ;;  # {child.variant.name}")
    lines += ['  *) echo "no sweep child for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac", ""]
    return "\n".join(lines)


def write_sbatch(result: SweepResult, path: str | Path) -> Path:
    """Write :func:`sbatch_script` to ``path`` (executable)."""
    warning = cluster_store_warning(result.tracking_uri, "the SLURM job")
    if warning:
        log.warning(warning)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sbatch_script(result))
    path.chmod(0o755)
    return path
