"""Bad audio never stops a run: skipped, counted, named once with the reason, summarised."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.data.datamodule import check_audio_files
from mertlab.data.dataset import CropDataset, collate_crops
from mertlab.data.sampler import ResumableBatchSampler
from mertlab.data.skipped import SkippedFile
from mertlab.experiment import metric_names as M

pytestmark = pytest.mark.filterwarnings("ignore")

RIFF_HEADER = bytes.fromhex("52494646") + (1000).to_bytes(4, "little") + b"WAVEfmt "


def write_bad_files(folder):
    """Every kind of bad file the data set scan must skip, by name -> the reason it must be skipped for."""
    sf.write(str(folder / "header_only.wav"), np.zeros(0, dtype=np.float32), 16000)
    sf.write(str(folder / "one_sample.wav"), np.zeros(1, dtype=np.float32), 16000)
    nan = np.full(16000, np.nan, dtype=np.float32)
    sf.write(str(folder / "nan.wav"), nan, 16000, subtype="FLOAT")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.wav").write_bytes(bytes(range(256)) * 8)
    (folder / "unreadable.flac").write_bytes(RIFF_HEADER + b"\x00" * 40)
    return {
        "header_only.wav": "no audio samples",
        "one_sample.wav": "too short",
        "nan.wav": "non-finite samples",
        "empty.wav": "cannot read audio",
        "garbage.wav": "cannot read audio",
        "unreadable.flac": "cannot read audio",
    }


def test_bad_files_are_skipped_at_scan_time_or_when_decoded(tmp_path):
    expected = write_bad_files(tmp_path)
    sf.write(str(tmp_path / "good.wav"), 0.1 * np.ones(8000, dtype=np.float32), 16000)
    files, skipped = check_audio_files(sorted(tmp_path.iterdir()), min_seconds=0.02)
    assert {f.path.name for f in files} == {"good.wav", "nan.wav"}  # NaN needs decoding: found in the loader
    for item in skipped:
        assert expected[item.path.name] in item.reason, item
    assert len(skipped) == 5
    dataset = CropDataset(files, 16000, 0.25, random_crops=True, seed=0)
    items = [dataset[i] for i in range(len(files))]
    (bad,) = [i for i in items if isinstance(i, SkippedFile)]
    assert bad.path.name == "nan.wav" and "non-finite samples" in bad.reason
    batch = collate_crops(items)
    assert len(batch) == 1 and batch.skipped == (bad,)
    assert len(collate_crops([bad])) == 0  # a batch of only bad files is empty, not an error


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=600), with_header=st.booleans())
def test_garbage_bytes_as_audio_never_crash_the_loader(tmp_path, payload, with_header):
    path = tmp_path / "fuzz.wav"
    path.write_bytes((RIFF_HEADER if with_header else b"") + payload)
    files, skipped = check_audio_files([path], min_seconds=0.02)
    assert len(files) + len(skipped) == 1
    if files:
        dataset = CropDataset(files, 16000, 0.25, random_crops=True, seed=0)
        sampler = ResumableBatchSampler(1, 1, False, seed=0)
        batch = collate_crops([dataset[key] for key in next(iter(sampler))])
        assert len(batch) + len(batch.skipped) == 1
        assert not batch.skipped or batch.skipped[0].path == path


def test_train_skips_bad_files_counts_names_and_summarises_them(demo_dir, tmp_path, tracking_uri, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    expected = write_bad_files(data)
    spec = {
        "name": "bad-audio",
        "data": {
            "path": str(data),
            "crop_seconds": 0.5,
            "batch_size": 2,
            "val_fraction": 0.3,
            "num_workers": 1,
            "extensions": [".wav", ".flac"],
        },
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 12, "bins_per_octave": 4}}},
        "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
        "trainer": {
            "max_steps": 12,
            "log_every_n_steps": 2,
            "val_every_n_steps": 6,
            "limit_val_batches": 2,
            "output_dir": str(tmp_path / "runs"),
        },
        "tracking": {"tracking_uri": tracking_uri},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with caplog.at_level(logging.WARNING, logger="mertlab"):
        assert main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped 6 bad audio files" in out and "data/skipped_files.tsv" in out
    named = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping bad audio file")]
    assert sorted(m.split(":")[0].rsplit("/", 1)[1] for m in named) == sorted(expected)  # each named once
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("bad-audio").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.metrics[M.SKIPPED_FILES] == 6
    listing = client.download_artifacts(run.info.run_id, "data/skipped_files.tsv", str(tmp_path))
    lines = dict(line.split("\t") for line in open(listing).read().splitlines())
    assert {p.rsplit("/", 1)[1]: r for p, r in lines.items()}.keys() == expected.keys()
    for file, reason in lines.items():
        assert expected[file.rsplit("/", 1)[1]] in reason
