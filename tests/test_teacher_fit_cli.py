"""`mertlab teachers fit SPEC`: fit the spec's requires_fit teachers on its training audio."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mertlab.cli import main
from mertlab.data.demo import write_demo_dataset
from mertlab.experiment.spec import load_spec
from mertlab.plugin_system.registry import get_registry
from mertlab.toolkit.safe_load import read_safetensors

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo")
    write_demo_dataset(path, num_clips=5, seconds=1.5, progress=False)
    return path


def spec_data(demo_dir, centroids) -> dict:
    kmeans = {"n_clusters": 8, "n_iter": 10, "batch_size": 500, "n_mels": 32, "max_fit_frames": 600}
    if centroids is not None:
        kmeans["centroids"] = str(centroids)
    return {
        "name": "fit-test",
        "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.2},
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {
            "km": {"name": "kmeans", "params": kmeans},
            "bq": {"name": "bestrq", "params": {"codebook_size": 64}},
        },
        "objectives": {
            "km_pred": {"name": "masked_prediction", "teacher": "km"},
            "bq_pred": {"name": "masked_prediction", "teacher": "bq"},
        },
    }


def test_fit_writes_the_centroids_file_the_spec_names(demo_dir, tmp_path, write_yaml, capsys):
    centroids = tmp_path / "state" / "km.pt"
    spec_path = write_yaml(spec_data(demo_dir, centroids))

    assert main(["teachers", "fit", str(spec_path), "-o", "teachers.km.params.n_clusters=6"]) == 0

    out = capsys.readouterr().out
    assert f"teachers.km (kmeans): wrote {centroids}" in out and "bq" not in out  # bestrq needs no fit
    spec = load_spec(spec_path, ["teachers.km.params.n_clusters=6"])
    teacher = get_registry().build("teacher", "kmeans", spec.teachers["km"].params)
    assert teacher.fitted and teacher.centroids.shape == (6, 39)
    assert teacher.fingerprint() in out
    codes = teacher.targets(torch.randn(1, 12000), torch.tensor([12000])).values
    assert codes.shape == (1, 38, 1) and bool((codes < 6).all())
    # the same spec refits deterministically (seeded crops and k-means) and says it replaced the file
    before = load_file(centroids)["centroids"]  # safetensors
    assert main(["teachers", "fit", str(spec_path), "-o", "teachers.km.params.n_clusters=6"]) == 0
    assert "replaced the previous file" in capsys.readouterr().out
    assert torch.equal(load_file(centroids)["centroids"], before)


def test_fit_without_a_state_path_is_one_clear_error(demo_dir, write_yaml, capsys):
    spec_path = write_yaml(spec_data(demo_dir, centroids=None))
    assert main(["teachers", "fit", str(spec_path)]) == 1
    err = capsys.readouterr().err
    assert "teachers.km.params: teacher 'kmeans' needs a file to keep its fitted state" in err


def test_spec_without_fittable_teachers_says_so(demo_dir, write_yaml, capsys):
    data = spec_data(demo_dir, centroids=None)
    del data["teachers"]["km"], data["objectives"]["km_pred"]
    assert main(["teachers", "fit", str(write_yaml(data))]) == 0
    assert "no teacher in" in capsys.readouterr().out


def test_fit_trains_the_melrvq_tokenizer_with_a_progress_bar(demo_dir, tmp_path, write_yaml, capsys):
    tokenizer = tmp_path / "state" / "melrvq.pt"
    data = spec_data(demo_dir, centroids=None)
    del data["teachers"]["km"], data["objectives"]["km_pred"]
    data["teachers"]["mel"] = {
        "name": "melrvq",
        "params": {
            "n_mels": 32,
            "n_codebooks": 2,
            "codebook_size": 8,
            "steps": 30,
            "batch_size": 128,
            "tokenizer": str(tokenizer),
        },
    }
    data["objectives"]["mel_pred"] = {"name": "masked_prediction", "teacher": "mel"}
    spec_path = write_yaml(data)

    assert main(["teachers", "fit", str(spec_path)]) == 0

    captured = capsys.readouterr()
    assert f"teachers.mel (melrvq): wrote {tokenizer}" in captured.out
    assert "melrvq fit" in captured.err and "recon=" in captured.err  # the progress bar shows the reconstruction error
    tensors, meta = read_safetensors(tokenizer, "state")
    assert meta["format"] == "mertlab-melrvq-v1" and tensors["rvq.codebooks"].shape == (2, 8, 16)
    teacher = get_registry().build("teacher", "melrvq", load_spec(spec_path).teachers["mel"].params)
    assert teacher.fitted and teacher.fingerprint() in captured.out
    # frames from 20 passes of random crops (4 training files x 1 s x 25 Hz = 100 frames a pass; the
    # default max_fit_frames asks for more, 20 passes is the most), then each codebook's usage
    report = captured.out.splitlines()[-1]
    assert report.startswith("  fit on 20 pass(es) of random crops: frames 2000, recon_l1 "), report
    perplexities = [float(report.split(f"perplexity/cb{cb} ")[1].split(",")[0]) for cb in (0, 1)]
    assert all(4 < p <= 8 for p in perplexities), report
    # --no-progress: no bar at all (frames, fit)
    assert main(["teachers", "fit", str(spec_path), "--no-progress", "--passes", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "fit on 2 pass(es) of random crops: frames 200," in captured.out


def test_no_progress_silences_the_demo_data_and_target_cache_bars(tmp_path, write_yaml, capsys, monkeypatch):
    import mertlab.train.run as run_module

    assert (
        main(["demo-data", str(tmp_path / "demo"), "--clips", "2", "--seconds", "1", "--no-tasks", "--no-progress"])
        == 0
    )
    assert capsys.readouterr().err == ""
    asked = []
    monkeypatch.setattr(run_module, "write_demo_tasks", lambda *a, **k: asked.append(k["progress"]))
    spec = spec_data(tmp_path / "demo", centroids=None)
    del spec["teachers"]["km"], spec["objectives"]["km_pred"]
    spec["data"].update(generate_demo=True, target_cache=str(tmp_path / "cache"))
    assert main(["targets", "build", str(write_yaml(spec)), "--no-progress"]) == 0
    assert asked == [False] and capsys.readouterr().err == ""  # demo tasks and cache build alike
