"""The quickstart's time: `mertlab train experiments/quickstart.yaml` in a fresh folder, per phase.

Runs the quickstart as `make quickstart` does (a new process, default threads, demo data
generated on first use, every probe of its `probe:` section), and prints what it ran on --
CPU count, load average, the one-thread fp32 matmul peak that bench/mfu.py prints (wall-clock,
best of 3, before and after the run) and the same peak timed in thread CPU time (which time spent
descheduled on a busy machine does not lower) -- then the run's per-phase wall and CPU seconds
(its `time/<phase>_s` metrics), its total wall time and the CPU seconds (user + system) of the
whole process. On a quiet machine the wall time is what a user waits; on a busy one it is
inflated, and the CPU seconds and the mean number of busy cores (CPU / wall) say by how much.

The peer is the matmul peak: the last column and the `RATIO` lines carry the run to the machine
the quickstart promises five minutes on (2 cores, a `--target-peak` of 120 GFLOP/s one-thread
fp32 matmul peak) as `CPU seconds x this machine's peak (thread CPU time, best of the two
measurements) / the target peak`: the run's work done on one core of that machine. That is an
upper bound of its wall time there when it is quiet -- the second core only helps, and the CPU
seconds of a busy machine include the spinning of threads waiting for a descheduled one -- as
long as the run's work slows down no more than a matmul does.

    .venv/bin/python bench/quickstart.py [--quick] [--dir DIR] [--target-peak 120] [-o KEY=VALUE ...]

`--quick`: a tiny version (6 short clips, 4 steps, one small probe task; seconds, no meaningful
time). `--dir`: run there (kept) instead of a temporary folder; it must not hold an earlier run.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from _timing import matmul_peak_flops, parser, ratio_line, setup

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "quickstart.yaml"
#: What the quickstart promises on a 2-core machine with a ~120 GFLOP/s one-thread matmul peak.
BUDGET_S = 300.0
TARGET_PEAK_GFLOPS = 120.0


def quick_overrides(folder: Path) -> list[str]:
    """A tiny quickstart: 6 clips of 2.5 s, 4 steps, a 48-clip timbre task, one baseline."""
    from mertlab.data.demo import write_demo_dataset
    from mertlab.data.demo_tasks import DEMO_TASKS, write_demo_task

    write_demo_dataset(folder / "data" / "demo", num_clips=6, seconds=2.5, progress=False)
    task = write_demo_task(folder / "data" / "demo-tasks", replace(DEMO_TASKS["timbre"], per_class=6), progress=False)
    return [
        "data.generate_demo=false",
        "trainer.max_steps=4",
        "trainer.val_every_n_steps=2",
        "trainer.log_every_n_steps=1",
        f"probe.tasks=[{task}]",
        "probe.baselines=[cqt]",
        "probe.max_epochs=5",
    ]


def peaks() -> tuple[float, float]:
    """One-thread fp32 matmul peak in GFLOP/s: wall-clock (as bench/mfu.py) and thread CPU time."""
    return matmul_peak_flops(2048) / 1e9, matmul_peak_flops(2048, clock=time.thread_time) / 1e9


def phase_table(folder: Path) -> list[tuple[str, float, float]]:
    """``(phase, wall s, CPU s)`` from the run's ``time/*`` metrics, in the order they were logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    metrics = run.data.metrics
    names = [k.removeprefix("time/").removesuffix("_cpu_s") for k in metrics if k.endswith("_cpu_s")]
    order = ["startup", "data", "setup", "target_cache", "training", "validation"]
    names.sort(key=lambda n: (n in ("other", "total"), n == "total", order.index(n) if n in order else len(order), n))
    return [(n, metrics[f"time/{n}_s"], metrics[f"time/{n}_cpu_s"]) for n in names]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--dir", help="Run in this folder (kept) instead of a temporary one.")
    p.add_argument(
        "--target-peak",
        type=float,
        default=TARGET_PEAK_GFLOPS,
        help="One-thread fp32 matmul peak (GFLOP/s) of the machine to estimate the time on.",
    )
    p.add_argument(
        "--run-threads",
        type=int,
        help="torch threads of the quickstart process (default: its own default, as `make quickstart`); "
        "1 on a busy machine, where a second thread waiting for a descheduled one spins and inflates the CPU seconds.",
    )
    p.add_argument("-o", "--override", dest="overrides", action="append", default=[], help="A spec override.")
    args = p.parse_args()
    setup(args)  # one thread here, for the matmul peaks; the quickstart runs with its default threads
    folder = Path(args.dir or tempfile.mkdtemp(prefix="mertlab-quickstart-"))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "mlflow.db").exists():
        raise SystemExit(f"{folder} already holds a run (mlflow.db): give a fresh --dir")
    overrides = (quick_overrides(folder) if args.quick else []) + args.overrides
    # the run is tracked in the folder's own store, which the table is read back from
    overrides = [f"tracking.tracking_uri=sqlite:///{folder / 'mlflow.db'}", *overrides]
    unset = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if args.run_threads:
        env["OMP_NUM_THREADS"] = str(args.run_threads)
    command = [sys.executable, "-m", "mertlab", "train", str(SPEC), "--no-progress"]
    command += [a for o in overrides for a in ("-o", o)]

    peak_before = peaks()
    load_before = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(folder / "quickstart.log", "w") as log:
        done = subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    peak_after = peaks()
    output = (folder / "quickstart.log").read_text()
    if done.returncode != 0:
        raise SystemExit(f"the quickstart failed (exit {done.returncode}); its output:\n{output[-4000:]}")
    user, system = after.ru_utime - usage.ru_utime, after.ru_stime - usage.ru_stime

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; load average (1 min) {load_before[0]:.1f} "
        f"before, {load_after[0]:.1f} after"
    )
    print(
        "one-thread fp32 matmul peak (GFLOP/s): wall-clock (bench/mfu.py's) "
        f"{peak_before[0]:.0f} before / {peak_after[0]:.0f} after; thread CPU time {peak_before[1]:.0f} / "
        f"{peak_after[1]:.0f}"
    )
    print(f"folder: {folder}\n")
    rows = phase_table(folder)
    scale = max(peak_before[1], peak_after[1]) / args.target_peak  # this machine's speed / the target's
    width = max(len(n) for n, _, _ in rows)
    target = f"at {args.target_peak:g}"
    print(f"{'phase':<{width}}  {'wall s':>8}  {'CPU s':>8}  {'CPUs busy':>9}  {target + ' GFLOP/s':>14}")
    for name, phase_wall, phase_cpu in rows:
        busy = f"{phase_cpu / phase_wall:9.2f}" if phase_wall > 0 else f"{'-':>9}"
        print(f"{name:<{width}}  {phase_wall:8.1f}  {phase_cpu:8.1f}  {busy}  {phase_cpu * scale:14.1f}")
    cpu = user + system
    print(
        f"\nwhole process: wall {wall:.1f} s, CPU {cpu:.1f} s (user {user:.1f}, system {system:.1f}), "
        f"{cpu / wall:.2f} CPUs busy on average"
    )
    verdict = [line for line in output.splitlines() if line.split(":")[0] in ("pitch", "timbre", "key", "tempo")]
    print("verdict:\n" + "\n".join(verdict))
    ratio_line(f"quickstart wall time here vs the {BUDGET_S / 60:g}-minute budget", wall, BUDGET_S, target=1.0)
    ratio_line(
        f"quickstart on one core of a {args.target_peak:g} GFLOP/s machine (CPU s x {scale:.2f}) vs the "
        f"{BUDGET_S / 60:g}-minute budget",
        cpu * scale,
        BUDGET_S,
        target=1.0,
    )


if __name__ == "__main__":
    main()
