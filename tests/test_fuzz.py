"""Fuzzing: generated specs (YAML text, raw bytes, deeply nested values, overrides) through
``mertlab validate`` (spec dicts: ``test_reliability_io``), and generated audio files (headers,
lengths, NaN/inf, sample rates, channel counts, damaged bytes) through the dataset scan, the
loader's crops and the target-cache build.
Every outcome is success or mertlab's one-line errors, never another exception.

Example counts are kept small (deterministic, ``derandomize``) so the fuzzers run in seconds."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mertlab.errors import MertlabError
from test_reliability_io import FUZZ_BASE, FUZZ_KEYS

pytestmark = pytest.mark.filterwarnings("ignore")
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


def one_line_errors(exc: MertlabError) -> None:
    """A mertlab error: non-empty, each line a complete problem (no traceback, no blank line)."""
    text = str(exc)
    assert text and all(line.strip() for line in text.splitlines()), repr(text)
    assert "Traceback" not in text


def nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "open":  # unterminated
        return "[" * depth
    return "{a: " * depth + "1" + "}" * depth


# --------------------------------------------------------------------------- specs
@pytest.fixture
def validate(tmp_path, capsys):
    """``mertlab validate`` on a spec file's bytes and overrides: its exit code, after checking
    that it printed only ``error:`` lines (no traceback) when it failed."""
    from mertlab.cli import main

    path = tmp_path / "spec.yaml"

    def run(data: bytes, overrides: list[str] = ()) -> int:
        path.write_bytes(data)
        code = main(["validate", str(path), *(x for o in overrides for x in ("-o", o))])
        err = capsys.readouterr().err
        assert code in (0, 1)
        if code == 1:
            lines = [line for line in err.splitlines() if line.strip()]
            assert lines and all(line.startswith("error: ") for line in lines), err
        return code

    return run


GOOD = yaml.safe_dump({**FUZZ_BASE, "trainer": {"output_dir": "/tmp/mertlab-fuzz-runs"}}).encode()


def test_fuzzed_spec_bytes_validate_or_fail_in_one_line(validate, one_thread):
    @fuzz(60)
    @given(
        st.one_of(
            st.binary(max_size=80),
            st.binary(max_size=40).map(lambda b: GOOD[: len(GOOD) // 2] + b),
            st.binary(max_size=20).map(lambda b: GOOD + b),
            st.tuples(st.integers(1, 3000), st.sampled_from(["list", "open", "map"])).map(
                lambda d: GOOD + b"description: " + nested(*d).encode() + b"\n"
            ),
            st.tuples(st.integers(1, 3000), st.sampled_from(["list", "open", "map"])).map(
                lambda d: nested(*d).encode()
            ),
            st.sampled_from([b"\xef\xbb\xbf" + GOOD, GOOD.replace(b"name", b"\xffname", 1), b"\x00" * 10, b""]),
        )
    )
    def check(data):
        validate(data)

    check()


def test_fuzzed_overrides_validate_or_fail_in_one_line(validate, one_thread):
    @fuzz(60)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(FUZZ_KEYS), st.text(max_size=12)).map("=".join),
                st.tuples(
                    st.sampled_from(FUZZ_KEYS), st.integers(1, 3000), st.sampled_from(["list", "open", "map"])
                ).map(lambda k: f"{k[0]}={nested(k[1], k[2])}"),
                st.sampled_from(["seed=true", "seed=-1", "seed=1.5", "trainer.max_steps=false", "optim.lr=.inf"]),
                st.text(max_size=15),
            ),
            max_size=3,
        )
    )
    def check(overrides):
        validate(GOOD, overrides)

    check()


# --------------------------------------------------------------------------- audio
SUBTYPES = {
    "WAV": ["PCM_16", "PCM_24", "FLOAT", "DOUBLE", "PCM_U8"],
    "FLAC": ["PCM_16", "PCM_24"],
    "OGG": ["VORBIS"],
}


@st.composite
def audio_bytes(draw) -> tuple[str, bytes]:
    """An audio file's name and bytes: any format/subtype, rate, channels and length, samples
    that may hold NaN/inf, then maybe damaged (truncated, bytes overwritten, header only)."""
    fmt = draw(st.sampled_from(sorted(SUBTYPES)))
    subtype = draw(st.sampled_from(SUBTYPES[fmt]))
    common = st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000, 96000])
    rate = draw(st.one_of(common, common, common, st.integers(1, 200_000)))
    if fmt == "OGG":
        rate = draw(st.sampled_from([8000, 16000, 24000, 44100, 48000]))
    channels = draw(st.integers(1, 3))
    short = st.sampled_from([0, 1, 2, 100, 400, 2047, 2048])
    long = st.integers(2 * rate // 10, rate)  # 0.2-1 s
    frames = draw(st.one_of(short, long, long, long))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    samples = (0.3 * rng.standard_normal((frames, channels))).astype(np.float64)
    special = draw(st.sampled_from([None, np.nan, np.inf, -np.inf, 1e30]))
    if special is not None and frames:
        samples[draw(st.integers(0, frames - 1)), draw(st.integers(0, channels - 1))] = special
    buffer = io.BytesIO()
    try:
        sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    except Exception:  # noqa: BLE001 - a combination libsndfile refuses to write: an empty file instead
        buffer = io.BytesIO()
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "none", "none", "truncate", "overwrite", "header"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "overwrite" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at + 16 :]
    elif damage == "header":
        data = data[:44]
    return f"fuzz.{fmt.lower()}", data


@pytest.fixture(scope="module")
def cheap_build(tmp_path_factory):
    """A cheap teacher and the scan rule of a filterbank backbone (2048-sample receptive field)."""
    from mertlab.data.dataset import shortest_usable_seconds
    from mertlab.plugin_system.registry import get_registry

    registry = get_registry()
    teacher = registry.build("teacher", "cqt", {"n_bins": 12, "bins_per_octave": 4})
    backbone = registry.build(
        "backbone",
        "transformer",
        {"preset": "tiny", "conv_channels": [8], "conv_kernels": [2048], "conv_strides": [320]},
    )
    return teacher, shortest_usable_seconds(backbone, [teacher]), backbone.min_samples


def test_fuzzed_audio_through_the_scan_the_loader_and_the_target_build(tmp_path, cheap_build, one_thread, caplog):
    from mertlab.data.audio import probe
    from mertlab.data.dataset import Crop, CropDataset, min_samples
    from mertlab.data.files import check_audio_files
    from mertlab.data.skipped import SkippedFile, SkippedFiles
    from mertlab.data.source import scan_dataset
    from mertlab.experiment.spec import DataSpec
    from mertlab.teachers.target_cache import build_teacher_cache

    teacher, min_seconds, _ = cheap_build
    counter = iter(range(10**6))
    outcomes: dict[str, int] = {}

    def count(outcome: str) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    @fuzz(50)
    @given(audio_bytes())
    def check(named):
        name, data = named
        folder = tmp_path / f"case{next(counter)}"
        folder.mkdir()
        path = folder / name
        path.write_bytes(data)
        skipped = SkippedFiles()
        try:  # the scan: a usable file, or skipped with a reason; no usable file is one DataError
            files = scan_dataset(DataSpec(path=str(folder), crop_seconds=0.05), 24000, min_seconds, skipped)
        except MertlabError as exc:
            one_line_errors(exc)
            files = []
        found, bad = check_audio_files([path], min_seconds)
        assert len(found) + len(bad) == 1 and len(files) == len(found)
        if not files:
            count("skipped at the scan")
            return
        assert probe(path).num_frames > 0
        item = CropDataset(files, 24000, 0.5, random_crops=True, seed=0, min_samples=min_samples(min_seconds, 24000))[0]
        assert isinstance(item, (Crop, SkippedFile))
        if isinstance(item, Crop):
            assert bool(np.isfinite(item.wav.numpy()).all()) and item.length >= 2048
        try:  # the target build: an entry, or the file skipped as unusable
            summary = build_teacher_cache(teacher, files, folder / "cache", progress=False, skipped_files=skipped)
        except MertlabError as exc:
            one_line_errors(exc)
            count("error")
            return
        assert summary.computed + len(summary.bad) == 1
        count("cached" if summary.computed else "skipped at the build")

    with caplog.at_level(logging.ERROR):
        check()
    # the generator reaches every stage: files skipped at the scan, at the build, and cached
    assert outcomes.get("cached", 0) >= 10 and outcomes.get("skipped at the scan", 0) >= 5, outcomes
    assert outcomes.get("skipped at the build", 0) >= 1, outcomes
