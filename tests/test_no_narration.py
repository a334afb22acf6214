"""The repository states what is, not how it came to be.

A reader of the code, the docs or the benchmarks has no use for which issue changed a line, what a
number was before, or in which work session something was measured. This test scans every file
git tracks under the folders below for the phrases such history takes and names each hit.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What is scanned: the docs, benchmarks, tests, code, specs and the example plugin.
SCANNED = (
    "README.md",
    "ARCHITECTURE.md",
    "docs/",
    "bench/",
    "tests/",
    "core/",
    "plugins/",
    "experiments/",
    "examples/",
)
#: Text files by suffix (data files such as audio are not read).
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ".sh"}

#: Each history pattern with what it catches. Words that merely contain these (``start_new_session``,
#: a D-Bus "session bus", a POSIX "process session") are not history and do not match.
HISTORY = {
    "an issue reference": re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE),
    "a '(was ...)' aside": re.compile(r"\(was\b", re.IGNORECASE),
    "a 'was X before' comparison": re.compile(r"\bwas\b[^.\n]{0,40}\bbefore\b", re.IGNORECASE),
    "a work session": re.compile(r"(?<!process )(?<!new )\bsessions?\b(?! bus)", re.IGNORECASE),
    "a machine loan": re.compile(r"\bl[e]nt\b", re.IGNORECASE),  # [e]: this line is not a match itself
}


def history_phrases(text: str) -> list[tuple[int, str, str]]:
    """``(line number, what, the matched text)`` for every history phrase in ``text``."""
    return [
        (number, what, match.group(0))
        for number, line in enumerate(text.splitlines(), start=1)
        for what, pattern in HISTORY.items()
        for match in pattern.finditer(line)
    ]


def scanned_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", *SCANNED], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    this_file = Path(__file__).resolve()
    return [
        ROOT / name
        for name in listed.split("\0")
        if name and Path(name).suffix in TEXT_SUFFIXES and (ROOT / name).resolve() != this_file
    ]


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("Target (issue " + "#14): >= 2x", "an issue reference"),
        ("see issues 3 and 4", "an issue reference"),
        ("takes 5 minutes (was ~12 min)", "a '(was ...)' aside"),
        ("it was 22-32% before the read path below", "a 'was X before' comparison"),
        ("Two sessions: the first in the morning", "a work session"),
        ("no GPU was l" + "ent to this one", "a machine loan"),
    ],
)
def test_history_phrases_are_found(text, what):
    assert what in {found for _, found, _ in history_phrases(text)}


@pytest.mark.parametrize(
    "text",
    [
        "subprocess.Popen(argv, start_new_session=True)",
        "a machine without a display, a session bus or outside network",
        "The server runs in a new process session",
        "the issue of padding: a padded clip differs from the clip alone",
        "if (wasted := 3) > 2: pass",
        "the state that was saved. Before the step",
        "round 3 trains it 3000 steps",
    ],
)
def test_statements_of_what_is_pass(text):
    assert history_phrases(text) == []


def test_tracked_text_states_what_is_not_its_history():
    files = scanned_files()
    assert any(path.name == "README.md" for path in files) and any(path.suffix == ".py" for path in files)
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {what}: {matched!r}"
        for path in files
        for number, what, matched in history_phrases(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not hits, "history narration (say what is instead):\n" + "\n".join(hits)
