"""General MIDI facts the probe tasks are generated from: program names, families, playable
ranges and drum keys (General MIDI Level 1, MIDI Manufacturers Association, 1991).

Ranges are the usual written ranges of the real instruments (for synth programs a wide
keyboard range), so a generated note is one the sampled instrument was recorded to play.
"""

from __future__ import annotations

PROGRAM_NAMES: tuple[str, ...] = (
    # piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # chromatic percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    # organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    # guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    # bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1", "Slap Bass 2",
    "Synth Bass 1", "Synth Bass 2",
    # strings
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    # ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Voice", "Orchestra Hit",
    # brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    # reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    # pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    # synth lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # synth pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)",
    # synth effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # ethnic
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    # percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    # sound effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause",
    "Gunshot",
)  # fmt: skip

#: The ten families of real (acoustic or electric) instruments: GM's groups of eight programs
#: 0-79; the synth, effect, ethnic and percussive groups (80-127) are left out.
FAMILIES: tuple[str, ...] = (
    "piano",
    "chromatic_percussion",
    "organ",
    "guitar",
    "bass",
    "strings",
    "ensemble",
    "brass",
    "reed",
    "pipe",
)

#: Programs whose pitch is not a clear note (timpani, orchestra hit, the synth effects) or
#: that are not instruments (percussive, sound effects): no pitch or family clip uses them.
UNPITCHED: frozenset[int] = frozenset({47, 55, *range(96, 104), *range(112, 128)})

#: Lowest and highest MIDI pitch of each program (by family; exceptions below).
_FAMILY_RANGES: dict[int, tuple[int, int]] = {
    0: (21, 108),  # piano
    1: (53, 96),  # chromatic percussion
    2: (36, 96),  # organ
    3: (40, 84),  # guitar
    4: (28, 60),  # bass
    5: (36, 96),  # strings
    6: (36, 96),  # ensemble
    7: (40, 84),  # brass
    8: (50, 91),  # reed
    9: (60, 96),  # pipe
    10: (36, 96),  # synth lead
    11: (36, 96),  # synth pad
    12: (36, 96),  # synth effects
    13: (48, 84),  # ethnic
}
_PROGRAM_RANGES: dict[int, tuple[int, int]] = {
    8: (60, 108),  # celesta
    9: (72, 108),  # glockenspiel
    10: (60, 96),  # music box
    11: (53, 89),  # vibraphone
    12: (45, 96),  # marimba
    13: (65, 108),  # xylophone
    14: (60, 77),  # tubular bells
    15: (48, 96),  # dulcimer
    21: (53, 89),  # accordion
    22: (60, 84),  # harmonica
    23: (53, 89),  # tango accordion
    40: (55, 100),  # violin
    41: (48, 84),  # viola
    42: (36, 76),  # cello
    43: (28, 60),  # contrabass
    45: (28, 96),  # pizzicato strings
    46: (24, 103),  # harp
    52: (48, 79),  # choir
    53: (48, 79),  # voice oohs
    56: (54, 86),  # trumpet
    57: (40, 72),  # trombone
    58: (28, 58),  # tuba
    59: (54, 82),  # muted trumpet
    60: (41, 77),  # french horn
    61: (36, 84),  # brass section
    62: (36, 96),  # synth brass
    63: (36, 96),
    64: (56, 87),  # soprano sax
    65: (49, 80),  # alto sax
    66: (44, 75),  # tenor sax
    67: (36, 68),  # baritone sax
    68: (58, 91),  # oboe
    69: (52, 81),  # english horn
    70: (34, 72),  # bassoon
    71: (50, 91),  # clarinet
    72: (74, 108),  # piccolo
    78: (60, 78),  # whistle (TimGM6mb has no samples above F#5)
}


def program_range(program: int) -> tuple[int, int]:
    """``(lowest, highest)`` MIDI pitch a GM program plays (0-111)."""
    if not 0 <= program < 112:
        raise ValueError(f"program {program}: no pitch range (GM programs 0-111 are pitched)")
    return _PROGRAM_RANGES.get(program, _FAMILY_RANGES[program // 8])


def family_of(program: int) -> str:
    """The family name of a program 0-79 (``piano`` ... ``pipe``)."""
    return FAMILIES[program // 8]


def family_programs(family: str) -> tuple[int, ...]:
    """The pitched programs of one of :data:`FAMILIES`."""
    first = 8 * FAMILIES.index(family)
    return tuple(p for p in range(first, first + 8) if p not in UNPITCHED)


#: Programs that can play a pitch (pitched, non-effect): the pool of the pitch task.
PITCHED_PROGRAMS: tuple[int, ...] = tuple(p for p in range(112) if p not in UNPITCHED)

#: Programs that comp chords: pianos, organs, guitars, string ensembles, choir, brass section, pads.
CHORD_PROGRAMS: tuple[int, ...] = (0, 1, 2, 4, 5, 16, 17, 19, 24, 25, 26, 27, 48, 49, 50, 52, 61, 88, 89, 90)
#: Programs that play a melody above the chords.
LEAD_PROGRAMS: tuple[int, ...] = (0, 11, 22, 40, 56, 60, 64, 65, 68, 71, 73, 74, 80, 81)
#: Bass programs.
BASS_PROGRAMS: tuple[int, ...] = (32, 33, 34, 35, 38, 43)

#: GM drum kits (bank 128 programs, as General Standard numbers them): Standard, Room, Power,
#: Electronic, TR-808, Jazz, Brush.
DRUM_KITS: tuple[int, ...] = (0, 8, 16, 24, 25, 32, 40)
KICK, SNARE, CLAP, CLOSED_HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 39, 42, 46, 51, 49
