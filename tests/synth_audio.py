"""Short synthetic music-like clips for teacher tests: chords of sine tones plus a little noise."""

from __future__ import annotations

import math

import torch

SR = 24000


def chord(seconds: float, midi: tuple[int, ...], seed: int = 0, sr: int = SR, noise: float = 0.01) -> torch.Tensor:
    """``[S]`` float32: equal-amplitude sines at the MIDI pitches plus white noise (seeded)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    wav = sum(torch.sin(2 * torch.pi * 440.0 * 2 ** ((m - 69) / 12) * t) for m in midi) / len(midi)
    return (0.5 * wav + noise * torch.randn(t.shape, generator=g, dtype=torch.float64)).float()


def melody(seconds: float, seed: int = 0, sr: int = SR, notes_per_second: int = 8) -> torch.Tensor:
    """``[S]`` float32: a random sequence of chords, so frames differ over time."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sr)
    step = sr // notes_per_second
    parts = []
    for i in range(0, n, step):
        root = int(torch.randint(36, 84, (1,), generator=g))
        parts.append(chord(step / sr, (root, root + 4, root + 7), seed=seed * 1000 + i, sr=sr))
    return torch.cat(parts)[:n]


def padded_batch(clips: list[torch.Tensor], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wav [B, max S], lengths [B])``; padding filled with ``pad_value`` (tests use junk)."""
    lengths = torch.tensor([c.numel() for c in clips])
    wav = torch.full((len(clips), int(lengths.max())), pad_value)
    for b, c in enumerate(clips):
        wav[b, : c.numel()] = c
    return wav, lengths


def gliding_tones(n: int, seed: int = 0, sr: int = SR) -> torch.Tensor:
    """Sines (one gliding) plus a little noise, ``n`` samples."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    f0 = 110 * 2 ** (4 * torch.rand(1, generator=g))
    wav = 0.3 * torch.sin(2 * math.pi * f0 * t) + 0.2 * torch.sin(2 * math.pi * (300 + 1500 * t) * t)
    return wav + 0.03 * torch.randn(n, generator=g)
