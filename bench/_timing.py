"""Shared helpers of the bench scripts: interleaved timing, ratio lines, peak memory, FLOPs.

These machines are noisy (shared cores), so every script measures ours and the peer in the
same process, on the same inputs, interleaved (A B A B ...), and reports the median of the
repeats and the ratio ``peer time / our time`` (> 1: ours is faster). Every script prints at
least one line starting with ``RATIO`` (tests/test_bench.py checks it; nothing asserts timings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with ``--quick`` (tiny sizes, seconds; what CI runs) and ``--repeats``."""
    p = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="Tiny sizes and one repeat (seconds; for CI, no meaningful ratios)."
    )
    p.add_argument("--repeats", type=int, default=5, help="Timed repeats per contender (median reported).")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Threads for torch and for the peers' BLAS/OpenMP pools (default 1: on a shared machine "
        "multi-threaded OpenMP regions stall whenever another process holds a core).",
    )
    return p


_LIMITS: list[Any] = []  # the process-wide thread limit of the peers' pools, kept alive


def setup(args: argparse.Namespace) -> None:
    """Seed, the same thread count for torch and the peers (NumPy/SciPy BLAS, scikit-learn's
    OpenMP), and one repeat under ``--quick``."""
    from threadpoolctl import threadpool_limits

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    _LIMITS.append(threadpool_limits(args.threads))
    if args.quick:
        args.repeats = 1
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s) for ours and the peers, "
        f"{os.cpu_count()} CPUs; "
        f"{'--quick (sizes too small for meaningful ratios)' if args.quick else f'median of {args.repeats}'}"
    )


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender, run round-robin ``repeats`` times after
    ``warmup`` untimed rounds (so a load change on the machine hits every contender alike)."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def ratio_line(what: str, ours: float, peer: float, target: float | None = None, unit: str = "s") -> str:
    """``RATIO what: 2.31x (peer 0.120 s / ours 0.052 s)  target >= 2x: met`` (peer time / our time)."""
    ratio = peer / ours if ours > 0 else float("inf")
    return ratio_value(what, ratio, f"peer {peer:.4g} {unit} / ours {ours:.4g} {unit}", target)


def ratio_value(what: str, ratio: float, detail: str, target: float | None = None, at_most: bool = False) -> str:
    """Print and return ``RATIO what: 1.23x (detail)``, with the target (``>=``, or ``<=`` when
    ``at_most``) and whether it is met."""
    line = f"RATIO {what}: {ratio:.3g}x ({detail})"
    if target is not None:
        met = ratio <= target if at_most else ratio >= target
        line += f"  target {'<=' if at_most else '>='} {target:g}x: {'met' if met else 'NOT met'}"
    print(line)
    return line


def table(header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned text table."""
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print(
            "  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_delta(fn: Callable[[], Any], interval: float = 0.0005) -> tuple[Any, int]:
    """``(fn(), bytes)``: the peak resident set size while ``fn`` runs minus the size before,
    sampled every ``interval`` s by a thread (torch's CPU tensors bypass tracemalloc).

    glibc keeps freed memory for reuse, so RSS would not fall after a warm-up step: for the
    measurement, blocks over 64 KiB are mapped and unmapped one by one (``mallopt``), making RSS
    follow the live tensors; afterwards the threshold goes back to glibc's upper default.
    """
    import ctypes
    import gc

    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3
    tuned = hasattr(libc, "mallopt")
    if tuned:
        libc.mallopt(m_mmap_threshold, 64 * 1024)
        libc.mallopt(m_trim_threshold, 128 * 1024)
    gc.collect()
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    base = _rss()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
        if tuned:
            libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    return result, max(peak, _rss()) - base


def top_ops(fn: Callable[[], Any], title: str, rows: int = 12) -> None:
    """Print torch.profiler's top operators by self CPU time for one call of ``fn`` (after it ran
    once): where a contender's time goes, for explaining a ratio."""
    from torch.profiler import profile

    fn()
    with profile() as prof:
        fn()
    print(f"\n### top ops: {title}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` counted by :class:`torch.utils.flop_counter.FlopCounterMode`
    (matmuls, convolutions and attention, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_flops(n: int = 2048, repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    """Measured FLOP/s of a large fp32 ``torch.matmul`` (``n x n @ n x n``), best of ``repeats``
    timed by ``clock`` (wall time by default; ``time.thread_time`` with one torch thread: the
    CPU time of the calling thread, which time spent descheduled on a busy machine does not inflate)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        torch.matmul(a, b)
        best = min(best, clock() - start)
    return 2 * n**3 / best


def demo_clips(count: int, seconds: float, seed: int = 0, quick: bool = False) -> list[torch.Tensor]:
    """``count`` generated music clips (chords, melodies, drums) of ``seconds`` at 24 kHz, as
    float32 tensors: ``mertlab demo-data`` into a temporary folder, read back. ``quick``: random
    chords made here instead (no subprocess; for --quick runs)."""
    if quick:
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(int(seconds * 24000)) / 24000
        return [
            sum(
                torch.sin(2 * torch.pi * 110 * 2 ** (float(torch.randint(0, 36, (1,), generator=g)) / 12) * t)
                for _ in range(3)
            )
            / 3
            + 0.01 * torch.randn(t.shape, generator=g)
            for _ in range(count)
        ]
    import tempfile

    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_demo_data(Path(tmp) / "demo", count, seconds, seed)
        return [torch.from_numpy(sf.read(path, dtype="float32")[0]) for path in sorted(folder.glob("*.wav"))]


def write_demo_data(folder: Path, clips: int, seconds: float, seed: int | None = None) -> Path:
    """``mertlab demo-data`` (no probe tasks, quietly) into ``folder``: ``clips`` clips of
    ``seconds``; ``seed`` None: the command's default. Returns ``folder``."""
    import subprocess
    import sys

    seed_args = [] if seed is None else ["--seed", str(seed)]
    command = [sys.executable, "-m", "mertlab", "demo-data", str(folder), "--clips", str(clips)]
    subprocess.run(
        [*command, "--seconds", str(seconds), *seed_args, "--no-tasks"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return folder


def train_step(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], lr: float = 1e-4) -> Callable[[], None]:
    """A forward + backward + AdamW step closure of ``model`` (optimizer built once)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of().backward()
        optimizer.step()

    return step
