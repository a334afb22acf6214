"""Clips of MIDI notes (:mod:`.midi`) to audio: FluidSynth (Debian's ``libfluidsynth3``, through
the ``pyfluidsynth`` binding) playing a General MIDI soundfont.

The soundfont is loaded once; every clip is played by a fresh synthesiser that shares it, so a
clip sounds the same whatever other clips the renderer played (FluidSynth's voices keep a little state
from note to note). Reverb and chorus are off, and events take effect at FluidSynth's 64-sample
block starts (2.7 ms at 24 kHz): the same clip gives the same samples on every run.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mertlab.data.devset.midi import Clip
from mertlab.data.devset.sources import SOUNDFONT, missing_error
from mertlab.errors import DataError

SAMPLE_RATE = 24000
#: FluidSynth's block: events take effect at multiples of it.
BLOCK = 64
DRUM_CHANNEL = 9
#: A rendered clip quieter than this (peak) means the soundfont lacks a preset.
SILENCE = 1e-4


def _fluidsynth() -> ModuleType:
    try:
        import fluidsynth
    except ModuleNotFoundError as exc:
        if exc.name == "fluidsynth":
            raise DataError("the Python package pyfluidsynth is not installed (pip install pyfluidsynth)") from None
        raise
    except (ImportError, OSError):  # the binding loads the C library on import
        raise missing_error("FluidSynth's library (libfluidsynth)", ["libfluidsynth3"]) from None
    return fluidsynth


def blocks(seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """``seconds`` as a whole number of samples on the block grid (rounded to the nearest block)."""
    return BLOCK * int(round(seconds * sample_rate / BLOCK))


def channels(clip: Clip) -> list[int]:
    """The MIDI channel of each part: drums on channel 10 (index 9), the others 0, 1, ... around it."""
    free = [c for c in range(16) if c != DRUM_CHANNEL]
    out = []
    for part in clip.parts:
        if part.drums:
            if DRUM_CHANNEL in out:
                raise ValueError("a clip has at most one drum part")
            out.append(DRUM_CHANNEL)
        else:
            out.append(free.pop(0))
    return out


class Renderer:
    """FluidSynth with one soundfont loaded (once: loading takes a moment), rendering clips."""

    def __init__(self, soundfont: str | Path = SOUNDFONT.path, sample_rate: int = SAMPLE_RATE) -> None:
        self.soundfont = Path(soundfont)
        if not self.soundfont.is_file():
            raise missing_error(f"soundfont {self.soundfont}", [SOUNDFONT.package])
        self._fs = _fluidsynth()
        self.sample_rate = sample_rate
        self._c = _CFunctions(self._fs)
        for level in (FLUID_WARN, FLUID_INFO, FLUID_DBG):  # "no preset on channel N" as fonts come and go
            self._c.set_log_function(level, None, None)
        self._holder: Any = self._new_synth()
        font_id = self._holder.sfload(str(self.soundfont))
        if font_id < 0:
            raise DataError(f"soundfont {self.soundfont}: FluidSynth cannot load it")
        self._font = self._c.get_sfont_by_id(self._holder.synth, font_id)

    def _new_synth(self) -> Any:
        settings = {"synth.reverb.active": 0, "synth.chorus.active": 0}
        return self._fs.Synth(gain=0.5, samplerate=float(self.sample_rate), channels=16, **settings)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._holder is not None:
            self._holder.delete()
            self._holder = None

    def render(self, clip: Clip) -> np.ndarray:
        """Mono float32 audio of ``clip`` (``clip.seconds`` on the block grid), scaled to ``clip.peak``."""
        if self._holder is None:
            raise RuntimeError("the renderer is closed")
        synth = self._new_synth()
        font_id = self._c.add_sfont(synth.synth, self._font)
        try:
            stereo = self._play(synth, font_id, clip)
        finally:
            self._c.remove_sfont(synth.synth, self._font)
            synth.delete()
        mono = stereo.mean(axis=1)
        peak = float(np.abs(mono).max()) if len(mono) else 0.0
        if peak < SILENCE:
            programs = ", ".join(f"{'drum kit ' if p.drums else 'program '}{p.program}" for p in clip.parts)
            raise DataError(f"soundfont {self.soundfont}: rendered silence for {programs}")
        return (mono * (clip.peak / peak)).astype(np.float32)

    def _play(self, synth: Any, font_id: int, clip: Clip) -> np.ndarray:
        """The clip's stereo samples ``[S, 2]`` from ``synth``."""
        chans = channels(clip)
        for part, channel in zip(clip.parts, chans, strict=True):
            bank = 128 if part.drums else 0
            if synth.program_select(channel, font_id, bank, part.program) != 0:
                raise DataError(f"soundfont {self.soundfont}: no preset {part.program} in bank {bank}")
        events = []  # (sample, 0 = note off first, channel, pitch, velocity)
        for part, channel in zip(clip.parts, chans, strict=True):
            for note in part.notes:
                events.append((blocks(note.start, self.sample_rate), 1, channel, note.pitch, note.velocity))
                events.append((blocks(note.start + note.duration, self.sample_rate), 0, channel, note.pitch, 0))
        total = blocks(clip.seconds, self.sample_rate)
        out = np.zeros((total, 2), dtype=np.float32)
        position = 0
        for sample, is_on, channel, pitch, velocity in sorted(events):
            sample = min(sample, total)
            self._write(synth, out, position, sample)
            position = max(position, sample)
            if is_on:
                synth.noteon(channel, pitch, velocity)
            else:
                synth.noteoff(channel, pitch)
        self._write(synth, out, position, total)
        return out

    def _write(self, synth: Any, out: np.ndarray, start: int, stop: int) -> None:
        """Synthesize samples ``start:stop`` of the stereo buffer ``out`` ``[S, 2]``."""
        if stop > start:
            pointer = out.ctypes.data
            self._c.write_float(synth.synth, stop - start, pointer, 2 * start, 2, pointer, 2 * start + 1, 2)


FLUID_WARN, FLUID_INFO, FLUID_DBG = 2, 3, 4


class _CFunctions:
    """The libfluidsynth calls pyfluidsynth does not wrap: float output and sharing a soundfont."""

    def __init__(self, fs: ModuleType) -> None:
        p, i = ctypes.c_void_p, ctypes.c_int
        self.write_float = fs.cfunc(
            "fluid_synth_write_float",
            i,
            ("synth", p, 1),
            ("len", i, 1),
            ("lout", p, 1),
            ("loff", i, 1),
            ("lincr", i, 1),
            ("rout", p, 1),
            ("roff", i, 1),
            ("rincr", i, 1),
        )
        self.get_sfont_by_id = fs.cfunc("fluid_synth_get_sfont_by_id", p, ("synth", p, 1), ("id", i, 1))
        self.add_sfont = fs.cfunc("fluid_synth_add_sfont", i, ("synth", p, 1), ("sfont", p, 1))
        self.remove_sfont = fs.cfunc("fluid_synth_remove_sfont", i, ("synth", p, 1), ("sfont", p, 1))
        self.set_log_function = fs.cfunc("fluid_set_log_function", p, ("level", i, 1), ("fun", p, 1), ("data", p, 1))
