"""GPU check: mertlab's GPU paths run, checked and timed, printed as one table (< 10 min on a GPU).

    make gpu-check                        # = .venv/bin/python bench/gpu_check.py
    .venv/bin/python bench/gpu_check.py [--quick] [--device cuda|cpu] [--only train,backbone,cqt,memory,tests]

1. **train**: ``mertlab train`` with FSDP + ``bf16-mixed`` on every visible GPU: the ``base``
   transformer, 8 x 5 s crops per GPU, EnCodec (random weights, codebooks k-means-fitted on
   calibration audio, as the codec tests build it) + BEST-RQ + CQT teachers on the fly, the
   stability callback, 50 steps; then ``--resume`` to step 60. Checked: both exit 0, one MLflow
   run with every step's ``loss/total`` once and finite, the checkpoint holds no teacher tensor.
2. **backbone**: ``bench/backbone_step.py``'s pair (our transformer, ``transformers.HubertModel``
   holding the same weights), train step under bf16 autocast for both, ``base`` at 8 x 5 s
   (target >= 1.2x HF); both models' outputs compared on the device in fp32 (TF32 off).
3. **cqt**: the ``cqt`` teacher (MERT's settings) on the device vs ``librosa.cqt`` on the CPU,
   8 x 5 s (target >= 20x); the device's targets against the CPU's (the fast CQT's stated
   tolerance, 1e-3 relative L2).
4. **memory**: peak GPU memory of one bf16 train step (AdamW) of ``base`` and ``large`` at 8 x 5 s.
5. **tests**: ``pytest -m gpu tests/test_gpu.py``: FSDP bf16 with activation checkpointing and
   a sharded checkpoint, the teachers on the fly under FSDP, a sharded checkpoint resumed on
   another device count (needs 2 GPUs; skipped on one).

Without CUDA it prints one line and exits 0: there is nothing to check. ``--quick`` runs every
section at tiny sizes, on the GPU if there is one, else on the CPU (one process with bf16
autocast instead of FSDP, which Lightning runs on CUDA only) -- ``tests/test_bench.py`` runs it,
so its code paths run in every test run, GPU or not. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from _timing import demo_clips, interleaved, peak_rss_delta, ratio_line, table, train_step
from mertlab.plugin_system.registry import get_registry

REPO = Path(__file__).resolve().parents[1]
MERTLAB = str(Path(sys.executable).parent / "mertlab")
SECTIONS = ("train", "backbone", "cqt", "memory", "tests")
#: GPU tests run by the tests section (marked ``gpu``).
GPU_TESTS = ("tests/test_gpu.py",)


@dataclass
class Row:
    """One line of the final table; ``ok`` None: reported, nothing to pass or fail."""

    check: str
    measured: str
    expected: str = ""
    ok: bool | None = None


@dataclass
class Settings:
    device: str  # "cuda" or "cpu"
    quick: bool
    gpus: int  # CUDA devices visible (0 on the CPU)
    steps: int  # training steps before the resume
    repeats: int
    work: Path

    @property
    def clips(self) -> int:  # per device
        return 2 if self.quick else 8

    @property
    def seconds(self) -> float:
        return 1.0 if self.quick else 5.0


# --------------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``fn`` followed by a device synchronisation, so a timing covers its GPU work."""

    def call() -> Any:
        result = fn()
        sync(device)
        return result

    return call


@contextmanager
def fp32_exact() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on CUDA (TF32 off) for comparisons."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_command(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def last_error(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
    return lines[-1][:200] if lines else f"exit status {out.returncode}"


# --------------------------------------------------------------------------- 1. train
def train_spec(s: Settings, demo: Path) -> dict[str, Any]:
    """The spec of the training section (see the module docstring); tiny under ``--quick``."""
    quick = s.quick
    distributed = s.device == "cuda" and not quick
    return {
        "name": "gpu-check",
        "seed": 0,
        "data": {"path": str(demo), "crop_seconds": s.seconds, "batch_size": s.clips, "val_fraction": 0.1},
        "backbone": {"name": "transformer", "params": {"preset": "tiny" if quick else "base"}},
        "teachers": {
            "rvq": {
                "name": "encodec",
                "params": {
                    "bandwidth": 1.5 if quick else 6.0,
                    "pretrained": False,
                    "init_seconds": 1.0 if quick else 2.0,
                },
            },
            "codes": {"name": "bestrq", "params": {"codebook_size": 256} if quick else {}},
            "cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4} if quick else {}},
        },
        "objectives": {
            "rvq_pred": {"name": "masked_prediction", "teacher": "rvq"},
            "codes_pred": {"name": "masked_prediction", "teacher": "codes"},
            "cqt_recon": {"name": "masked_regression", "teacher": "cqt"},
        },
        "masking": {"name": "span", "params": {"mask_prob": 0.8, "span_length": 5}},
        "optim": {"lr": 5e-4, "warmup_steps": 10, "grad_clip": 10.0},
        "trainer": {
            "max_steps": s.steps,
            "log_every_n_steps": 1,
            "val_every_n_steps": max(2, s.steps // 2),
            "limit_val_batches": 1,
            "output_dir": str(s.work / "runs"),
            "accelerator": s.device,
            "devices": s.gpus if distributed else 1,
            "strategy": "fsdp" if distributed else "auto",
            "precision": "bf16-mixed",
        },
        "tracking": {"tracking_uri": f"sqlite:///{s.work / 'mlflow.db'}", "connect_timeout": 30},
        "callbacks": {"stability": {"name": "stability", "params": {"every_n_steps": 10}}},
    }


def teacher_keys_in(checkpoint: Path) -> list[str]:
    """Tensor keys of a checkpoint (a file, or a sharded folder) that belong to teachers."""
    if checkpoint.is_dir():
        from torch.distributed.checkpoint import FileSystemReader

        keys = list(FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata)
    else:
        from mertlab.toolkit.checkpoint import load_checkpoint_file

        keys = list(load_checkpoint_file(checkpoint, mmap=True)["state_dict"])
    return [k for k in keys if "teachers." in k]


def check_train(s: Settings) -> list[Row]:
    from mlflow.tracking import MlflowClient

    from mertlab.data.demo import write_demo_dataset

    demo = s.work / "demo"
    files = max(12, 2 * s.clips * max(s.gpus, 1))
    write_demo_dataset(demo, num_clips=files, seconds=s.seconds + 1.0, progress=False)
    raw = train_spec(s, demo)
    spec = s.work / "gpu-check.yaml"
    spec.write_text(yaml.safe_dump(raw))
    where = (
        f"{raw['trainer']['strategy']} x {raw['trainer']['devices']} {s.device}, {raw['backbone']['params']['preset']}"
    )
    extra = 1 if s.quick else 10
    timeout = 300 if s.quick else 240
    start = time.perf_counter()
    first = run_command([MERTLAB, "train", str(spec), "--no-progress"], s.work, timeout)
    first_s = time.perf_counter() - start
    if first.returncode:
        return [Row(f"train: {where}, {s.steps} steps", f"failed: {last_error(first)}", "exit 0", False)]
    resume_args = ["--resume", "-o", f"trainer.max_steps={s.steps + extra}"]
    resumed = run_command([MERTLAB, "train", str(spec), "--no-progress", *resume_args], s.work, timeout)
    rows = [
        Row(
            f"train: {where}, {s.steps} steps, bf16-mixed, 3 teachers on the fly",
            f"{first_s:.0f} s wall",
            "exit 0",
            True,
        )
    ]
    if resumed.returncode:
        return [
            *rows,
            Row(f"train: --resume to step {s.steps + extra}", f"failed: {last_error(resumed)}", "exit 0", False),
        ]
    client = MlflowClient(raw["tracking"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name(raw["name"]).experiment_id])
    history = client.get_metric_history(runs[0].info.run_id, "loss/total") if runs else []
    steps = sorted(m.step for m in history)
    total = s.steps + extra
    finite = all(math.isfinite(m.value) for m in history)
    rows.append(
        Row(
            f"train: --resume to step {total}: MLflow runs, loss/total steps",
            f"{len(runs)} run(s), steps {steps[0] if steps else '-'}..{steps[-1] if steps else '-'} "
            f"({len(steps)} values, {'finite' if finite else 'NON-FINITE'})",
            f"1 run, 0..{total - 1} once each, finite",
            len(runs) == 1 and steps == list(range(total)) and finite,
        )
    )
    speed = [m.value for m in client.get_metric_history(runs[0].info.run_id, "throughput/audio_seconds_per_s")]
    if speed:
        rows.append(Row("train: throughput (median audio-s/s, all devices)", f"{float(np.median(speed)):.0f}"))
    (last,) = (s.work / "runs" / raw["name"]).glob("*/checkpoints/last.ckpt")
    leaked = teacher_keys_in(last)
    rows.append(
        Row(
            "train: teacher tensors in the checkpoint",
            f"{len(leaked)} ({'sharded folder' if last.is_dir() else 'file'})",
            "0",
            not leaked,
        )
    )
    return rows


# --------------------------------------------------------------------------- 2. backbone
def check_backbone(s: Settings) -> list[Row]:
    from backbone_step import transformer_pair

    preset, clips, seconds = ("tiny", 1, 1.0) if s.quick else ("base", 8, 5.0)
    ours, hf = transformer_pair(preset)  # built on the CPU, checked equal in fp32 there
    ours, hf = ours.to(s.device), hf.to(s.device)
    wav = torch.randn(clips, int(seconds * ours.sample_rate), device=s.device)
    with fp32_exact(), torch.no_grad():
        ours.eval(), hf.eval()
        agreement = relative_l2(ours(wav).hidden_states[-1], hf(wav).last_hidden_state)
        ours.train(), hf.train()

    def bf16(loss: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.autocast(device_type=s.device, dtype=torch.bfloat16):
                return loss()

        return call

    contenders = {
        "ours": synced(train_step(ours, bf16(lambda: ours(wav).hidden_states[-1].float().pow(2).mean())), s.device),
        "hf": synced(train_step(hf, bf16(lambda: hf(wav).last_hidden_state.float().pow(2).mean())), s.device),
    }
    t = interleaved(contenders, s.repeats)
    what = f"transformer bf16 train step vs HubertModel bf16, {preset}, {clips} x {seconds:g} s, {s.device}"
    ratio_line(what, t["ours"], t["hf"], target=None if s.quick else 1.2)
    ratio = t["hf"] / t["ours"]
    return [
        Row(
            f"backbone: ours vs HubertModel output, fp32 on {s.device} (relative L2)",
            f"{agreement:.1e}",
            "< 1e-3",
            agreement < 1e-3,
        ),
        Row(
            f"backbone: bf16 step, {preset} {clips} x {seconds:g} s: HF s / ours s",
            f"{ratio:.2f}x ({t['hf'] * 1e3:.1f} / {t['ours'] * 1e3:.1f} ms)",
            "(tiny: none)" if s.quick else ">= 1.2x",
            None if s.quick else ratio >= 1.2,
        ),
    ]


# --------------------------------------------------------------------------- 3. cqt
def check_cqt(s: Settings) -> list[Row]:
    import librosa

    params = {"n_bins": 84, "bins_per_octave": 12} if s.quick else {}  # MERT's: 336 bins, 48/octave
    registry = get_registry()
    teacher = registry.build("teacher", "cqt", params).eval().to(s.device)
    on_cpu = registry.build("teacher", "cqt", params).eval()
    p = teacher.params
    count = 2 if s.quick else 8
    clips = demo_clips(count, s.seconds, quick=s.quick)
    batch = torch.stack(clips)
    lengths = torch.full((count,), batch.shape[1])
    device_batch, device_lengths = batch.to(s.device), lengths.to(s.device)
    kw = dict(
        sr=p.sample_rate, hop_length=p.hop_length, fmin=p.fmin, n_bins=p.n_bins, bins_per_octave=p.bins_per_octave
    )
    with torch.no_grad():
        ours = synced(lambda: teacher.targets(device_batch, device_lengths), s.device)
        t = interleaved(
            {"ours": ours, "librosa": lambda: [np.abs(librosa.cqt(c.numpy(), **kw)) for c in clips]}, s.repeats
        )
        error = relative_l2(teacher.targets(device_batch, device_lengths).values, on_cpu.targets(batch, lengths).values)
    target = 2.0 if s.device == "cpu" else 20.0
    what = f"cqt teacher on {s.device} vs librosa.cqt, {count} x {s.seconds:g} s, {p.n_bins} bins"
    ratio_line(what, t["ours"], t["librosa"], target=None if s.quick else target)
    ratio = t["librosa"] / t["ours"]
    return [
        Row(
            f"cqt: {p.n_bins} bins, {count} x {s.seconds:g} s: librosa s / ours s on {s.device}",
            f"{ratio:.1f}x ({t['librosa'] * 1e3:.0f} / {t['ours'] * 1e3:.1f} ms)",
            "(tiny: none)" if s.quick else f">= {target:g}x",
            None if s.quick else ratio >= target,
        ),
        Row(f"cqt: targets on {s.device} vs on the CPU (relative L2)", f"{error:.1e}", "< 1e-3", error < 1e-3),
    ]


# --------------------------------------------------------------------------- 4. memory
def step_peak_bytes(preset: str, s: Settings, clips: int, seconds: float) -> int:
    """Peak memory of one bf16-autocast train step (AdamW, after a warm-up step) of ``preset``:
    GPU memory allocated on CUDA, resident-set growth on the CPU."""
    backbone = get_registry().build("backbone", "transformer", {"preset": preset, "layer_drop": 0.0})
    backbone = backbone.to(s.device).train()
    wav = torch.randn(clips, int(seconds * backbone.sample_rate), device=s.device)

    def loss() -> torch.Tensor:
        with torch.autocast(device_type=s.device, dtype=torch.bfloat16):
            return backbone(wav).hidden_states[-1].float().pow(2).mean()

    step = synced(train_step(backbone, loss), s.device)
    step()  # warm-up: the optimizer state exists from here on
    if s.device != "cuda":
        return peak_rss_delta(step)[1]
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_allocated()


def check_memory(s: Settings) -> list[Row]:
    presets = ["tiny"] if s.quick else ["base", "large"]
    kind = "peak GPU memory" if s.device == "cuda" else "peak RSS growth"
    rows = []
    for preset in presets:
        peak = step_peak_bytes(preset, s, s.clips, s.seconds)
        if s.device == "cuda":
            torch.cuda.empty_cache()  # the model and its optimizer are gone with the call
        rows.append(
            Row(
                f"memory: {kind}, {preset} bf16 train step (AdamW), {s.clips} x {s.seconds:g} s",
                f"{peak / 2**30:.2f} GiB",
            )
        )
    return rows


# --------------------------------------------------------------------------- 5. tests
def check_tests(s: Settings) -> list[Row]:
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TESTS]
    out = run_command(argv, REPO, 480)
    summary = next(
        (line for line in reversed(out.stdout.splitlines()) if re.search(r"\d+ (passed|skipped|failed)", line)), ""
    )
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|skipped|failed|error)", summary)}
    if s.device != "cuda":
        return [
            Row(
                "tests: pytest -m gpu (no CUDA: all skip)",
                summary.strip("= ") or last_error(out),
                "exit 0",
                out.returncode == 0,
            )
        ]
    return [
        Row(
            "tests: pytest -m gpu",
            summary.strip("= ") or last_error(out),
            "exit 0, none skipped" if s.gpus > 1 else "exit 0 (resharding skips on 1 GPU)",
            out.returncode == 0 and (s.gpus < 2 or not counts.get("skipped")),
        )
    ]


CHECKS: dict[str, Callable[[Settings], list[Row]]] = {
    "train": check_train,
    "backbone": check_backbone,
    "cqt": check_cqt,
    "memory": check_memory,
    "tests": check_tests,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Tiny sizes, every section (on the CPU without CUDA).")
    p.add_argument("--device", choices=["cuda", "cpu"], help="Default: cuda; with --quick and no CUDA: cpu.")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"Comma-separated sections of {', '.join(SECTIONS)}.")
    p.add_argument("--steps", type=int, help="Training steps before the resume (default 50; --quick 3).")
    p.add_argument("--repeats", type=int, default=5, help="Timed repeats (median; --quick 1).")
    p.add_argument("--work", help="Folder for the run's data, checkpoints and MLflow store (default: a temporary one).")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = args.device or ("cuda" if cuda or not args.quick else "cpu")
    if device == "cuda" and not cuda:
        print(
            "gpu_check: no CUDA device is visible (torch.cuda.is_available() is false), so there is nothing to "
            "check here; `bench/gpu_check.py --quick` runs the same steps tiny on the CPU"
        )
        return 0
    sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in sections if name not in CHECKS]
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(unknown)} (expected {', '.join(SECTIONS)})")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mertlab-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    s = Settings(
        device=device,
        quick=args.quick,
        gpus=torch.cuda.device_count() if device == "cuda" else 0,
        steps=args.steps or (3 if args.quick else 50),
        repeats=1 if args.quick else args.repeats,
        work=work,
    )
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(s.gpus)) if s.gpus else "CPU"
    print(f"# gpu_check: torch {torch.__version__}, {s.device} ({names}){', --quick (tiny sizes)' if s.quick else ''}")
    torch.manual_seed(0)
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        for name in sections:
            section_start = time.perf_counter()
            try:
                found = CHECKS[name](s)
            except Exception as exc:  # noqa: BLE001 - one section failing must not hide the others
                traceback.print_exc()
                found = [
                    Row(
                        f"{name}: error",
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}",
                        "",
                        False,
                    )
                ]
            print(f"# {name}: {time.perf_counter() - section_start:.0f} s")
            rows.extend(found)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n## gpu_check ({time.perf_counter() - started:.0f} s in all)\n")
    verdict = {True: "ok", False: "FAILED", None: "-"}
    table(
        ["check", "measured", "expected", "verdict"], [[r.check, r.measured, r.expected, verdict[r.ok]] for r in rows]
    )
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
