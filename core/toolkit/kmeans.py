"""Mini-batch k-means on torch (Sculley 2010), seeded, for teachers that fit a codebook.

>>> centroids = fit_minibatch_kmeans(features, n_clusters=100, seed=0)
>>> codes = nearest_centroid(features, centroids)

Runs on the device of ``x`` (GPU when the features are there). Each iteration draws a random
mini-batch, assigns it to the nearest centroids, and moves every centroid towards the mean of
its points with step ``points_in_batch / points_seen_so_far`` -- so each centroid converges to
the running mean of everything assigned to it. That running mean still remembers assignments
made while the centroids were far off, so a few full-data Lloyd steps (assign all rows, move
each centroid to the mean of its rows) finish the fit.

:func:`lloyd_kmeans` is plain Lloyd's k-means (distinct random rows as the initial centroids),
optionally spherical (cosine), for small samples such as the codec teachers' random-init
codebooks; both fits share one Lloyd step.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mertlab.errors import MertlabError

KMeansInit = Literal["kmeans++", "random"]
# Rows per distance block: bounds the [rows, k] distance matrix (64k x 4096 floats = 1 GiB at most).
_CHUNK = 65536


def nearest_centroid(x: Tensor, centroids: Tensor, spherical: bool = False) -> Tensor:
    """``[N]`` index of the closest centroid (squared Euclidean) for each row of ``x`` ``[N, D]``;
    ``spherical``: the largest dot product instead (cosine, for L2-normalised rows and centroids).
    Ties go to the lowest index.

    Blocks of rows small enough for the cache, scored by one GEMM each (``||c||^2 - 2 x.c``:
    ``||x||^2`` is the same for every centroid; ``-x.c`` when spherical), then the argmin. No
    ``[N, K]`` matrix, no ``cdist``. On CPU (:func:`_nearest_on_cpu`) as scikit-learn's
    ``KMeans.predict`` does it, and at least as fast (``bench/teachers.py``).
    """
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    if len(x) == 0:
        return out
    if spherical:
        bias, alpha = torch.zeros(len(centroids), dtype=centroids.dtype, device=centroids.device), -1
    else:
        bias, alpha = (centroids * centroids).sum(1), -2
    rows = max(256, min(8192, (1 << 18) // max(1, len(centroids))))  # a [rows, K] block of ~1 MiB
    dtype = torch.result_type(x, centroids)
    if x.device.type == "cpu" and dtype in (torch.float32, torch.float64):
        _nearest_on_cpu(
            x.detach().to(dtype), torch.cat([alpha * centroids.T, bias[None]]).detach().to(dtype), rows, out
        )
        return out
    c_t = centroids.T.contiguous()
    for start in range(0, len(x), rows):
        torch.argmin(torch.addmm(bias, x[start : start + rows], c_t, alpha=alpha), 1, out=out[start : start + rows])
    return out


@lru_cache(maxsize=1)
def _blas_pools() -> Any:
    from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

    return ThreadpoolController()


def _nearest_on_cpu(x: Tensor, weights: Tensor, rows: int, out: Tensor) -> None:
    """``out[i] = argmin_k [x_i, 1] @ weights[:, k]`` (``weights``: ``[D + 1, K]``, the bias as its
    last row), block by block with NumPy: its OpenBLAS GEMM (faster than torch's MKL on AMD CPUs)
    on rows padded with a column of ones, so the bias costs no extra pass, and its SIMD argmin
    (~2.5x torch's over rows of ~100). As scikit-learn does, BLAS runs single-threaded and the
    blocks are spread over ``torch.get_num_threads()`` threads (both release the GIL): one
    fork/join per call, not one per small GEMM, which stalls whenever a core is busy elsewhere."""
    x_np, w_np, out_np = x.numpy(), weights.numpy(), out.numpy()
    dim = x_np.shape[1]
    starts = range(0, len(x_np), rows)

    def assign(part: range) -> None:  # one worker: its own buffers; blocks start, start + step, ...
        padded = np.ones((min(rows, len(x_np)), dim + 1), dtype=x_np.dtype)
        scores = np.empty((len(padded), w_np.shape[1]), dtype=x_np.dtype)
        for start in part:
            n = min(rows, len(x_np) - start)
            padded[:n, :dim] = x_np[start : start + n]
            np.matmul(padded[:n], w_np, out=scores[:n])
            np.argmin(scores[:n], axis=1, out=out_np[start : start + n])

    threads = min(torch.get_num_threads(), len(starts) // 4)  # a pool pays off from a few blocks per thread
    with _blas_pools().limit(limits=1, user_api="blas"):
        if threads <= 1:
            assign(starts)
            return
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(assign, [starts[i::threads] for i in range(threads)]))


def _sq_dist_to_nearest(x: Tensor, centroids: Tensor) -> Tensor:
    d = torch.cat([torch.cdist(block, centroids).amin(1) for block in x.split(_CHUNK)])
    return d * d


def kmeans_plusplus(x: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance from the centres chosen so far."""
    first = int(torch.randint(len(x), (1,), generator=generator, device="cpu").item())
    centroids = [x[first]]
    dist = _sq_dist_to_nearest(x, x[first : first + 1])
    for _ in range(1, n_clusters):
        total = dist.sum()
        # all remaining points coincide with a centre (fewer distinct points than clusters): pick uniformly
        probs = dist / total if total > 0 else torch.full_like(dist, 1.0 / len(dist))
        pick = int(torch.multinomial(probs.double().cpu(), 1, generator=generator).item())
        centroids.append(x[pick])
        dist = torch.minimum(dist, _sq_dist_to_nearest(x, x[pick : pick + 1]))
    return torch.stack(centroids)


def fit_minibatch_kmeans(
    x: Tensor,
    n_clusters: int,
    *,
    n_iter: int = 100,
    batch_size: int = 10000,
    init: KMeansInit = "kmeans++",
    seed: int = 0,
    lloyd_steps: int = 5,
    progress: bool = True,
) -> Tensor:
    """Fit ``n_clusters`` centroids ``[K, D]`` (float32) to the rows of ``x`` ``[N, D]``.

    Deterministic for a given ``seed`` and device. k-means++ seeds on a random subset of
    ``3 * batch_size`` rows (as scikit-learn's MiniBatchKMeans), ``random`` picks distinct rows.
    ``lloyd_steps`` full-data Lloyd iterations follow the ``n_iter`` mini-batch ones (they stop
    early once no assignment changes); a cluster left empty keeps its centroid.
    """
    if x.dim() != 2:
        raise MertlabError(f"k-means expects features [frames, dim], got shape {tuple(x.shape)}")
    if len(x) < n_clusters:
        raise MertlabError(f"k-means needs at least n_clusters={n_clusters} frames to fit, got {len(x)}")
    if not bool(torch.isfinite(x).all()):
        raise MertlabError("k-means features contain NaN or inf")
    x = x.float()
    generator = torch.Generator().manual_seed(seed)  # CPU generator: same draws on every device
    n = len(x)
    if init == "kmeans++":
        subset = torch.randperm(n, generator=generator)[: max(3 * batch_size, n_clusters)].to(x.device)
        centroids = kmeans_plusplus(x[subset], n_clusters, generator)
    else:
        centroids = x[torch.randperm(n, generator=generator)[:n_clusters].to(x.device)].clone()
    seen = torch.zeros(n_clusters, device=x.device)
    for _ in tqdm(range(n_iter), desc="k-means", unit="iter", disable=not progress, leave=False):
        rows = torch.randperm(n, generator=generator)[:batch_size].to(x.device)
        batch = x[rows]
        assign = nearest_centroid(batch, centroids)
        count = torch.bincount(assign, minlength=n_clusters).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, batch)
        seen += count
        hit = count > 0
        # c <- c + (sum_batch - n_batch * c) / n_seen  ==  running mean of assigned points
        centroids[hit] += (sums[hit] - count[hit, None] * centroids[hit]) / seen[hit, None]
    return _lloyd(x, centroids, lloyd_steps)


def lloyd_kmeans(
    x: Tensor, n_clusters: int, *, n_iter: int, generator: torch.Generator, spherical: bool = False
) -> Tensor:
    """Lloyd's k-means of the rows of ``x`` ``[N, D]`` (``N >= n_clusters``) into ``[n_clusters, D]``
    centroids: ``n_clusters`` distinct random rows (drawn with ``generator``), then at most
    ``n_iter`` Lloyd steps (fewer once no assignment changes: the rest would change nothing).

    ``spherical``: cluster directions -- rows and centroids L2-normalised, nearest by cosine (as
    DAC's codebook lookup). Runs on the device of ``x``; a cluster left empty keeps its centroid.
    """
    if not 1 <= n_clusters <= len(x):
        raise MertlabError(
            f"k-means needs 1 <= n_clusters <= number of rows; got n_clusters={n_clusters}, {len(x)} rows"
        )
    x = x.float()
    if spherical:
        x = torch.nn.functional.normalize(x, dim=1)
    centroids = x[torch.randperm(len(x), generator=generator)[:n_clusters].to(x.device)].clone()
    return _lloyd(x, centroids, n_iter, spherical)


def _lloyd(x: Tensor, centroids: Tensor, steps: int, spherical: bool = False) -> Tensor:
    """The centroids after up to ``steps`` Lloyd steps from ``centroids`` (which may be updated in
    place): assign every row to its nearest centroid, move each centroid to the mean of its rows
    (re-normalised when ``spherical``; an empty cluster keeps its centroid); stop early once no
    assignment changes, since the remaining steps would repeat the last one exactly."""
    previous = None
    for _ in range(steps):
        assign = nearest_centroid(x, centroids, spherical)
        if previous is not None and torch.equal(assign, previous):
            break
        count = torch.bincount(assign, minlength=len(centroids)).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        hit = count > 0
        centroids[hit] = sums[hit] / count[hit, None]
        if spherical:
            centroids = torch.nn.functional.normalize(centroids, dim=1)
        previous = assign
    return centroids
