"""Teachers' hot paths vs the libraries a researcher would otherwise call, in audio-seconds/s.

* ``cqt`` teacher (MERT's settings: 336 bins, 48/octave, hop 320, fmin 32.7 Hz, 24 kHz) vs
  ``librosa.cqt`` with the same bins/hop/fmin, on one long clip and on a batch of 5 s clips;
  also ``implementation: fast`` vs ``exact`` (nnAudio CQT1992v2) and their largest difference.
* MFCC + deltas of the ``kmeans`` teacher (HuBERT iteration 1: 13 MFCC, n_fft 2048, 128 mels)
  vs ``librosa.feature.mfcc`` (same settings) + ``librosa.feature.delta`` twice.
* k-means assignment (200k x 39 features, 100 centroids) vs ``sklearn`` ``KMeans.predict``
  with the same centroids, at one thread each and at two.
* ``encodec`` teacher on a batch vs the ``encodec`` model's own ``encode`` one clip at a time
  (the same model: the batching gain) and the share of equal codes (batched convolutions round
  differently, so a few near-tie frames may pick another code).

Targets: CQT >= 2x librosa.cqt on CPU; k-means >= 1x sklearn.

    .venv/bin/python bench/teachers.py [--quick] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from _timing import demo_clips, interleaved, parser, ratio_line, setup, table
from mertlab.plugin_system.registry import get_registry

SR = 24000


def build_teacher(name: str, **params):
    return get_registry().build("teacher", name, params).eval()


def bench_cqt(clips: list[torch.Tensor], long: torch.Tensor, repeats: int, quick: bool) -> None:
    import librosa

    teacher = build_teacher("cqt")  # MERT's defaults; implementation: fast
    p = teacher.params
    kw = dict(
        sr=p.sample_rate, hop_length=p.hop_length, fmin=p.fmin, n_bins=p.n_bins, bins_per_octave=p.bins_per_octave
    )
    batch = torch.stack(clips)
    lengths = torch.full((len(clips),), batch.shape[1])
    with torch.no_grad():
        contenders = {
            "ours long": lambda: teacher.targets(long[None], torch.tensor([long.numel()])),
            "librosa long": lambda: np.abs(librosa.cqt(long.numpy(), **kw)),
            "ours batch": lambda: teacher.targets(batch, lengths),
            "librosa batch": lambda: [np.abs(librosa.cqt(c.numpy(), **kw)) for c in clips],
        }
        t = interleaved(contenders, repeats)
    long_s, batch_s = long.numel() / SR, batch.numel() / SR
    print(
        f"\n## cqt teacher vs librosa.cqt ({p.n_bins} bins, {p.bins_per_octave}/octave, hop {p.hop_length}, fmin "
        f"{p.fmin})"
    )
    table(
        ["input", "ours audio-s/s", "librosa audio-s/s"],
        [
            [f"1 x {long_s:.0f} s", long_s / t["ours long"], long_s / t["librosa long"]],
            [f"{len(clips)} x {batch.shape[1] / SR:.0f} s", batch_s / t["ours batch"], batch_s / t["librosa batch"]],
        ],
    )
    ratio_line(f"cqt teacher vs librosa.cqt, 1 x {long_s:.0f} s", t["ours long"], t["librosa long"], target=2)
    ratio_line(
        f"cqt teacher vs librosa.cqt, {len(clips)} x {batch.shape[1] / SR:.0f} s",
        t["ours batch"],
        t["librosa batch"],
        target=2,
    )
    if quick:
        return
    exact = build_teacher("cqt", implementation="exact")
    with torch.no_grad():
        t = interleaved(
            {
                "fast": lambda: teacher.targets(long[None], torch.tensor([long.numel()])),
                "exact": lambda: exact.targets(long[None], torch.tensor([long.numel()])),
            },
            max(1, repeats // 2),
        )
        a = teacher.targets(long[None], torch.tensor([long.numel()])).values
        b = exact.targets(long[None], torch.tensor([long.numel()])).values
    err = (a - b).abs()
    corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
    print(
        f"fast vs exact on {long_s:.0f} s of demo audio: relative L2 error {float(err.norm() / b.norm()):.2e}, "
        f"largest error {float(err.max() / b.max()):.2e} of the largest magnitude, correlation {corr:.9f}"
    )
    ratio_line("cqt implementation fast vs exact (nnAudio CQT1992v2)", t["fast"], t["exact"])


def bench_mfcc(long: torch.Tensor, repeats: int) -> None:
    import librosa

    teacher = build_teacher("kmeans", feature="mfcc")  # its feature needs no fitted state
    p, feature = teacher.params, teacher.feature
    lengths = torch.tensor([long.numel()])

    def peer():
        m = librosa.feature.mfcc(
            y=long.numpy(),
            sr=p.sample_rate,
            n_mfcc=p.n_mfcc,
            n_fft=p.n_fft,
            hop_length=p.hop_length,
            n_mels=p.n_mels,
            center=True,
            pad_mode="constant",
        )
        d1 = librosa.feature.delta(m)
        return np.concatenate([m, d1, librosa.feature.delta(d1)])

    with torch.no_grad():
        t = interleaved({"ours": lambda: feature(long[None], lengths), "librosa": peer}, repeats)
    seconds = long.numel() / SR
    print(
        f"\n## MFCC + deltas ({p.n_mfcc} x 3, n_fft {p.n_fft}, {p.n_mels} mels, hop {p.hop_length}) on "
        f"{seconds:.0f} s: "
        f"ours {seconds / t['ours']:.0f} audio-s/s, librosa {seconds / t['librosa']:.0f} audio-s/s"
    )
    ratio_line("kmeans teacher's MFCC features vs librosa.feature.mfcc + delta", t["ours"], t["librosa"])


def bench_kmeans(rows: int, repeats: int) -> None:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    import mertlab.plugins.teachers.kmeans as kmeans_teacher  # the assignment the teacher uses

    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 39, generator=g) * 3
    centroids = x[torch.randperm(rows, generator=g)[:100]] + 0.1
    km = KMeans(n_clusters=100, n_init=1, max_iter=1).fit(centroids.numpy())
    km.cluster_centers_ = centroids.numpy().astype(np.float32)
    xn = x.numpy()
    same = np.array_equal(kmeans_teacher.nearest_centroid(x, centroids).numpy(), km.predict(xn))
    print(f"\n## k-means assignment, {rows} x 39 features, 100 centroids (same labels as sklearn: {same})")
    default = torch.get_num_threads()
    for threads in sorted({default, 2}):  # 2: ours spreads blocks over threads, as sklearn does
        torch.set_num_threads(threads)
        with threadpool_limits(threads):
            t = interleaved(
                {"ours": lambda: kmeans_teacher.nearest_centroid(x, centroids), "sklearn": lambda: km.predict(xn)},
                repeats,
            )
        torch.set_num_threads(default)
        print(f"{threads} thread(s): ours {t['ours'] * 1e3:.1f} ms, sklearn {t['sklearn'] * 1e3:.1f} ms")
        ratio_line(
            f"k-means assignment vs sklearn KMeans.predict, {threads} thread(s)", t["ours"], t["sklearn"], target=1
        )


def bench_encodec(clips: list[torch.Tensor], repeats: int, quick: bool) -> None:
    params = {"pretrained": False, "bandwidth": 1.5 if quick else 6.0, "init_seconds": 1.0 if quick else 8.0}
    teacher = build_teacher("encodec", **params)
    model = teacher.model  # the encodec package's EncodecModel the teacher holds
    batch = torch.stack(clips)
    lengths = torch.full((len(clips),), batch.shape[1])

    def own():
        return [model.encode(c[None, None])[0][0] for c in clips]

    with torch.no_grad():
        t = interleaved({"ours": lambda: teacher.targets(batch, lengths), "encodec": own}, repeats)
        ours = teacher.targets(batch, lengths).values
        peer = torch.cat([codes[:, : teacher.info.dim].transpose(1, 2) for codes in own()])
    seconds = batch.numel() / SR
    print(
        f"\n## encodec teacher ({params}) on {len(clips)} x {batch.shape[1] / SR:.0f} s: "
        f"ours {seconds / t['ours']:.1f} audio-s/s, "
        f"EncodecModel.encode per clip {seconds / t['encodec']:.1f} audio-s/s; "
        f"codes agree: {100 * float((ours == peer).float().mean()):.2f}%"
    )
    ratio_line(f"encodec teacher (batch of {len(clips)}) vs EncodecModel.encode per clip", t["ours"], t["encodec"])


def main() -> None:
    args = parser(__doc__).parse_args()
    setup(args)
    if args.quick:
        warnings.filterwarnings("ignore", message="n_fft=.* is too large")  # librosa on 2 s clips
    n, seconds = (2, 2.0) if args.quick else (8, 5.0)
    clips = demo_clips(n, seconds, quick=args.quick)
    long = torch.cat(demo_clips(1 if args.quick else 6, 2.0 if args.quick else 5.0, seed=1, quick=args.quick))  # 30 s
    bench_cqt(clips, long, args.repeats, args.quick)
    bench_mfcc(long, args.repeats)
    bench_kmeans(5_000 if args.quick else 200_000, args.repeats if args.quick else 3 * args.repeats)
    bench_encodec(clips, args.repeats, args.quick)


if __name__ == "__main__":
    main()
