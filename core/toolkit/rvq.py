"""Residual vector quantisation through linear projections: the tokenizer of MuQ's Mel-RVQ.

MuQ (Zhu et al., 2025, "MuQ: Self-Supervised Music Representation Learning with Mel Residual
Vector Quantization", arXiv 2501.01108, Sec. 3.2 "Mel-RVQ"; released code
``src/muq/muq/modules/rvq.py``) quantises normalised mel frames with a stack of stages, each a
linear projection of the current residual into a small codebook space, the nearest code by
cosine, and a linear projection of that code back to the frame space; the next stage quantises
what is left::

    r_0 = x;   z_c = W_c r_c + b_c;   k_c = argmax_k cos(z_c, e_{c,k});   r_{c+1} = r_c - (V_c e_{c,k_c} + d_c)
    x_hat = sum_c (V_c e_{c,k_c} + d_c)

Training minimises ``|x - x_hat|_1 + codebook_weight * ||sg(z) - e||^2 + commitment_weight *
||z - sg(e)||^2`` (MuQ's code: weights 1.0 and 0.25) with a straight-through estimator, and
restarts codes left unused for ``dead_code_steps`` consecutive steps on random projected
frames of the current batch (MuQ's ``stale_tolerance``), so every code ends up used.

mertlab's choices where the paper is silent: plain linear layers (MuQ's code wraps them in
weight normalisation, a reparametrisation of the same function class), Adam, and codebooks
initialised by spherical k-means of each stage's projected frames (stage by stage) rather than
at random, which keeps all codes in use from the start.

The fit is vectorised where the residual chain allows: each stage's nearest codes come from one
blocked GEMM + argmin over the batch (:func:`mertlab.toolkit.kmeans.nearest_centroid`, as the
k-means teacher assigns), the initial k-means is Lloyd's (a full-data GEMM per iteration, no
sequential k-means++ seeding over 1024 codes) and the dead-code bookkeeping of all codebooks is
one histogram. The stages themselves are sequential by definition (each quantises what the
previous ones left). On CPU the fit runs torch on one thread (see :func:`fit_rvq`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mertlab.errors import MertlabError
from mertlab.toolkit.kmeans import lloyd_kmeans, nearest_centroid

# Rows per assignment block: bounds the [rows, codebook_size] similarity matrix.
_CHUNK = 16384
#: The initial k-means of each codebook runs on this many frames per code (at least).
INIT_ROWS_PER_CODE = 16


@dataclass
class RVQOutput:
    """``recon`` ``[N, D]``; ``residual`` ``[N, D]``: ``x - recon``, what the stages left;
    ``codes`` ``[N, C]``; ``latents``: per stage ``[N, d]`` projections; ``commitment`` /
    ``codebook``: the two VQ loss terms, summed over stages."""

    recon: Tensor
    residual: Tensor
    codes: Tensor
    latents: list[Tensor]
    commitment: Tensor
    codebook: Tensor


class ResidualLinearVQ(nn.Module):
    """``n_codebooks`` stages of (linear in, cosine nearest code, linear out) over residuals."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.input_dim, self.n_codebooks, self.codebook_size = input_dim, n_codebooks, codebook_size
        self.in_proj = nn.ModuleList(nn.Linear(input_dim, codebook_dim) for _ in range(n_codebooks))
        self.out_proj = nn.ModuleList(nn.Linear(codebook_dim, input_dim) for _ in range(n_codebooks))
        self.codebooks = nn.Parameter(torch.randn(n_codebooks, codebook_size, codebook_dim))

    def assign(self, z: Tensor, stage: int) -> Tensor:
        """``[N]`` index of the code of ``stage`` with the highest cosine similarity to each row of
        ``z`` (lowest index on ties)."""
        book = F.normalize(self.codebooks[stage].detach(), dim=-1)
        return nearest_centroid(F.normalize(z.detach(), dim=-1), book, spherical=True)

    def forward(self, x: Tensor) -> RVQOutput:
        """Quantise ``x`` ``[N, input_dim]``; differentiable (straight-through) for fitting."""
        residual = x
        codes, latents = [], []
        commitment = codebook = x.new_zeros(())
        for stage in range(self.n_codebooks):
            z = self.in_proj[stage](residual)
            index = self.assign(z, stage)
            q = self.codebooks[stage][index]
            commitment = commitment + F.mse_loss(z, q.detach())
            codebook = codebook + F.mse_loss(q, z.detach())
            out = self.out_proj[stage]  # residual - out(q): one fused GEMM (no [N, D] temporary)
            residual = torch.addmm(residual - out.bias, z + (q - z).detach(), out.weight.T, alpha=-1)
            codes.append(index)
            latents.append(z)
        # the stages' outputs sum to x - residual: one subtraction instead of a running sum
        return RVQOutput(x - residual, residual, torch.stack(codes, 1), latents, commitment, codebook)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """``[N, n_codebooks]`` int64 codes of ``x`` ``[N, input_dim]``."""
        return (
            torch.cat([self(block).codes for block in x.split(_CHUNK)])
            if len(x)
            else x.new_zeros(0, self.n_codebooks, dtype=torch.long)
        )

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """``[N, input_dim]`` reconstruction from ``[N, n_codebooks]`` codes."""
        return sum(self.out_proj[c](self.codebooks[c][codes[:, c]]) for c in range(self.n_codebooks))

    @torch.no_grad()
    def init_codebooks(self, x: Tensor, generator: torch.Generator, lloyd_steps: int = 10) -> None:
        """Stage by stage, on the residual the earlier stages leave: the codes := spherical
        k-means centroids (``lloyd_steps`` Lloyd steps from distinct random rows) of the stage's
        projected rows of ``x``, scaled to their mean norm, so every code starts where data is
        and used about equally."""
        residual = x
        for stage in range(self.n_codebooks):
            z = self.in_proj[stage](residual)
            if len(z) >= self.codebook_size:
                codes = lloyd_kmeans(z, self.codebook_size, n_iter=lloyd_steps, generator=generator, spherical=True)
                codes = codes * z.norm(dim=-1).mean()
            else:  # fewer rows than codes: rows, repeated
                codes = z[_draw(len(z), self.codebook_size, generator, z.device)]
            self.codebooks[stage].copy_(codes)
            residual = residual - self.out_proj[stage](self.codebooks[stage][self.assign(z, stage)])


def _draw(n: int, k: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``k`` row indices in ``[0, n)``, distinct when ``k <= n`` (seeded, same draws on every device)."""
    rows = torch.randperm(n, generator=generator)
    if k > n:
        rows = rows.repeat(-(-k // n))
    return rows[:k].to(device)


@dataclass(frozen=True)
class RVQFitSettings:
    """How :func:`fit_rvq` trains (see the module docstring for the loss)."""

    steps: int = 2000
    batch_size: int = 4096
    lr: float = 1e-3
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    dead_code_steps: int = 100
    seed: int = 0


def fit_rvq(
    rvq: ResidualLinearVQ, x: Tensor, settings: RVQFitSettings, progress: bool = True, desc: str = "Mel-RVQ"
) -> list[float]:
    """Train ``rvq`` on the rows of ``x`` ``[N, input_dim]`` (on their device); returns the L1
    reconstruction error of every step's batch. Deterministic for a given seed and device."""
    if x.dim() != 2 or x.shape[1] != rvq.input_dim:
        raise MertlabError(f"{desc}: expected frames [N, {rvq.input_dim}], got shape {tuple(x.shape)}")
    if len(x) < 2:
        raise MertlabError(f"{desc}: needs at least 2 frames to fit, got {len(x)}")
    if not bool(torch.isfinite(x).all()):
        raise MertlabError(f"{desc}: fitting frames contain NaN or inf")
    generator = torch.Generator().manual_seed(settings.seed)
    history: list[float] = []
    with _one_thread_on_cpu(x.device):
        rvq.train()
        init_rows = min(len(x), max(4 * settings.batch_size, INIT_ROWS_PER_CODE * rvq.codebook_size))
        rvq.init_codebooks(x[_draw(len(x), init_rows, generator, x.device)], generator)
        optimizer = torch.optim.Adam(rvq.parameters(), lr=settings.lr)
        stale = torch.zeros(rvq.n_codebooks, rvq.codebook_size, device=x.device)
        bar = tqdm(range(settings.steps), desc=desc, unit="step", disable=not progress, leave=False)
        for _ in bar:
            batch = x[_draw(len(x), min(len(x), settings.batch_size), generator, x.device)]
            out = rvq(batch)
            recon = out.residual.abs().mean()  # |x - recon|
            loss = recon + settings.codebook_weight * out.codebook + settings.commitment_weight * out.commitment
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _restart_dead_codes(rvq, out, stale, settings.dead_code_steps, generator)
            history.append(float(recon.detach()))
            bar.set_postfix(recon=f"{history[-1]:.4f}")
        rvq.eval()
    return history


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """On CPU, torch on one thread while inside: the fit's operations are small ([batch, 512] x
    [512, 16]...), a second thread gains little on them, and on a shared machine every
    multi-threaded region stalls whenever another process holds a core (bench/README.md)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def _restart_dead_codes(
    rvq: ResidualLinearVQ, out: RVQOutput, stale: Tensor, patience: int, generator: torch.Generator
) -> None:
    """Count, per code, the consecutive steps it went unused (one histogram for all codebooks);
    move codes unused for ``patience`` steps onto random projected frames of this batch (where
    the data is)."""
    size = rvq.codebook_size
    offsets = torch.arange(rvq.n_codebooks, device=out.codes.device) * size
    used = torch.bincount((out.codes + offsets).flatten(), minlength=rvq.n_codebooks * size).view(-1, size) > 0
    stale.add_(1).masked_fill_(used, 0.0)
    dead = stale >= patience
    for stage in torch.nonzero(dead.any(1)).flatten().tolist():
        codes = torch.nonzero(dead[stage]).flatten()
        latents = out.latents[stage].detach()
        rvq.codebooks[stage, codes] = latents[_draw(len(latents), len(codes), generator, latents.device)]
        stale[stage, codes] = 0
