"""Mel-RVQ fitting: `mertlab teachers fit` on the quickstart data with the default params, and one
tokenizer training step against MuQ's own residual VQ.

* **fit**: the ``melrvq`` teacher with its defaults (MuQ's sizes: 128-bin mel, 4 frames stacked at
  25 Hz, 8 codebooks x 1024 codes x 16 dims; 2000 steps of 1024 frames), fitted as `mertlab
  teachers fit` fits it on the quickstart's data set (``mertlab demo-data``'s 40 clips x 6 s, the
  validation files held out; written to a temporary folder): passes of random 2 s crops until
  ``max_fit_frames`` (at most 20 passes), then the fit. Prints the wall time of each part and what
  the fit reports: the frames, the L1 reconstruction error and each codebook's perplexity.
* **step**: one optimisation step (forward, backward, Adam, dead-code restarts) on a batch of
  the default size (1024 frames of 512 dims) with the same sizes, ours (``mertlab.toolkit.rvq``) against
  MuQ's ``ResidualVectorQuantize`` (the ``muq`` package 0.1.0, ``src/muq/muq/modules/rvq.py``:
  weight-normalised 1x1 convolutions, the same losses and stale-code restarts; in the ``test``
  extra; its module is loaded from the installed distribution's file, which needs only torch, numpy
  and einops, where ``import muq`` would load MuQ-MuLan's text models too), interleaved, its
  "Replace N codes" prints silenced. RATIO = MuQ's step time / ours.

    .venv/bin/python bench/melrvq_fit.py [--quick] [--repeats 5] [--threads 1] [--fit-threads N] [--no-fit]
        [--compare-batches 1024,2048,4096]

``--quick``: a tiny tokenizer on 4 short clips (seconds; no meaningful numbers).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from _timing import interleaved, parser, ratio_line, setup
from mertlab.experiment.spec import load_spec
from mertlab.plugins.teachers.melrvq import MelRVQParams, MelRVQTeacher
from mertlab.teachers.fitting import fit_teachers
from mertlab.toolkit.rvq import ResidualLinearVQ, RVQFitSettings, _restart_dead_codes, fit_rvq

QUICK_PARAMS = {"n_mels": 32, "n_codebooks": 2, "codebook_size": 64, "steps": 20, "batch_size": 256}


def muq_rvq_module():
    """MuQ's ``modules/rvq.py`` from the installed ``muq`` distribution (torch, numpy, einops only)."""
    dist = metadata.distribution("muq")
    path = next(f for f in dist.files if str(f).endswith("muq/modules/rvq.py"))
    spec = importlib.util.spec_from_file_location("muq_rvq", dist.locate_file(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quickstart_melrvq_spec(folder: Path, quick: bool, params: dict):
    """experiments/quickstart.yaml with a melrvq teacher (``params`` on its defaults, or the
    quick ones) on ``mertlab demo-data``'s default set (40 clips x 6 s) written to ``folder``."""
    data = folder / "demo"
    clips, seconds = ("4", "3") if quick else ("40", "6")
    subprocess.run(
        [sys.executable, "-m", "mertlab", "demo-data", str(data), "--clips", clips, "--seconds", seconds]
        + ["--no-tasks", "--no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    params = {**(QUICK_PARAMS if quick else {}), **params}
    return load_spec(
        "experiments/quickstart.yaml",
        [
            f"data.path={data}",
            "data.generate_demo=false",
            "data.target_cache=null",
            "probe=null",
            f"teachers={{mel: {{name: melrvq, params: {params}}}}}",
            "objectives={mel_pred: {name: linear_classification, teacher: mel}}",
        ],
    )


def bench_fit(quick: bool) -> None:
    """``mertlab teachers fit`` of a melrvq teacher on the quickstart data, timed by part."""
    timings: dict[str, float] = {}
    collect = MelRVQTeacher.standardised_fit_frames

    def timed_collect(self, *args, **kwargs):  # the frames part of fit(): crops -> log-mel frames
        start = time.perf_counter()
        out = collect(self, *args, **kwargs)
        timings["frames"] = time.perf_counter() - start
        return out

    MelRVQTeacher.standardised_fit_frames = timed_collect
    with tempfile.TemporaryDirectory(prefix="mertlab-melrvq-") as tmp:
        spec = quickstart_melrvq_spec(Path(tmp), quick, {"tokenizer": str(Path(tmp) / "tokenizer.safetensors")})
        start = time.perf_counter()
        (fitted,) = fit_teachers(spec, progress=False)
        total = time.perf_counter() - start
    MelRVQTeacher.standardised_fit_frames = collect
    report = fitted.report
    print(f"\n## mertlab teachers fit: melrvq {'(quick params)' if quick else '(defaults)'} on the quickstart data")
    print(
        f"total {total:.1f} s = frames {timings['frames']:.1f} s ({fitted.passes} passes of random crops, "
        f"{report['frames']:.0f} frames) + fit {total - timings['frames']:.1f} s"
    )
    print(
        f"recon_l1 {report['recon_l1']:.4f}; perplexity per codebook: "
        + ", ".join(f"{report[k]:.0f}" for k in sorted(report) if k.startswith("perplexity/"))
    )


def bench_step(repeats: int, quick: bool) -> None:
    """One tokenizer training step, ours vs MuQ's ResidualVectorQuantize, same sizes and data."""
    p = MelRVQParams()
    width = p.n_mels * p.stack_frames
    n_codebooks, size, dim, batch, width = (
        (2, 64, 16, 256, 64) if quick else (p.n_codebooks, p.codebook_size, p.codebook_dim, p.batch_size, width)
    )
    settings = RVQFitSettings(batch_size=batch, lr=p.lr, dead_code_steps=p.dead_code_steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=g)
    ours = ResidualLinearVQ(width, n_codebooks, size, dim)
    ours.init_codebooks(x, torch.Generator().manual_seed(0))
    ours.train()
    ours_optim = torch.optim.Adam(ours.parameters(), lr=settings.lr)
    stale = torch.zeros(n_codebooks, size)

    def our_step() -> None:
        out = ours(x)
        loss = out.residual.abs().mean() + settings.codebook_weight * out.codebook
        loss = loss + settings.commitment_weight * out.commitment
        ours_optim.zero_grad(set_to_none=True)
        loss.backward()
        ours_optim.step()
        _restart_dead_codes(ours, out, stale, settings.dead_code_steps, g)

    muq = (
        muq_rvq_module()
        .ResidualVectorQuantize(
            input_dim=width, n_codebooks=n_codebooks, codebook_size=size, codebook_dim=dim, stale_tolerance=100
        )
        .train()
    )
    muq_optim = torch.optim.Adam(muq.parameters(), lr=settings.lr)
    frames = x.T.reshape(width, 16, batch // 16).permute(1, 0, 2).contiguous()  # [clips, dim, frames]

    def muq_step() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # MuQ prints each stale-code restart
            z_q, _, _, commitment, codebook, _ = muq(frames)
        loss = muq.get_loss(frames, z_q, commitment, codebook)
        muq_optim.zero_grad(set_to_none=True)
        loss.backward()
        muq_optim.step()

    t = interleaved({"ours": our_step, "muq": muq_step}, repeats)
    print(
        f"\n## one tokenizer step: {batch} frames x {width} dims, {n_codebooks} codebooks x {size} codes x {dim} dims"
    )
    print(f"ours {t['ours'] * 1000:.0f} ms, MuQ's ResidualVectorQuantize {t['muq'] * 1000:.0f} ms")
    ratio_line("Mel-RVQ step vs MuQ's ResidualVectorQuantize", t["ours"], t["muq"])


def compare_batches(batch_sizes: list[int], quick: bool) -> None:
    """The tokenizer fitted with each batch size (default steps) on the frames `teachers fit`
    collects from the quickstart data; the L1 reconstruction error on the frames of the held-out
    validation files (whole files) and each fit's time."""
    from mertlab.data.audio import load_audio
    from mertlab.data.files import split_files
    from mertlab.data.source import scan_dataset
    from mertlab.teachers.fitting import crop_batches, fit_passes
    from mertlab.toolkit.code_usage import codebook_perplexities
    from mertlab.toolkit.frame_features import collect_frames, fit_statistics

    with tempfile.TemporaryDirectory(prefix="mertlab-melrvq-") as tmp:
        spec = quickstart_melrvq_spec(Path(tmp), quick, {})
        teacher = MelRVQTeacher(MelRVQParams(**(QUICK_PARAMS if quick else {})))
        files, held_out = split_files(scan_dataset(spec.data, teacher.sample_rate), spec.data.val_fraction)
        batches = crop_batches(spec, files, teacher.sample_rate, fit_passes(teacher, files, spec.data.crop_seconds))
        with torch.no_grad():
            x = collect_frames(teacher.feature, batches, teacher.params.max_fit_frames, "cpu", "melrvq", False)
            mean, std = fit_statistics(x)
            held = []
            for f in held_out:
                wav = load_audio(f.path, teacher.sample_rate)
                feats, lengths = teacher.feature(wav[None], torch.tensor([wav.numel()]))
                held.append(feats[0, : lengths[0]])
        x, held = (x - mean) / std, (torch.cat(held) - mean) / std
    p = teacher.params
    print(f"\n## batch size: {len(x)} fitting frames, {len(held)} held-out frames ({len(held_out)} validation files)")
    for batch in batch_sizes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            rvq = ResidualLinearVQ(x.shape[1], p.n_codebooks, p.codebook_size, p.codebook_dim)
        settings = RVQFitSettings(
            steps=p.steps, batch_size=batch, lr=p.lr, dead_code_steps=p.dead_code_steps, seed=p.seed
        )
        start = time.perf_counter()
        with torch.enable_grad():
            fit_rvq(rvq, x, settings, progress=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            codes = rvq.encode(held)
            error = float((rvq.decode(codes) - held).abs().mean())
        perplexity = codebook_perplexities(rvq.encode(x[:50_000]), [p.codebook_size] * p.n_codebooks)
        print(
            f"batch {batch}: {p.steps} steps in {seconds:.0f} s, held-out L1 {error:.4f}, "
            f"perplexity per codebook {', '.join(f'{v:.0f}' for v in perplexity)}"
        )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--no-fit", action="store_true", help="Leave out the `teachers fit` part.")
    p.add_argument(
        "--fit-threads",
        type=int,
        default=os.cpu_count(),
        help="Threads of the `teachers fit` part (default: every CPU, as `mertlab teachers fit` runs).",
    )
    p.add_argument(
        "--compare-batches",
        metavar="SIZES",
        help="Also fit with each of these batch sizes (e.g. 1024,2048,4096) and print the held-out error.",
    )
    args = p.parse_args()
    setup(args)
    bench_step(args.repeats, args.quick)
    with threadpool_limits(args.fit_threads):
        torch.set_num_threads(args.fit_threads)
        print(f"\n# teachers fit with {args.fit_threads} thread(s)")
        if not args.no_fit:
            bench_fit(args.quick)
        if args.compare_batches:
            compare_batches([int(b) for b in args.compare_batches.split(",")], args.quick)


if __name__ == "__main__":
    main()
