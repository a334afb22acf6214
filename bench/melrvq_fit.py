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

    .venv/bin/python bench/melrvq_fit.py [--quick] [--repeats 5] [--threads 1] [--no-fit]

``--quick``: a tiny tokenizer on 4 short clips (seconds; no meaningful numbers).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from _timing import interleaved, parser, ratio_line, setup
from mertlab.experiment.spec import load_spec
from mertlab.plugins.teachers.melrvq import MelRVQParams, MelRVQTeacher
from mertlab.teachers.fitting import fit_teachers
from mertlab.toolkit.rvq import ResidualLinearVQ, RVQFitSettings, _restart_dead_codes

QUICK_PARAMS = {"n_mels": 32, "n_codebooks": 2, "codebook_size": 64, "steps": 20, "batch_size": 256}


def muq_rvq_module():
    """MuQ's ``modules/rvq.py`` from the installed ``muq`` distribution (torch, numpy, einops only)."""
    dist = metadata.distribution("muq")
    path = next(f for f in dist.files if str(f).endswith("muq/modules/rvq.py"))
    spec = importlib.util.spec_from_file_location("muq_rvq", dist.locate_file(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        data = Path(tmp) / "demo"
        clips, seconds = ("4", "3") if quick else ("40", "6")  # mertlab demo-data's default set
        subprocess.run(
            [sys.executable, "-m", "mertlab", "demo-data", str(data), "--clips", clips, "--seconds", seconds]
            + ["--no-tasks", "--no-progress"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        params = {**(QUICK_PARAMS if quick else {}), "tokenizer": str(Path(tmp) / "tokenizer.safetensors")}
        spec = load_spec(
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


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--no-fit", action="store_true", help="Only the step comparison.")
    args = p.parse_args()
    setup(args)
    bench_step(args.repeats, args.quick)
    if not args.no_fit:
        bench_fit(args.quick)


if __name__ == "__main__":
    main()
