"""Sharded streaming data (litdata): writing shards, training on them, rank/worker splitting,
exact mid-epoch resume, targets equal to the target cache's, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.data import shards as sh
from mertlab.data.audio import list_audio_paths, probe
from mertlab.data.dataset import AudioBatch, collate_crops
from mertlab.data.demo import write_demo_dataset
from mertlab.data.source import FileSource, ShardSource, data_source
from mertlab.experiment.spec import DataSpec, resolve_spec
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.shard_targets import shard_with_spec
from mertlab.teachers.target_cache import TeacherCache, build_teacher_cache
from mertlab.train.module import PretrainModule
from mertlab.train.run import train
from mertlab.train.targets import CachedTargets, ShardTargets, target_source

pytestmark = pytest.mark.filterwarnings("ignore")

CLIPS = 8
CQT = {"name": "cqt", "params": {"n_bins": 12, "bins_per_octave": 4}}
BESTRQ = {"name": "bestrq", "params": {"codebook_size": 16, "n_codebooks": 1, "normalize": "none"}}
ONE_ITEM_PER_CHUNK = 50_000  # bytes: each 1.5 s 24 kHz 16-bit clip (72 kB) gets its own chunk


def make_spec(data_path, tmp_path, name="shard-test", max_steps=6, **data):
    return resolve_spec(
        {
            "name": name,
            "seed": 5,
            "data": {"path": str(data_path), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.2, **data},
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {"codes": BESTRQ, "cqt": CQT},
            "objectives": {
                "codes_pred": {"name": "masked_prediction", "teacher": "codes"},
                "cqt_recon": {"name": "masked_regression", "teacher": "cqt", "weight": 0.5},
            },
            "trainer": {
                "max_steps": max_steps,
                "log_every_n_steps": 1,
                "val_every_n_steps": 3,
                "limit_val_batches": 1,
                "output_dir": str(tmp_path / "runs"),
            },
            "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "callbacks": {},
        }
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo")
    write_demo_dataset(path, num_clips=CLIPS, seconds=1.5, progress=False)
    return path


@pytest.fixture(scope="module")
def plain(demo, tmp_path_factory):
    """All clips in train/ (no validation split), one item per chunk."""
    dst = tmp_path_factory.mktemp("plain") / "shards"
    sh.write_shards(demo, dst, chunk_bytes=ONE_ITEM_PER_CHUNK, val_fraction=0.0, progress=False)
    return dst


@pytest.fixture(scope="module")
def with_targets(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("targets")
    dst = tmp / "shards"
    summary = shard_with_spec(make_spec(demo, tmp), demo, dst, chunk_bytes=ONE_ITEM_PER_CHUNK, progress=False)
    return dst, summary


def names(batch: AudioBatch) -> list[str]:
    return [f.path.name for f in batch.files]


def loader(location, train=True, workers=2, batch_size=2, seed=3, **kwargs):
    from mertlab.data.streaming import ShardDataset, ShardLoader

    dataset = ShardDataset(str(location), sample_rate=24000, crop_seconds=1.0, random_crops=True, seed=seed)
    return ShardLoader(dataset, train=train, batch_size=batch_size, num_workers=workers, **kwargs)


# --------------------------------------------------------------------------- writing
def test_shard_without_targets_layout_and_items(demo, plain):
    meta = json.loads((plain / sh.META).read_text())
    assert meta["format"] == sh.FORMAT and meta["audio"] == "original" and meta["teachers"] == {}
    assert meta["splits"] == {"train": {"files": CLIPS, "seconds": pytest.approx(CLIPS * 1.5)}}
    assert (plain / "train" / sh.INDEX).is_file() and not (plain / "val").exists()
    assert len(list((plain / "train").glob("chunk-*.bin"))) == CLIPS
    assert sh.is_shard_path(plain) and not sh.is_shard_path(demo)
    assert isinstance(data_source(DataSpec(path=str(plain))), ShardSource)
    assert isinstance(data_source(DataSpec(path=str(demo))), FileSource)
    assert not [p for p in plain.parent.iterdir() if p.name.startswith(".")]  # the temporary folder is gone

    from litdata import StreamingDataset

    raw = StreamingDataset(str(plain / "train"))
    sources = {p.name: p for p in list_audio_paths(demo, [".wav"])}
    items = [raw[i] for i in range(len(raw))]
    assert sorted(i["name"] for i in items) == sorted(sources) and sorted(i["id"] for i in items) == list(range(CLIPS))
    for item in items:  # the original bytes, and their format
        assert bytes(item["audio"]) == sources[item["name"]].read_bytes()
        assert (item["sample_rate"], item["num_frames"]) == (24000, probe(sources[item["name"]]).num_frames)


def test_shard_with_targets_and_flac_audio(demo, with_targets, tmp_path):
    dst, summary = with_targets
    assert summary.teachers == ["codes", "cqt"] and sum(summary.files.values()) == CLIPS and "val" in summary.files
    meta = sh.read_meta(dst)
    assert set(meta["teachers"]) == {"codes", "cqt"}
    assert meta["teachers"]["cqt"]["target_info"]["kind"] == "continuous"

    flac = tmp_path / "flac"
    sh.write_shards(demo, flac, sample_rate=16000, val_fraction=0.0, progress=False)
    from litdata import StreamingDataset

    item = StreamingDataset(str(flac / "train"))[0]
    assert bytes(item["audio"])[:4] == b"fLaC" and item["sample_rate"] == 16000
    assert item["num_frames"] == 24000  # 1.5 s at 16 kHz
    assert sh.read_meta(flac)["audio"] == "flac-16000"


def test_targets_from_shards_equal_the_target_cache(demo, with_targets, tmp_path):
    """Whole-file targets in the shards are the cache's entries, and the targets of a batch cut
    from the shards are what CachedTargets gives for the same crops of the source files."""
    dst, _ = with_targets
    spec = make_spec(dst, tmp_path)
    registry = get_registry()
    teachers = {a: registry.build("teacher", t.name, t.params) for a, t in spec.teachers.items()}
    files = [probe(p) for p in list_audio_paths(demo, [".wav"])]
    for alias, teacher in teachers.items():
        build_teacher_cache(teacher, files, tmp_path / "cache", alias=alias, progress=False)

    from litdata import StreamingDataset

    raw = StreamingDataset(str(dst / "train"))
    for i in range(len(raw)):
        item = raw[i]
        for alias, teacher in teachers.items():
            cached = TeacherCache(tmp_path / "cache", teacher).read(demo / item["name"])
            assert item["targets"][alias].dtype == cached.dtype
            np.testing.assert_array_equal(item["targets"][alias], cached)

    from mertlab.data.streaming import ShardDataset, ShardLoader

    rates = {a: t.info.frame_rate for a, t in teachers.items()}
    dataset = ShardDataset(
        str(dst / "train"), sample_rate=24000, crop_seconds=1.0, random_crops=True, seed=1, frame_rates=rates
    )
    batch = next(iter(ShardLoader(dataset, train=True, batch_size=3, collate_fn=collate_crops)))
    assert batch.frames is not None and len(batch) == 3
    source_batch = AudioBatch(
        batch.wav, batch.lengths, tuple(probe(demo / f.path) for f in batch.files), batch.start_seconds
    )
    source = target_source(None, teachers, 24000, data_source(DataSpec(path=str(dst))))
    assert isinstance(source, ShardTargets)
    source.check_files([])
    frame_lengths = torch.full((3,), 75)
    ours = source.targets(batch, 75.0, 75, frame_lengths)
    theirs = CachedTargets(tmp_path / "cache", teachers, 24000).targets(source_batch, 75.0, 75, frame_lengths)
    for alias in teachers:
        assert torch.equal(ours[alias].values, theirs[alias].values) and torch.equal(
            ours[alias].lengths, theirs[alias].lengths
        )


# --------------------------------------------------------------------------- streaming
def test_two_ranks_two_workers_read_disjoint_samples_covering_the_shards(plain, monkeypatch):
    from torch.utils.data import get_worker_info

    def tag(items):  # runs in the worker: which worker read which file
        return [(get_worker_info().id, c.file.path.name) for c in items]

    seen = {}
    for rank in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("GLOBAL_RANK", str(rank))
        for batch in loader(plain / "train", train=False, collate_fn=tag):
            for worker, name in batch:
                seen.setdefault((rank, worker), []).append(name)
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every rank's workers all read
    everything = [n for names_ in seen.values() for n in names_]
    assert len(everything) == len(set(everything)) == CLIPS  # disjoint, and together the whole set
    assert set(everything) == {f"demo_{i:03d}.wav" for i in range(CLIPS)}


def take(lo, count, fetch_ahead=False):
    """``count`` batches of a new iterator of ``lo`` as (epoch, names, crop starts), each marked
    consumed, then stop without exhausting it -- as Lightning does with a sized loader.
    ``fetch_ahead``: fetch one more that is never consumed (Lightning's prefetching fetcher)."""
    iterator, out = iter(lo), []
    for _ in range(count):
        batch = next(iterator)
        lo.mark_consumed(*batch.position)
        out.append((batch.position[0], names(batch), batch.start_seconds.tolist()))
    if fetch_ahead:
        next(iterator)
    return out


def test_mid_epoch_resume_neither_repeats_nor_skips(plain):
    kwargs = {"collate_fn": collate_crops}
    full = loader(plain / "train", **kwargs)
    per_epoch = len(full)
    epochs = [take(full, per_epoch), take(full, per_epoch)]
    assert [sorted(n for b in e for n in b[1]) for e in epochs] == [
        sorted(f"demo_{i:03d}.wav" for i in range(CLIPS))
    ] * 2
    assert [b[1] for b in epochs[0]] != [b[1] for b in epochs[1]]  # reshuffled each epoch
    assert [b[2] for b in epochs[0]] != [b[2] for b in epochs[1]]  # and new crops
    for cut in (1, 3):
        first = loader(plain / "train", **kwargs)
        head = take(first, cut, fetch_ahead=True)
        state = first.state_dict()
        resumed = loader(plain / "train", **kwargs)
        resumed.load_state_dict(state)
        assert head + take(resumed, per_epoch - cut) == epochs[0], cut
        assert take(resumed, per_epoch) == epochs[1], cut


def record_batches(monkeypatch):
    seen = []
    original = PretrainModule.on_train_batch_start

    def on_train_batch_start(self, batch, batch_idx):
        seen.append((self.global_step, names(batch), batch.start_seconds.tolist()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PretrainModule, "on_train_batch_start", on_train_batch_start)
    return seen


@pytest.mark.integration
def test_training_on_shards_completes_and_resumes_exactly(demo, with_targets, tmp_path, monkeypatch):
    """A run stopped mid-epoch and resumed reads the training stream an uninterrupted run reads
    (the DataModule's loader, epoch after epoch): the same files and crops at the same steps."""
    from mertlab.data.datamodule import AudioDataModule

    dst, summary = with_targets
    steps, cut = 5, 3  # an epoch is ceil(train files / 2) = 4 batches: cut mid-epoch, resume past its end
    spec = make_spec(dst, tmp_path, "cut", steps)
    datamodule = AudioDataModule(spec.data, 24000, spec.seed)
    datamodule.setup()
    stream = datamodule.train_dataloader()
    per_epoch = -(-summary.files["train"] // 2)
    assert len(stream) == per_epoch
    expected = take(stream, per_epoch) + take(stream, per_epoch)
    expected = [(step, b, starts) for step, (_, b, starts) in enumerate(expected[:steps])]
    first_epoch = [n for _, b, _ in expected[:per_epoch] for n in b]
    assert len(first_epoch) == len(set(first_epoch)) == summary.files["train"]  # every training file once

    seen = record_batches(monkeypatch)
    train(make_spec(dst, tmp_path, "cut", cut), progress=False)  # stops mid-epoch
    assert seen == expected[:cut]
    result = train(spec, resume=True, progress=False)
    assert seen == expected  # nothing repeated or skipped: the same files and crops at the same steps
    metrics = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    assert np.isfinite(metrics["loss/total"]) and np.isfinite(metrics["val/loss/total"])


# --------------------------------------------------------------------------- errors
def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.mark.integration
def test_bad_input_gives_one_line_errors(demo, plain, tmp_path, capsys, write_yaml):
    (tmp_path / "empty").mkdir()
    bad = make_spec(demo, tmp_path).model_dump(mode="json")
    bad["teachers"]["cqt"]["params"]["n_bins"] = -3
    bad_spec = write_yaml(bad, "bad.yaml")
    cases = [
        (("data", "shard", str(tmp_path / "missing"), str(tmp_path / "o1")), "does not exist"),
        (("data", "shard", str(tmp_path / "empty"), str(tmp_path / "o2")), "no audio files"),
        (("data", "shard", str(demo), str(plain)), "not empty"),
        (("data", "shard", str(demo), "s3://bucket/shards"), "must be a local folder"),
        (
            ("data", "shard", str(demo), str(tmp_path / "o3"), "--with-targets", str(tmp_path / "nope.yaml")),
            "nope.yaml",
        ),
        (("data", "shard", str(demo), str(tmp_path / "o4"), "--with-targets", str(bad_spec)), "n_bins"),
    ]
    for argv, expected in cases:
        code, err = run_cli(capsys, *argv)
        assert code == 1 and err.startswith("error: ") and len(err.splitlines()) == 1 and expected in err, (argv, err)
    assert not any(tmp_path.glob("o*")) and not any(tmp_path.glob(".o*"))

    # a spec whose teachers differ from the shards' targets, and shards with a target cache
    spec = make_spec(plain, tmp_path).model_dump(mode="json")
    code, err = run_cli(
        capsys,
        "train",
        str(write_yaml(spec, "cache.yaml")),
        "-o",
        f"data.target_cache={tmp_path / 'c'}",
        "--no-progress",
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "data.target_cache: not used with shards" in errors[0], err


def test_interrupted_write_leaves_no_destination(demo, tmp_path, monkeypatch):
    calls = []
    real = sh.encode_audio

    def failing(file, rate):
        calls.append(file)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(file, rate)

    monkeypatch.setattr(sh, "encode_audio", failing)
    with pytest.raises(KeyboardInterrupt):
        sh.write_shards(demo, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither DST nor its temporary folder


def test_object_store_url_is_read_through_litdata(plain, tmp_path):
    """``local:`` is litdata's stand-in for a remote store (downloaded into a cache folder)."""
    url = f"local:{plain}"
    assert sh.is_shard_path(url) and sh.read_meta(url)["splits"]["train"]["files"] == CLIPS
    assert isinstance(data_source(DataSpec(path=url)), ShardSource)
    assert not sh.is_shard_path(tmp_path / "nothing-here")
    from mertlab.data.streaming import ShardDataset, ShardLoader

    dataset = ShardDataset(
        sh.split_location(url, "train"),
        sample_rate=24000,
        crop_seconds=1.0,
        random_crops=False,
        cache_dir=str(tmp_path / "cache"),
    )
    batches = list(ShardLoader(dataset, train=False, batch_size=4, collate_fn=collate_crops))
    assert sum(len(b) for b in batches) == CLIPS and batches[0].wav.shape == (4, 24000)
    assert any((tmp_path / "cache").rglob("chunk-*.bin"))
