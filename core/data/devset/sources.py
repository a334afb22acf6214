"""Where the real-music development set comes from: Debian packages, each with its licence.

Everything the dev set is built from is installed with ``apt-get`` (``make dev-data`` does it):
game soundtracks for pre-training (:data:`RECORDINGS`) and a General MIDI soundfont with real
sampled instruments for the probe tasks (:data:`SOUNDFONT`). The licences below are those of
each package's ``/usr/share/doc/<package>/copyright``, which the build copies next to the audio.

Not used, on purpose: ``hyperrogue-music``, ``singularity-music`` and the FluidR3 soundfont
(``fluid-soundfont-gm``) are kept for independent evaluation; ``musescore-general-soundfont``
is a fork of FluidR3Mono (its README: instruments without other attribution "are still using
samples from FluidR3Mono"), so it would leak those samples into development; ``fb-music-high``
holds a single tracker module (``.xm``), which needs a module player to decode.
"""

from __future__ import annotations

import ctypes.util
import glob
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mertlab.errors import DataError

DOC_ROOT = Path("/usr/share/doc")


@dataclass(frozen=True)
class RecordingSource:
    """A Debian package of music recordings.

    ``audio``: glob patterns of its audio files; or, with ``archive``, patterns of the members of
    that zip archive (a ``.pk3``). ``exclude``: file names that are not music, with the reason.
    """

    package: str
    title: str
    licence: str
    copyright: str
    origin: str
    audio: tuple[str, ...]
    archive: str | None = None
    exclude: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Soundfont:
    """A General MIDI soundfont from a Debian package."""

    package: str
    title: str
    licence: str
    copyright: str
    origin: str
    path: str


RECORDINGS: tuple[RecordingSource, ...] = (
    RecordingSource(
        package="asc-music",
        title="Advanced Strategic Command soundtrack (3 tracks, orchestral/rock)",
        licence="GPL-2+",
        copyright="2002 Michael Kievernagel",
        origin="http://www.asc-hq.de/",
        audio=("/usr/share/games/asc/music/*.mp3",),
    ),
    RecordingSource(
        package="drascula-music",
        title="Drascula: The Vampire Strikes Back soundtrack (31 tracks)",
        licence="Drascula licence (BSD-like, DFSG-free; full text in the copyright file)",
        copyright="1996-2008 Alcachofa Soft S.L.",
        origin="https://www.scummvm.org",
        audio=("/usr/share/scummvm/drascula/audio/*.ogg",),
    ),
    RecordingSource(
        package="planetblupi-music-ogg",
        title="Planet Blupi soundtrack (10 tracks)",
        licence="GPL-3+",
        copyright="2017-2018 Mathieu Schroeter",
        origin="https://github.com/blupi-games/planetblupi/",
        audio=("/usr/share/planetblupi/music/*.ogg",),
    ),
    RecordingSource(
        package="nexuiz-music",
        title="Nexuiz soundtrack (17 tracks, electronic/metal)",
        licence="GPL-2+",
        copyright="2002-2009 Alientrap, Lee Vermeulen",
        origin="https://www.alientrap.org/games/nexuiz/",
        audio=("sound/cdtracks/*.ogg",),
        archive="/usr/share/games/nexuiz/data/music.pk3",
        exclude={"thunder.ogg": "a thunder ambience (noise), not music"},
    ),
)

SOUNDFONT = Soundfont(
    package="timgm6mb-soundfont",
    title="TimGM6mb General MIDI soundfont (128 sampled instruments, 8 drum kits)",
    licence="GPL-2",
    copyright="2004 Tim Brechbill, 2010 David Bolton",
    origin="https://timbrechbill.com/saxguru/Timidity.php",
    path="/usr/share/sounds/sf2/TimGM6mb.sf2",
)

#: Every Debian package the dev set needs (what ``make dev-data`` installs): the recordings, the
#: soundfont and FluidSynth's library (for the ``pyfluidsynth`` binding).
APT_PACKAGES: tuple[str, ...] = (*(s.package for s in RECORDINGS), SOUNDFONT.package, "libfluidsynth3")

INSTALL_HINT = "run `make dev-data-packages` (as root: apt-get install -y {packages})"


def missing_error(what: str, packages: list[str] | tuple[str, ...]) -> DataError:
    """The one-line error for a Debian package that is not installed."""
    names = " ".join(packages)
    return DataError(f"{what}: not installed; {INSTALL_HINT.format(packages=names)}")


def package_version(package: str) -> str:
    """The installed version of a Debian package (``unknown`` without dpkg)."""
    if shutil.which("dpkg-query") is None:
        return "unknown"
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def copyright_file(package: str, doc_root: Path = DOC_ROOT) -> Path | None:
    """``/usr/share/doc/<package>/copyright`` when present."""
    path = doc_root / package / "copyright"
    return path if path.is_file() else None


def source_installed(source: RecordingSource) -> bool:
    if source.archive is not None:
        return Path(source.archive).is_file()
    return any(glob.glob(pattern) for pattern in source.audio)


def missing_packages(sources: tuple[RecordingSource, ...] = RECORDINGS, soundfont: Soundfont = SOUNDFONT) -> list[str]:
    """The Debian packages of the dev set that are not installed (judged by their files)."""
    missing = [s.package for s in sources if not source_installed(s)]
    if not Path(soundfont.path).is_file():
        missing.append(soundfont.package)
    if ctypes.util.find_library("fluidsynth") is None:
        missing.append("libfluidsynth3")
    return missing
