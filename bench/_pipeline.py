"""Shared set-up of the bench scripts that run mertlab's own training pipeline (spec -> data
module -> PretrainModule -> target cache): a demo data set in a temporary folder, the batches,
and a timed train step. Everything is reached through the spec, as ``mertlab train`` does."""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from _timing import parser, setup, write_demo_data
from mertlab.data.datamodule import AudioDataModule
from mertlab.experiment.spec import load_spec
from mertlab.teachers.target_cache import build_teacher_cache
from mertlab.train.module import PretrainModule


def pipeline_args(
    doc: str, batches: int, quick_batches: int, spec: str = "experiments/quickstart.yaml"
) -> argparse.Namespace:
    """The command line of a pipeline bench: ``--quick``, ``--repeats``, ``--spec`` and
    ``--batches``; sets ``clips``/``seconds`` of the demo set (quickstart-sized, or tiny)."""
    p = parser(doc)
    p.add_argument("--spec", default=spec, help="Experiment spec whose pipeline is timed.")
    p.add_argument("--batches", type=int, default=batches, help="Batches timed per setting.")
    args = p.parse_args()
    setup(args)
    args.clips, args.seconds = (6, 2.5) if args.quick else (40, 6.0)  # 40 x 6 s: mertlab demo-data's default set
    if args.quick:
        args.batches = quick_batches
    return args


def demo_spec(args: argparse.Namespace, folder: Path, cached: bool):
    """``args.spec`` loaded with its data moved to ``folder`` (``args.clips`` generated demo clips
    of ``args.seconds``, written on first use) and the target cache in ``folder/cache``
    (``cached``) or none (teachers on the fly). ``args.quick``: random-init codec teachers fit
    their codebooks on 1 s of audio instead of their default (seconds of k-means at start), and
    batches hold 2 clips."""
    spec_path, clips, seconds, quick = args.spec, args.clips, args.seconds, args.quick
    data = folder / "demo"
    if not data.exists():
        write_demo_data(data, clips, seconds)
    cache = f"data.target_cache={folder / 'cache'}" if cached else "data.target_cache=null"
    overrides = [f"data.path={data}", "data.generate_demo=false", cache]
    if quick:
        overrides.append("data.batch_size=2")
        spec = load_spec(spec_path, overrides)
        overrides += [
            f"teachers.{alias}.params.init_seconds=1.0"
            for alias, t in spec.teachers.items()
            if t.name in ("encodec", "dac") and t.params.get("pretrained") is False
        ]
    return load_spec(spec_path, overrides)


def data_module(spec, module: PretrainModule) -> AudioDataModule:
    data = AudioDataModule(spec.data, module.backbone.sample_rate, spec.seed)
    data.setup()
    return data


def build_caches(module: PretrainModule, files: list, cache_dir: str) -> float:
    """Seconds to compute and store every teacher's targets of ``files`` (the first epoch's teacher work)."""
    start = time.perf_counter()
    for alias, teacher in module.teachers.items():
        build_teacher_cache(teacher, files, cache_dir, alias=alias, progress=False)
    return time.perf_counter() - start


def batches_forever(loader) -> Iterator:
    """The loader's batches, epoch after epoch."""
    return itertools.chain.from_iterable(iter(loader) for _ in itertools.count())


def targets_of(module: PretrainModule, batch) -> dict:
    """The teachers' targets of ``batch`` aligned to the backbone (from the cache or on the fly)."""
    num_frames, frame_lengths, _ = module.frame_padding(batch.wav, batch.lengths)
    return module.compute_targets(batch, num_frames, frame_lengths)


def audio_seconds(batches: list, sample_rate: int) -> float:
    return sum(float(b.lengths.sum()) for b in batches) / sample_rate


def seconds_per_step(module: PretrainModule, batches: list, repeats: int = 1) -> float:
    """Mean seconds of one train step (targets, forward, loss, backward, AdamW) over ``batches``."""
    optimizer = torch.optim.AdamW([p for n, p in module.named_parameters() if not n.startswith("teachers.")], lr=1e-4)
    module.train()
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            loss, _, _ = module.shared_step(batch, 0, "train")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return (time.perf_counter() - start) / (repeats * len(batches))
