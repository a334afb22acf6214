"""Every feature-cache read is checked: a damaged entry (truncated, overwritten with random bytes,
another format, a broken zip) is named once and recomputed; entries carry the target cache's
size/SHA-256 record and are written with the process umask."""

from __future__ import annotations

import logging
import os
import stat

import numpy as np
import pytest

from mertlab.probe.cache import FeatureCache
from mertlab.probe.extract import FeatureSet
from mertlab.toolkit.integrity import record_path

SOURCE = {"kind": "test", "seed": 0}


@pytest.fixture
def audio_paths(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"clip{i}.wav"
        path.write_bytes(b"x" * (i + 1))  # the key hashes path, size and mtime only
        paths.append(str(path))
    return paths


def features_of(paths, value=1.0):
    return FeatureSet(
        paths=list(paths),
        features=np.full((len(paths), 2, 4), value, dtype=np.float32),
        layers=[0, 1],
        seconds=np.ones(len(paths)),
        meta={"made": "here"},
    )


class Counting:
    def __init__(self, paths):
        self.paths, self.calls = paths, 0

    def __call__(self):
        self.calls += 1
        return features_of(self.paths, float(self.calls))


def the_entry(root):
    (entry,) = root.rglob("*.npz")
    return entry


def truncate(entry):
    with open(entry, "r+b") as f:
        f.truncate(500)


def random_bytes(entry):
    data = bytearray(entry.read_bytes())
    data[100:164] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    entry.write_bytes(bytes(data))


def other_format(entry):
    np.savez(open(entry, "wb"), something=np.zeros(3))


def garbage(entry):
    entry.write_bytes(b"PK\x03\x04" + os.urandom(300))  # a zip signature, then noise: zipfile.BadZipFile


@pytest.mark.parametrize(
    "damage, record",
    [
        (truncate, True),
        (random_bytes, True),
        (other_format, True),
        (garbage, True),
        (truncate, False),  # an entry of a cache written before records existed
        (garbage, False),
        (other_format, False),
    ],
    ids=[
        "truncated",
        "random-bytes",
        "other-format",
        "bad-zip",
        "truncated-no-record",
        "bad-zip-no-record",
        "other-format-no-record",
    ],
)
def test_a_damaged_entry_is_named_once_and_recomputed(tmp_path, audio_paths, caplog, damage, record):
    root = tmp_path / "cache"
    compute = Counting(audio_paths)
    FeatureCache(root).get_or_compute(SOURCE, audio_paths, 5.0, compute)
    entry = the_entry(root)
    if not record:
        record_path(entry).unlink()
    damage(entry)
    cache = FeatureCache(root)
    with caplog.at_level(logging.WARNING, logger="mertlab"):
        again = cache.get_or_compute(SOURCE, audio_paths, 5.0, compute)
    assert compute.calls == 2 and cache.misses == 1 and cache.hits == 0
    assert float(again.features[0, 0, 0]) == 2.0
    named = [r.getMessage() for r in caplog.records if str(entry) in r.getMessage()]
    assert len(named) == 1 and "damaged entry" in named[0] and "recomputing" in named[0], named
    # the replacement is intact: the next read is a hit, without a warning
    caplog.clear()
    cache = FeatureCache(root)
    with caplog.at_level(logging.WARNING, logger="mertlab"):
        third = cache.get_or_compute(SOURCE, audio_paths, 5.0, compute)
    assert compute.calls == 2 and cache.hits == 1 and not caplog.records
    np.testing.assert_array_equal(third.features, again.features)


def test_an_intact_entry_is_a_hit_and_matches_its_record(tmp_path, audio_paths):
    root = tmp_path / "cache"
    compute = Counting(audio_paths)
    first = FeatureCache(root).get_or_compute(SOURCE, audio_paths, 5.0, compute)
    cache = FeatureCache(root)
    second = cache.get_or_compute(SOURCE, audio_paths, 5.0, compute)
    assert compute.calls == 1 and cache.hits == 1
    np.testing.assert_array_equal(first.features, second.features)
    entry = the_entry(root)
    import json

    record = json.loads(record_path(entry).read_text())
    assert record["bytes"] == entry.stat().st_size and len(record["sha256"]) == 64


def test_cache_files_follow_the_umask(tmp_path, audio_paths):
    previous = os.umask(0o022)
    try:
        root = tmp_path / "shared"
        FeatureCache(root).get_or_compute(SOURCE, audio_paths, 5.0, Counting(audio_paths))
        entry = the_entry(root)
        assert stat.S_IMODE(entry.stat().st_mode) == 0o644
        assert stat.S_IMODE(record_path(entry).stat().st_mode) == 0o644
        os.umask(0o077)
        private = tmp_path / "private"
        FeatureCache(private).get_or_compute(SOURCE, audio_paths, 5.0, Counting(audio_paths))
        assert stat.S_IMODE(the_entry(private).stat().st_mode) == 0o600
    finally:
        os.umask(previous)
    saved = features_of(audio_paths).save(tmp_path / "out.npz")  # `mertlab extract --out` files too
    assert stat.S_IMODE(saved.stat().st_mode) == 0o644


def test_load_names_a_damaged_features_file(tmp_path, audio_paths):
    from mertlab.errors import MertlabError

    path = features_of(audio_paths).save(tmp_path / "f.npz")
    truncate(path)
    with pytest.raises(MertlabError, match=r"f\.npz: unreadable features file \(BadZipFile"):
        FeatureSet.load(path)
    bad = FeatureSet(audio_paths, np.zeros((2, 2, 4), np.float32), [0, 1], np.ones(3))
    bad.save(path)
    with pytest.raises(
        MertlabError, match=r"not a valid features file \(features of shape \(2, 2, 4\), expected \[3, 2, D\]"
    ):
        FeatureSet.load(path)
