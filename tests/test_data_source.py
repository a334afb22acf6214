"""The data source seam (:mod:`mertlab.data.source`): ``data_source`` alone tells audio files from
shards, and everything that depends on which asks the source it returns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mertlab.data import litdata_api
from mertlab.data import shards as sh
from mertlab.data.audio import list_audio_paths, probe
from mertlab.data.datamodule import AudioDataModule
from mertlab.data.demo import write_demo_dataset
from mertlab.data.files import split_files
from mertlab.data.prepare import prepare_data
from mertlab.data.skipped import SkippedFile, SkippedFiles
from mertlab.data.source import FileSource, ShardSource, data_source, scan_dataset
from mertlab.errors import DataError
from mertlab.experiment.spec import DataSpec
from mertlab.plugin_system.registry import get_registry
from mertlab.train.targets import CachedTargets, ShardTargets, TeacherTargets, target_source

pytestmark = pytest.mark.filterwarnings("ignore")

CLIPS = 10


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo")
    write_demo_dataset(path, num_clips=CLIPS, seconds=1.5, progress=False)
    return path


@pytest.fixture(scope="module")
def shards(demo, tmp_path_factory):
    dst = tmp_path_factory.mktemp("shards") / "shards"
    sh.write_shards(demo, dst, val_fraction=0.3, progress=False)
    return dst


def spec_data(path, **data):
    return DataSpec(path=str(path), **{"crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.3, **data})


def test_files_and_shards_are_told_apart_by_their_content_not_their_name(demo, shards, tmp_path):
    assert type(data_source(spec_data(demo))) is FileSource
    assert type(data_source(spec_data(shards))) is ShardSource
    assert type(data_source(spec_data(f"local:{shards}"))) is ShardSource
    assert type(data_source(spec_data("s3://bucket/music"))) is ShardSource
    named = tmp_path / "music-shards"  # a folder named like shards, without litdata's index
    named.mkdir()
    assert type(data_source(spec_data(named))) is FileSource
    assert type(data_source(spec_data(tmp_path / "missing"))) is FileSource


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t))
def test_any_path_is_one_of_the_two_sources(path):
    """Whatever ``data.path`` says: a source (never an exception); shards exactly when the text
    starts with a scheme litdata reads (no folder with litdata's index exists under these names)."""
    source = data_source(DataSpec(path=path))
    schemes = litdata_api.downloader_schemes()
    remote = ("://" in path or path.startswith("local:")) and path.startswith(schemes)
    assert type(source) is (ShardSource if remote else FileSource)


def test_the_file_source_splits_as_the_file_rule_and_the_shard_source_by_its_split(demo, shards):
    files = FileSource(spec_data(demo))
    skipped = SkippedFiles()
    files.open(24000, 0, 0.0, skipped)
    expected = split_files([probe(p) for p in list_audio_paths(demo, [".wav"])], 0.3)
    assert (files.train_files, files.val_files) == expected and files.has_validation()
    assert files.target_frame_rates() is None and files.held_teachers() == {}

    streamed = data_source(spec_data(shards))
    streamed.open(24000, 0, 0.0, skipped)
    assert streamed.train_files == [] and streamed.val_files == []  # items are read only through the loader
    meta = sh.read_meta(shards)
    assert streamed.has_validation() == bool(meta["splits"].get("val", {}).get("files"))
    assert streamed.has_validation() and len(expected[1]) == meta["splits"]["val"]["files"]


def test_open_reads_once_and_errors_name_the_field(demo, shards):
    source = FileSource(spec_data(demo))
    source.open(24000, 0, 0.0, SkippedFiles())
    first = source.train_files
    source.open(16000, 1, 0.0, SkippedFiles())
    assert source.train_files is first and source.sample_rate == 24000
    with pytest.raises(DataError, match=r"data.crop_seconds: 9 s is longer than every file in the shards"):
        data_source(spec_data(shards, crop_seconds=9.0)).open(24000, 0, 0.0, SkippedFiles())
    with pytest.raises(DataError, match=r"data.path: .* holds shards .*needs a folder or manifest of audio files"):
        scan_dataset(spec_data(shards), 24000)


def test_exclude_leaves_files_out_and_counts_them(demo, shards):
    source = FileSource(spec_data(demo))
    skipped = SkippedFiles()
    source.open(24000, 0, 0.0, skipped)
    bad = source.train_files[0]
    source.exclude([SkippedFile(bad.path, "non-finite samples")], skipped)
    assert bad not in source.train_files and len(skipped) == 1
    with pytest.raises(DataError, match="no usable training file left"):
        source.exclude([SkippedFile(f.path, "bad") for f in source.train_files], skipped)

    streamed = data_source(spec_data(shards))
    counted = SkippedFiles()
    streamed.exclude([SkippedFile(bad.path, "bad")], counted)
    assert len(counted) == 1


def test_each_sources_training_loader_marks_its_own_position_consumed(demo, shards):
    for path in (demo, shards):
        module = AudioDataModule(spec_data(path), 24000, seed=3)
        module.setup()
        loader = module.train_dataloader()
        iterator = iter(loader)
        first = module.on_before_batch_transfer(next(iterator), 0)
        assert first.position is not None
        state = loader.state_dict()
        assert state, path  # a position was consumed: there is a state to checkpoint
        module.on_before_batch_transfer(next(iterator), 0)
        assert loader.state_dict() != state, path


def test_demo_data_is_written_only_where_a_source_holds_files(shards):
    spec = SimpleNamespace(data=spec_data(shards, generate_demo=True))  # prepare_data reads only spec.data
    before = sorted(p.name for p in shards.iterdir())
    prepare_data(spec, progress=False)
    assert sorted(p.name for p in shards.iterdir()) == before
    assert not (shards.parent / f"{shards.name}-tasks").exists()
    assert FileSource.writes_demo and not ShardSource.writes_demo


def test_targets_come_from_the_data_only_when_it_can_carry_them(demo, shards, tmp_path):
    registry = get_registry()
    teachers = {"cqt": registry.build("teacher", "cqt", {"n_bins": 12, "bins_per_octave": 4})}
    assert isinstance(target_source(None, teachers, 24000, data_source(spec_data(shards))), ShardTargets)
    assert isinstance(target_source(None, teachers, 24000, data_source(spec_data(demo))), TeacherTargets)
    cached = target_source(str(tmp_path / "c"), teachers, 24000, data_source(spec_data(demo)))
    assert isinstance(cached, CachedTargets)
    held = target_source(None, teachers, 24000, data_source(spec_data(shards)))
    assert isinstance(held.resolve(), TeacherTargets)  # shards without targets: the teachers on the fly
