"""Data-pipeline headroom: audio-seconds/s the pipeline delivers vs what a train step consumes.

Delivered: mertlab's training loader (decode + resample + random crop + collate) with 0 and 2
worker processes, plus the cached targets of each batch read and aligned, as in training.
Consumed: the train step of the spec's model (targets from the cache, forward, loss, backward,
AdamW) on the same batches. Headroom = delivered / consumed (>= 1: the model never waits on data;
with workers the loading overlaps the step, without it adds to it).

Target: headroom >= 3x at the quickstart's size (its tiny transformer, batches of 8 x 2 s).

    .venv/bin/python bench/dataloader.py [--quick] [--spec experiments/quickstart.yaml] [--batches 20]
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

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
from _timing import ratio_value, table
from mertlab.train.module import PretrainModule


def delivered(spec, module: PretrainModule, workers: int, count: int) -> tuple[float, list]:
    """Audio-seconds/s of ``count`` batches from a loader with ``workers`` processes (after its first batch)."""
    data = data_module(spec.model_copy(update={"data": spec.data.model_copy(update={"num_workers": workers})}), module)
    stream = batches_forever(data.train_dataloader())
    targets_of(module, next(stream))  # workers started, files opened
    start = time.perf_counter()
    batches = []
    for batch in itertools.islice(stream, count):
        targets_of(module, batch)
        batches.append(batch)
    return audio_seconds(batches, module.backbone.sample_rate) / (time.perf_counter() - start), batches


def main() -> None:
    args = pipeline_args(__doc__, batches=20, quick_batches=3)
    count = args.batches
    with tempfile.TemporaryDirectory() as tmp:
        spec = demo_spec(args, Path(tmp), cached=True)
        module = PretrainModule(spec)
        files = data_module(spec, module).train_files
        build_caches(module, files, spec.data.target_cache)
        rows, rates = [], {}
        for workers in (0, 2):
            rates[workers], batches = delivered(spec, module, workers, count)
        seconds_per_step(module, batches[:1])  # warm-up
        step = seconds_per_step(module, batches, 1 if args.quick else 2)
        consumed = audio_seconds(batches, module.backbone.sample_rate) / len(batches) / step
    print(
        f"spec {args.spec}: batch {spec.data.batch_size} x {spec.data.crop_seconds:g} s, {len(files)} training files, "
        f"train step {step:.3f} s"
    )
    for workers, rate in rates.items():
        rows.append([f"{workers} workers", rate, consumed, rate / consumed])
    table(["loader", "delivered audio-s/s", "consumed audio-s/s", "headroom"], rows)
    for workers, rate in rates.items():
        ratio_value(
            f"data pipeline headroom, {workers} workers",
            rate / consumed,
            f"delivered {rate:.0f} / consumed {consumed:.0f} audio-s/s",
            target=3,
        )


if __name__ == "__main__":
    main()
