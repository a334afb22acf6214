"""The `hidden` distillation teacher (and the kmeans `feature: hidden`) on mertlab checkpoints and hf:DIR."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from mertlab.data.audio import load_audio, probe
from mertlab.errors import MertlabError
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.target_cache import TeacherCache, Windowing, build_teacher_cache
from mertlab.toolkit.checkpoint import load_backbone, save_backbone
from mertlab.toolkit.safe_load import read_safetensors
from synth_audio import SR, melody, padded_batch

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_HF = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


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
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.HubertModel(transformers.HubertConfig(**TINY_HF)).eval()
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
    with pytest.raises(MertlabError, match=r"layer 5 is out of range .* use 0..2"):
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
