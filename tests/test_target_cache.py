"""The target cache: build, hit, miss, invalidation, interrupted builds, crops, training from it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.data.audio import list_audio_paths, load_audio, probe, read_segment
from mertlab.data.dataset import AudioBatch
from mertlab.data.demo import write_demo_dataset
from mertlab.errors import MertlabError
from mertlab.experiment.spec import resolve_spec
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers import target_cache as tc
from mertlab.teachers.target_cache import TeacherCache, Windowing, build_targets, compute_file_targets, file_key
from mertlab.train.module import PretrainModule
from mertlab.train.run import train

pytestmark = pytest.mark.filterwarnings("ignore")

CQT = {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}}
# normalize: none -- per-clip statistics make cached (whole-file) and crop targets differ by design
BESTRQ = {"name": "bestrq", "params": {"codebook_size": 64, "n_codebooks": 2, "normalize": "none"}}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo")
    write_demo_dataset(path, num_clips=3, seconds=1.5, progress=False)
    return path


def make_spec(data_path, tmp_path, cache=True, cqt=CQT, tracking_uri=None, **data):
    return resolve_spec(
        {
            "name": "cache-test",
            "data": {
                "path": str(data_path),
                "crop_seconds": 1.0,
                "batch_size": 2,
                "val_fraction": 0.3,
                "target_cache": str(tmp_path / "targets") if cache else None,
                **data,
            },
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {"codes": BESTRQ, "cqt": cqt},
            "objectives": {
                "codes_pred": {"name": "masked_prediction", "teacher": "codes"},
                "cqt_recon": {"name": "masked_regression", "teacher": "cqt", "weight": 0.5},
            },
            "trainer": {
                "max_steps": 3,
                "log_every_n_steps": 1,
                "val_every_n_steps": 3,
                "limit_val_batches": 1,
                "output_dir": str(tmp_path / "runs"),
            },
            "tracking": {"tracking_uri": tracking_uri},
            "callbacks": {},
        }
    )


def counts(summaries):
    return {s.alias: (s.computed, s.skipped) for s in summaries}


def teacher(spec, alias):
    t = spec.teachers[alias]
    return get_registry().build("teacher", t.name, t.params)


def files_of(demo_dir):
    return [probe(p) for p in list_audio_paths(demo_dir, [".wav"])]


def test_build_layout_then_hit(demo_dir, tmp_path):
    spec = make_spec(demo_dir, tmp_path)
    assert counts(build_targets(spec, progress=False)) == {"codes": (3, 0), "cqt": (3, 0)}
    assert counts(build_targets(spec, progress=False)) == {"codes": (0, 3), "cqt": (0, 3)}  # hit: nothing computed

    for alias, dtype, frames in [("codes", np.int16, (1 + 36000 // 80) // 4), ("cqt", np.float32, 1 + 36000 // 320)]:
        t = teacher(spec, alias)
        folder = tmp_path / "targets" / f"{t.name}-{t.fingerprint()}"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["format"] == tc.FORMAT and manifest["fingerprint"] == t.fingerprint()
        assert manifest["teacher"] == t.name and manifest["params"] == t.params.model_dump(mode="json")
        assert manifest["target_info"]["frame_rate"] == 75.0 and manifest["target_info"]["dim"] == t.info.dim
        cache = TeacherCache(tmp_path / "targets", t)
        for file in files_of(demo_dir):
            key = file_key(file.path)
            entry = cache.entry(file.path)
            assert entry == folder / key[:2] / f"{key}.npy"  # sharded by key prefix
            stored = cache.read(file.path)
            assert isinstance(stored, np.memmap) and stored.dtype == dtype and stored.shape == (frames, t.info.dim)
            whole = t.targets(load_audio(file.path, 24000)[None], torch.tensor([36000]))  # 1.5 s: one window
            assert np.array_equal(stored, whole.values[0].numpy().astype(dtype))


CQT_EXACT = {"name": "cqt", "params": {**CQT["params"], "implementation": "exact"}}


def test_windows_match_the_whole_file(demo_dir):
    """Windows with enough context give the whole-file frames: codes exactly, nnAudio's CQT to float
    precision (context 0.15 s = 12 frames > CQT half kernel 1942 samples and half the 2048-sample
    STFT), the default FFT-based CQT within 1e-4 of the peak (its kernels' spectra are truncated at
    1e-4, which leaves tiny tails past the kernel: well inside its stated 1e-3 tolerance)."""
    file = files_of(demo_dir)[0]
    small = Windowing(window_seconds=0.4, context_seconds=0.15)  # 4 windows over 1.5 s
    for params, atol in [(BESTRQ, None), (CQT_EXACT, 1e-5), (CQT, 1e-4)]:
        t = get_registry().build("teacher", params["name"], params["params"])
        whole = compute_file_targets(t, file, Windowing(window_seconds=100))
        windowed = compute_file_targets(t, file, small)
        assert windowed.shape == whole.shape
        if atol is None:
            assert np.array_equal(windowed, whole)
        else:
            np.testing.assert_allclose(windowed, whole, rtol=1e-4, atol=atol * np.abs(whole).max())
        no_context = compute_file_targets(t, file, Windowing(window_seconds=0.4, context_seconds=0))
        assert not np.array_equal(no_context, whole)  # the context is what makes window edges right


def test_edited_file_and_param_change_recompute_only_what_changed(demo_dir, tmp_path):
    data = tmp_path / "audio"
    write_demo_dataset(data, num_clips=3, seconds=1.5, progress=False)
    spec = make_spec(data, tmp_path)
    build_targets(spec, progress=False)

    edited = sorted(data.glob("*.wav"))[1]
    audio, sr = sf.read(edited)
    before = edited.stat().st_mtime_ns
    sf.write(edited, audio[::-1].copy(), sr)  # new content, size unchanged: the mtime tells
    if edited.stat().st_mtime_ns == before:  # a filesystem with coarse timestamps
        os.utime(edited, ns=(before, before + 1_000_000_000))
    module = PretrainModule(spec)
    with pytest.raises(MertlabError, match=r"1 of 3 audio files .* no cached targets .*mertlab targets build SPEC"):
        module.target_source.check_files(files_of(data))
    assert counts(build_targets(spec, progress=False)) == {"codes": (1, 2), "cqt": (1, 2)}

    changed = make_spec(data, tmp_path, cqt={"name": "cqt", "params": {"n_bins": 12, "bins_per_octave": 4}})
    with pytest.raises(
        MertlabError,
        match=r"teachers.cqt: .*no targets for teacher 'cqt' with its current params .*"
        r"other params/state \(fingerprints .*mertlab targets build SPEC",
    ):
        PretrainModule(changed).target_source.check_files(files_of(data))
    assert counts(build_targets(changed, progress=False)) == {"codes": (0, 3), "cqt": (3, 0)}
    assert len(list((tmp_path / "targets").glob("cqt-*"))) == 2  # the old version is untouched
    PretrainModule(spec).target_source.check_files(files_of(data))  # and still valid


def test_interrupted_build_leaves_no_partial_entry_and_resumes(demo_dir, tmp_path, monkeypatch):
    spec = make_spec(demo_dir, tmp_path).model_copy()
    spec.teachers = {"codes": spec.teachers["codes"]}
    real_save, calls = np.save, []

    def failing_save(f, array):  # the second entry dies half-way through writing
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\x93NUMPY half an entry")
            raise OSError("No space left on device")
        real_save(f, array)

    monkeypatch.setattr(tc.np, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        build_targets(spec, progress=False)
    monkeypatch.setattr(tc.np, "save", real_save)

    folder = TeacherCache(tmp_path / "targets", teacher(spec, "codes")).folder
    visible = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    entries = [v for v in visible if v.endswith(".npy")]
    assert len(entries) == 1 and "manifest.json" in visible  # the manifest and the one complete entry
    assert set(visible) == {"manifest.json", entries[0], entries[0].replace(".npy", ".sum.json")}  # and its record
    assert not [p for p in folder.rglob("*tmp*")]
    assert counts(build_targets(spec, progress=False)) == {"codes": (2, 1)}  # resumes
    t = teacher(spec, "codes")
    for file in files_of(demo_dir):
        assert np.array_equal(TeacherCache(tmp_path / "targets", t).read(file.path), compute_file_targets(t, file))


def grid_batch(demo_dir, frame_starts):
    """1 s crops of each demo file starting on the 75 Hz frame grid (320 samples at 24 kHz),
    zero-padded where the file ends first."""
    files = files_of(demo_dir)
    crops = [read_segment(f, 320 * k, 24000) for f, k in zip(files, frame_starts, strict=False)]
    wav = torch.stack([torch.nn.functional.pad(c, (0, 24000 - len(c))) for c in crops])
    starts = torch.tensor([320 * k / 24000 for k in frame_starts], dtype=torch.float64)
    return AudioBatch(wav, torch.tensor([len(c) for c in crops]), tuple(files), starts)


def targets_of(module, batch):
    num_frames, frame_lengths, _ = module.frame_padding(batch.wav, batch.lengths)
    return module.compute_targets(batch, num_frames, frame_lengths)


def test_cached_crop_targets_equal_on_the_fly(demo_dir, tmp_path):
    """Same crops, both sources. Away from the crop edges the teacher sees the same audio either
    way; within a receptive field of an edge the crop is zero-padded where the file continues,
    so only interior frames can agree (bestrq: half its 2048-sample STFT = 4 frames; CQT: half
    its 3884-sample lowest kernel = 7 frames)."""
    spec = make_spec(demo_dir, tmp_path)
    build_targets(spec, progress=False)
    cached, live = PretrainModule(spec), PretrainModule(make_spec(demo_dir, tmp_path, cache=False))
    batch = grid_batch(demo_dir, [0, 17, 37])  # start, middle, and a crop ending at the last full frame
    got, want = targets_of(cached, batch), targets_of(live, batch)
    for alias, margin in [("codes", 4), ("cqt", 7)]:
        a, b = got[alias], want[alias]
        assert a.values.shape == b.values.shape and a.values.dtype == b.values.dtype
        assert torch.equal(a.lengths, b.lengths)
        inner = slice(margin, int(b.lengths.min()) - margin)
        if alias == "codes":
            assert torch.equal(a.values[:, inner], b.values[:, inner])
        else:
            # the default (FFT) CQT: within 1e-4 of the peak, see test_windows_match_the_whole_file
            torch.testing.assert_close(
                a.values[:, inner], b.values[:, inner], rtol=1e-4, atol=1e-4 * float(b.values.abs().max())
            )
    assert torch.equal(got["codes"].values[0, :-4], want["codes"].values[0, :-4])  # the file's start is a real edge

    # Slicing follows the crop's start time: one frame later shifts by one frame; 3/4 of a frame
    # later gives codes of the nearest (next) frame and features interpolated 1/4 : 3/4.
    later = targets_of(cached, grid_batch(demo_dir, [1, 18, 38]))
    shifted = grid_batch(demo_dir, [0, 17, 37])
    shifted.start_seconds = shifted.start_seconds + 240 / 24000
    between = targets_of(cached, shifted)
    n = int(later["cqt"].lengths.min()) - 1  # frames valid in all three (the last crop ends with the file)
    torch.testing.assert_close(later["cqt"].values[:, :n], got["cqt"].values[:, 1 : n + 1])
    torch.testing.assert_close(
        between["cqt"].values[:, :n], torch.lerp(got["cqt"].values[:, :n], later["cqt"].values[:, :n], 0.75)
    )
    assert torch.equal(between["codes"].values[:, :n], later["codes"].values[:, :n])


def test_entries_open_and_check_once_then_stay_mapped(demo_dir, tmp_path, monkeypatch):
    """Each entry is read (checksum) and its values checked once, over the whole file -- a bad
    value outside every crop still stops the run -- then later crops only slice the open map;
    past OPEN_ENTRIES the least recently used map is closed and reopened (checked) on demand."""
    from mertlab.train import targets as target_sources

    spec = make_spec(demo_dir, tmp_path)
    build_targets(spec, progress=False)
    module = PretrainModule(spec)
    opened = []
    read = target_sources.CachedTargets.read
    monkeypatch.setattr(
        target_sources.CachedTargets,
        "read",
        lambda self, alias, file, device="cpu": opened.append((alias, file.path)) or read(self, alias, file, device),
    )
    first = targets_of(module, grid_batch(demo_dir, [0, 17, 37]))
    targets_of(module, grid_batch(demo_dir, [1, 18, 38]))
    assert sorted(opened) == sorted((a, f.path) for a in ("codes", "cqt") for f in files_of(demo_dir))  # once each

    monkeypatch.setattr(target_sources, "OPEN_ENTRIES", 2)
    fresh = PretrainModule(spec)
    opened.clear()
    again = targets_of(fresh, grid_batch(demo_dir, [0, 17, 37]))
    targets_of(fresh, grid_batch(demo_dir, [0, 17, 37]))
    assert len(opened) == 12  # 6 entries, only 2 stay open: every use reopens (and rechecks) one
    torch.testing.assert_close(again["cqt"].values, first["cqt"].values)

    t = teacher(spec, "cqt")
    entry = TeacherCache(tmp_path / "targets", t).entry(files_of(demo_dir)[0].path)
    values = np.load(entry)
    values[-1, 0] = np.nan  # the file's last frame: outside the crop read below
    np.save(entry, values)
    entry.with_name(entry.stem + ".sum.json").unlink()  # (as an older cache without records)
    with pytest.raises(MertlabError, match=r"cqt.*cached targets of .*non-finite"):
        targets_of(PretrainModule(spec), grid_batch(demo_dir, [0, 17, 37]))


@pytest.mark.integration
def test_training_reads_targets_from_the_cache(demo_dir, tmp_path, tracking_uri, monkeypatch):
    spec = make_spec(demo_dir, tmp_path, tracking_uri=tracking_uri)
    build_targets(spec, progress=False)
    for name in ("cqt", "bestrq"):  # the teachers must not run
        cls = get_registry().get("teacher", name).component
        monkeypatch.setattr(cls, "targets", lambda *a, **k: pytest.fail("a teacher ran although targets are cached"))
    result = train(spec, progress=False)
    history = MlflowClient(tracking_uri).get_metric_history(result.run_id, "loss/total")
    assert len(history) == 3 and all(np.isfinite(m.value) for m in history)
    assert np.isfinite(result.metrics["val/loss/total"])


@pytest.mark.integration
def test_train_builds_missing_entries_first(demo_dir, tmp_path, tracking_uri):
    spec = make_spec(demo_dir, tmp_path, tracking_uri=tracking_uri)
    train(spec, progress=False)
    n = len(files_of(demo_dir))
    assert counts(build_targets(spec, progress=False)) == {"codes": (0, n), "cqt": (0, n)}


@pytest.mark.integration
def test_missing_cache_is_one_clear_error(demo_dir, tmp_path, tracking_uri, write_yaml, capsys):
    # the module's store, not the default ./mlflow.db, which exists or not depending on what ran before
    path = write_yaml(make_spec(demo_dir, tmp_path, tracking_uri=tracking_uri).model_dump(mode="json"))
    code = main(["train", str(path), "--no-progress", "-o", "data.build_target_cache=false"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "teachers.codes: data.target_cache:" in err and "no targets for teacher 'bestrq'" in err
    assert "run `mertlab targets build SPEC`" in err


def test_cli_builds_generated_demo_data_and_reports(tmp_path, write_yaml, capsys, monkeypatch):
    import mertlab.data.prepare as prepare

    monkeypatch.setattr(
        prepare,
        "write_demo_dataset",
        lambda path, progress=True: write_demo_dataset(path, num_clips=3, seconds=1.5, progress=False),
    )
    # the demo tasks are tested in test_demo_tasks.py
    monkeypatch.setattr(prepare, "write_demo_tasks", lambda directory, names=None, progress=True: {})
    raw = make_spec(tmp_path / "fresh", tmp_path, cache=False, generate_demo=True).model_dump(mode="json")
    path = write_yaml(raw)
    cache_opt = f"data.target_cache={tmp_path / 'cli-targets'}"

    assert main(["targets", "build", str(path), "--no-progress"]) == 1
    assert "data.target_cache: not set" in capsys.readouterr().err

    assert main(["targets", "build", str(path), "-o", cache_opt, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "teachers.codes (bestrq): 3 files computed, 0 already cached -> " in out
    assert "teachers.cqt (cqt): 3 files computed, 0 already cached -> " + str(tmp_path / "cli-targets" / "cqt-") in out
    assert main(["targets", "build", str(path), "-o", cache_opt, "--no-progress"]) == 0
    assert "teachers.cqt (cqt): 0 files computed, 3 already cached" in capsys.readouterr().out

    # a k-means teacher that is not fitted yet: its own error, and no cache folder for it
    kmeans = {"name": "kmeans", "params": {"n_clusters": 8, "centroids": str(tmp_path / "km.pt")}}
    code = main(
        ["targets", "build", str(path), "-o", cache_opt, "-o", f"teachers.km={json.dumps(kmeans)}", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "teachers.km on " in err and "run `mertlab teachers fit SPEC`" in err
    assert not list((tmp_path / "cli-targets").glob("kmeans-*/manifest.json"))
