"""Target cache: the teachers' cost in epoch 2 (targets read from the cache) / epoch 1 (teachers
run), and the train-step speed-up it gives.

Epoch 1 runs every teacher of the spec on each batch (what the cache build does once per file);
epoch 2 reads and aligns the cached targets of the same batches. Default spec: the two-teacher
MERT recipe at quickstart size (``experiments/mert_tiny.yaml``: EnCodec + CQT; the quickstart
itself has the CQT teacher only). Peer for the step speed-up: the on-the-fly path (the
spec's teachers run on every batch), measured in
the same process on the same batches, so the ratios are robust to a noisy machine.

Target: cached epoch-2 teacher cost <= 5% of epoch 1.

    .venv/bin/python bench/target_cache.py [--quick] [--batches 10] [--spec experiments/mert_tiny.yaml]
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import torch

from _pipeline import (
    audio_seconds,
    batches_forever,
    build_caches,
    data_module,
    demo_spec,
    pipeline_args,
    seconds_per_step,
    targets_of,
)
from _timing import interleaved, ratio_line, ratio_value
from mertlab.train.module import PretrainModule


def main() -> None:
    args = pipeline_args(__doc__, batches=10, quick_batches=1, spec="experiments/mert_tiny.yaml")
    steps = args.batches
    with tempfile.TemporaryDirectory() as tmp:
        on_the_fly = demo_spec(args, Path(tmp), cached=False)
        cached = demo_spec(args, Path(tmp), cached=True)
        live = PretrainModule(on_the_fly)
        batches = list(itertools.islice(batches_forever(data_module(on_the_fly, live).train_dataloader()), steps))
        files = sorted({f for b in batches for f in b.files}, key=lambda f: str(f.path))
        reader = PretrainModule(cached)
        reader.load_state_dict(live.state_dict())
        build = build_caches(reader, files, cached.data.target_cache)
        with torch.no_grad():
            t = interleaved(
                {
                    "epoch 1": lambda: [targets_of(live, b) for b in batches],
                    "epoch 2": lambda: [targets_of(reader, b) for b in batches],
                },
                args.repeats,
            )
        seconds_per_step(live, batches[:1], 1)  # warm-up both paths
        seconds_per_step(reader, batches[:1], 1)
        t_live = seconds_per_step(live, batches, 1)
        t_cached = seconds_per_step(reader, batches, 1)
    audio = audio_seconds(batches, live.backbone.sample_rate)
    print(
        f"spec {args.spec}: {len(batches)} batches, {audio:.1f} s of audio; teachers {', '.join(live.teachers)}; "
        f"cache build for {len(files)} files took {build:.1f} s"
    )
    print(
        f"teacher cost per batch: epoch 1 (teachers run) {t['epoch 1'] / len(batches):.4f} s, "
        f"epoch 2 (cache read) {t['epoch 2'] / len(batches):.4f} s"
    )
    ratio_value(
        "teacher cost epoch 2 (cached) / epoch 1 (on the fly)",
        t["epoch 2"] / t["epoch 1"],
        f"{100 * t['epoch 2'] / t['epoch 1']:.1f}% of the teachers' time",
        target=0.05,
        at_most=True,
    )
    ratio_line("train step cached vs on the fly (peer)", t_cached, t_live)


if __name__ == "__main__":
    main()
