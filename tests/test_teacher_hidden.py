"""The `hidden` distillation teacher (and the kmeans `feature: hidden`) on mertlab checkpoints and hf:DIR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from hf_support import tiny_hubert
from mertlab.data.audio import load_audio, probe
from mertlab.errors import MertlabError
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.target_cache import TeacherCache, Windowing, build_teacher_cache
from mertlab.toolkit.checkpoint import load_backbone, save_backbone
from mertlab.toolkit.safe_load import read_safetensors
from synth_audio import SR, melody, padded_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**params):
    return get_registry().build("teacher", "hidden", params)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A tiny transformer with seeded random weights, saved by mertlab.toolkit.checkpoint."""
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", "transformer", {"preset": "tiny"})
    return save_backbone(tmp_path_factory.mktemp("hidden") / "backbone.pt", backbone)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random transformers.HubertModel saved with save_pretrained, and the model."""
    model = tiny_hubert()
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return path, model


def clips_batch():
    return padded_batch([melody(0.6, seed=1), melody(0.35, seed=2)], pad_value=0.9)


def test_layer_equals_the_backbones_own_hidden_state(backbone_file):
    teacher = build(checkpoint=str(backbone_file), layer=1, normalize="none")
    backbone = load_backbone(backbone_file)
    assert teacher.sample_rate == 24000 and teacher.info.frame_rate == 75.0 and teacher.info.dim == 64
    wav, lengths = clips_batch()
    out = teacher.targets(wav, lengths)
    for b, n in enumerate(lengths.tolist()):
        own = backbone(wav[b : b + 1, :n]).hidden_states[1][0]
        assert int(out.lengths[b]) == own.shape[0] == backbone.num_frames(n)
        torch.testing.assert_close(out.values[b, : out.lengths[b]], own)
    assert bool((out.values[1, out.lengths[1] :] == 0).all())


def test_top_k_is_the_mean_of_normalised_last_layers(backbone_file):
    backbone = load_backbone(backbone_file)
    wav = melody(0.5, seed=3)[None]
    states = backbone(wav).hidden_states  # tiny: 2 layers, so top_k=2 = layers 1 and 2
    per_frame = build(checkpoint=str(backbone_file), top_k=2).targets(wav, torch.tensor([wav.shape[1]])).values[0]
    expected = torch.stack([F.layer_norm(states[i][0], (64,)) for i in (1, 2)]).mean(0)
    torch.testing.assert_close(per_frame, expected, atol=1e-5, rtol=1e-4)
    per_time = (
        build(checkpoint=str(backbone_file), top_k=2, normalize="time")
        .targets(wav, torch.tensor([wav.shape[1]]))
        .values[0]
    )
    expected = torch.stack([F.instance_norm(states[i][0].T[None])[0].T for i in (1, 2)]).mean(0)
    torch.testing.assert_close(per_time, expected, atol=1e-5, rtol=1e-4)
    last = (
        build(checkpoint=str(backbone_file), top_k=1, normalize="none")
        .targets(wav, torch.tensor([wav.shape[1]]))
        .values[0]
    )
    torch.testing.assert_close(last, states[-1][0])


def test_hf_directory_gives_the_hubert_models_hidden_states(hf_dir):
    path, model = hf_dir
    teacher = build(checkpoint=f"hf:{path}", layer=1, normalize="none")
    wav = melody(0.5, seed=4)[None]
    out = teacher.targets(wav, torch.tensor([wav.shape[1]]))
    with torch.no_grad():
        theirs = model(wav, output_hidden_states=True).hidden_states[1][0]
    assert out.info.dim == 32
    torch.testing.assert_close(out.values[0], theirs, atol=1e-5, rtol=1e-5)


def test_kmeans_clusters_a_layer_of_an_hf_directory(hf_dir):
    path, _ = hf_dir
    kmeans = get_registry().build(
        "teacher",
        "kmeans",
        {"feature": "hidden", "checkpoint": f"hf:{path}", "layer": 2, "n_clusters": 4, "n_iter": 10, "batch_size": 200},
    )
    kmeans.fit([padded_batch([melody(0.8, seed=s) for s in range(3)])], progress=False)
    codes = kmeans.targets(*clips_batch())
    assert codes.values.shape[2] == 1 and int(codes.values.max()) < 4 and kmeans.info.frame_rate == 75.0


def test_weights_change_the_fingerprint_and_files_load_weights_only(backbone_file, tmp_path):
    _, meta = read_safetensors(backbone_file, "backbone")  # plain tensors and JSON values
    assert meta["format"] == "mertlab-backbone-v2"
    first = build(checkpoint=str(backbone_file), layer=1).fingerprint()
    assert build(checkpoint=str(backbone_file), layer=1).fingerprint() == first
    torch.manual_seed(1)
    other = save_backbone(tmp_path / "other.pt", get_registry().build("backbone", "transformer", {"preset": "tiny"}))
    assert build(checkpoint=str(other), layer=1).fingerprint() != first


def test_bad_params_are_one_clear_error(backbone_file, tmp_path):
    with pytest.raises(MertlabError, match="needs params.checkpoint"):
        build()
    with pytest.raises(MertlabError, match="top_k=3 exceeds the 2 layers"):
        build(checkpoint=str(backbone_file), top_k=3)
    with pytest.raises(MertlabError, match=r"params: Value error, layer 5 does not exist: .* has 2 layers"):
        build(checkpoint=str(backbone_file), layer=5)
    with pytest.raises(MertlabError, match="set `layer`"):
        build(checkpoint=str(backbone_file), top_k=None)
    with pytest.raises(MertlabError, match="no such checkpoint"):
        build(checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(MertlabError, match="no such directory"):
        build(checkpoint=f"hf:{tmp_path / 'nowhere'}")


def test_targets_through_the_target_cache(backbone_file, tmp_path):
    teacher = build(checkpoint=str(backbone_file), top_k=2)
    sf.write(tmp_path / "a.wav", melody(1.0, seed=5).numpy(), SR)
    file = probe(tmp_path / "a.wav")
    build_teacher_cache(teacher, [file], tmp_path / "cache", windowing=Windowing(window_seconds=100), progress=False)
    cached = TeacherCache(tmp_path / "cache", teacher).read(file.path)
    whole = teacher.targets(load_audio(file.path, SR)[None], torch.tensor([file.num_frames])).values[0]
    assert cached.dtype == np.float32 and np.allclose(cached, whole.numpy(), atol=1e-6)


# --------------------------------------------------------------------------- every loadable backbone
#: The quickstart's frontend (experiments/quickstart.yaml): one 2048-sample filterbank conv, hop 320.
FILTERBANK = {"preset": "tiny", "conv_channels": [32], "conv_kernels": [2048], "conv_strides": [320]}


def saved_backbone(path, **params):
    torch.manual_seed(0)
    return save_backbone(path, get_registry().build("backbone", "transformer", params))


@pytest.mark.parametrize(("params", "window"), [(FILTERBANK, 2048), ({"preset": "tiny"}, 400)])
def test_conv_frontends_give_their_real_frame_count_through_the_boundary(tmp_path, params, window):
    from mertlab.toolkit.align import align_targets
    from mertlab.toolkit.teacher_output import check_targets

    path = saved_backbone(tmp_path / "b.safetensors", **params)
    teacher = build(checkpoint=str(path), top_k=2)
    backbone = load_backbone(path)
    assert teacher.info.receptive_field == (window - 1) / 24000
    wav, lengths = padded_batch([melody(2.0, seed=1), melody(1.3, seed=2)], pad_value=0.5)
    out = check_targets(teacher, teacher.targets(wav, lengths), wav.shape[1], lengths)  # passes the boundary
    assert out.lengths.tolist() == [backbone.num_frames(n) for n in lengths.tolist()]
    assert out.lengths[0] == (48000 - window) // 320 + 1  # 144 for the filterbank, not 150 = 75 Hz x 2 s
    # a student with a mel frontend has ceil(S / hop) frames: the ones past the teacher's are padding
    student = get_registry().build("backbone", "transformer", {"preset": "tiny", "frontend": "mel"})
    frames = student.num_frames(wav.shape[1])
    aligned = align_targets(out, student.frame_rate, frames, student.frame_lengths(lengths))
    assert aligned.lengths.tolist() == out.lengths.tolist() and frames == 150
    torch.testing.assert_close(aligned.values[0, :144], out.values[0, :144])
    # k-means units of the same layer count frames the same way
    units = get_registry().build(
        "teacher", "kmeans", {"feature": "hidden", "checkpoint": str(path), "layer": 2, "n_clusters": 4, "n_iter": 5}
    )
    assert units.info.receptive_field == teacher.info.receptive_field
    units.fit([(wav, lengths)], progress=False)
    codes = check_targets(units, units.targets(wav, lengths), wav.shape[1], lengths)
    assert codes.lengths.tolist() == out.lengths.tolist()


def test_validate_checks_layer_and_top_k_against_the_checkpoint_without_building_it(
    tmp_path, write_yaml, monkeypatch, hf_dir
):
    import mertlab.toolkit.checkpoint as checkpoint_module
    import mertlab.toolkit.frame_features as frame_features_module
    from mertlab.errors import SpecError
    from mertlab.experiment.spec import load_spec

    path = saved_backbone(tmp_path / "four.safetensors", **{**FILTERBANK, "num_layers": 4})
    ckpt = tmp_path / "last.ckpt"  # the layout of a training checkpoint
    torch.save({"mertlab_spec": {"backbone": {"name": "transformer", "params": FILTERBANK}}, "state_dict": {}}, ckpt)

    def no_model(*args, **kwargs):
        raise AssertionError("validate built the backbone")

    monkeypatch.setattr(checkpoint_module, "load_backbone", no_model)
    monkeypatch.setattr(checkpoint_module, "load_hf_backbone", no_model)
    monkeypatch.setattr(frame_features_module, "load_backbone", no_model)
    spec = {
        "name": "distill",
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {"dist": {"name": "hidden", "params": {"checkpoint": str(path)}}},  # top_k 8 by default
        "objectives": {"o": {"name": "masked_regression", "teacher": "dist"}},
    }
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(spec))
    assert f"teachers.dist.params: Value error, top_k=8 exceeds the 4 layers of the backbone in {path}" in str(
        err.value
    )
    spec["teachers"]["dist"]["params"] = {"checkpoint": str(ckpt), "layer": 3}
    with pytest.raises(SpecError, match="layer 3 does not exist: the backbone in .* has 2 layers"):
        load_spec(write_yaml(spec))
    spec["teachers"]["dist"]["params"] = {"checkpoint": f"hf:{hf_dir[0]}", "top_k": 3}
    with pytest.raises(SpecError, match="top_k=3 exceeds the 2 layers"):
        load_spec(write_yaml(spec))
    spec["teachers"]["dist"]["params"] = {"checkpoint": str(path), "top_k": 4}
    assert load_spec(write_yaml(spec)).teachers["dist"].params["top_k"] == 4
    spec["teachers"]["dist"]["params"] = {"checkpoint": str(tmp_path / "not-trained-yet.ckpt")}
    assert load_spec(write_yaml(spec))  # reported when the teacher is built


@pytest.mark.integration
def test_distill_from_a_quickstart_checkpoint_and_a_conv_frontend_one(demo_dir, tmp_path, tracking_uri, write_yaml):
    """The quickstart-style teacher (filterbank frontend) trains for 2 steps; a student then
    distills from its last.ckpt and from a mert_tiny-style (HuBERT CNN frontend) backbone file at
    once, the first through the target cache, the second on the fly."""
    from mlflow.tracking import MlflowClient

    from mertlab.cli import main

    common = {
        "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.0},
        "augment": {},
        "trainer": {"max_steps": 2, "log_every_n_steps": 1, "output_dir": str(tmp_path / "runs")},
        "tracking": {"tracking_uri": tracking_uri},
    }
    quickstart = {
        "name": "quickstart-teacher",
        **common,
        "backbone": {"name": "transformer", "params": {**FILTERBANK, "num_layers": 4}},
        "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 12}}},
        "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
    }
    assert main(["train", str(write_yaml(quickstart, "quickstart.yaml")), "--no-progress"]) == 0
    (last,) = (tmp_path / "runs" / "quickstart-teacher").glob("*/checkpoints/last.ckpt")
    conv = saved_backbone(tmp_path / "mert_tiny_backbone.safetensors", preset="tiny")
    distill = {
        "name": "distill",
        **common,
        "data": {**common["data"], "target_cache": str(tmp_path / "cache")},
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {
            "quick": {"name": "hidden", "params": {"checkpoint": str(last), "top_k": 4}},
            "tiny": {"name": "hidden", "params": {"checkpoint": str(conv), "layer": 2}},
        },
        "objectives": {
            "quick_l2": {"name": "masked_regression", "teacher": "quick"},
            "tiny_l2": {"name": "masked_regression", "teacher": "tiny"},
        },
    }
    path = write_yaml(distill, "distill.yaml")
    assert main(["validate", str(path)]) == 0
    assert main(["targets", "build", str(path), "--no-progress"]) == 0
    assert main(["train", str(path), "--no-progress"]) == 0
    assert main(["train", str(path), "--no-progress", "-o", "data.target_cache=null"]) == 0  # on the fly
    client = MlflowClient(tracking_uri)
    for run in client.search_runs([client.get_experiment_by_name("distill").experiment_id]):
        for alias in ("quick_l2", "tiny_l2"):
            history = client.get_metric_history(run.info.run_id, f"loss/{alias}")
            assert len(history) == 2 and all(math.isfinite(m.value) and m.value > 0 for m in history)
