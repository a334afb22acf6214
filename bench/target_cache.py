"""Training-step throughput: targets read from the cache vs teachers run on the fly.

Peer: the on-the-fly path (EnCodec + CQT teachers run on every batch), measured in the same
process on the same batches, so the printed ratio is robust to a noisy machine.

    .venv/bin/python bench/target_cache.py [--steps 20] [--spec experiments/quickstart.yaml]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mertlab.data.datamodule import AudioDataModule
from mertlab.experiment.spec import load_spec
from mertlab.teachers.target_cache import build_teacher_cache
from mertlab.train.module import PretrainModule
from mertlab.train.run import prepare_data


def seconds_per_step(module: PretrainModule, batches: list, repeats: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="experiments/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=10, help="batches timed per mode")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache_dir:
        on_the_fly = load_spec(args.spec, ["data.target_cache=null"])
        cached = load_spec(args.spec, [f"data.target_cache={cache_dir}"])
        prepare_data(on_the_fly)
        live = PretrainModule(on_the_fly)
        data = AudioDataModule(on_the_fly.data, live.backbone.sample_rate, on_the_fly.seed)
        data.setup()
        loader = iter(data.train_dataloader())
        batches = [next(loader) for _ in range(min(args.steps, len(data.train_files) // on_the_fly.data.batch_size))]
        files = sorted({f for b in batches for f in b.files}, key=lambda f: str(f.path))
        reader = PretrainModule(cached)
        reader.load_state_dict(live.state_dict())
        build_start = time.perf_counter()
        for alias, teacher in reader.teachers.items():
            build_teacher_cache(teacher, files, cache_dir, alias=alias, progress=False)
        build = time.perf_counter() - build_start
        seconds_per_step(live, batches[:1], 1)  # warm-up both paths
        seconds_per_step(reader, batches[:1], 1)
        t_live = seconds_per_step(live, batches, 1)
        t_cached = seconds_per_step(reader, batches, 1)
    audio = sum(float(b.lengths.sum()) for b in batches) / live.backbone.sample_rate / len(batches)
    print(f"spec {args.spec}: {len(batches)} batches of {audio:.1f} s audio; cache build for {len(files)} files took {build:.1f} s")
    print(f"on the fly (peer): {t_live:.3f} s/step   cached: {t_cached:.3f} s/step   speed-up: {t_live / t_cached:.1f}x")


if __name__ == "__main__":
    main()
