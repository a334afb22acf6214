"""The `melrvq` teacher (MuQ's Mel-RVQ) and the residual linear VQ behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from fitted_teacher_checks import assert_bad_state_is_rejected, assert_missing_state_says_fit
from mertlab.data.audio import probe
from mertlab.errors import MertlabError
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.target_cache import TeacherCache, Windowing, build_teacher_cache
from mertlab.toolkit.rvq import ResidualLinearVQ, RVQFitSettings, fit_rvq
from mertlab.toolkit.safe_load import read_safetensors
from mertlab.toolkit.code_usage import code_perplexity
from synth_audio import SR, melody, padded_batch

SMALL = {"n_mels": 32, "n_codebooks": 3, "codebook_size": 16, "steps": 200, "batch_size": 256, "dead_code_steps": 20}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: extra intra-op threads only add synchronisation (10x on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(**params):
    return get_registry().build("teacher", "melrvq", {**SMALL, **params})


def clips(n: int = 6, seconds: float = 2.0, seed: int = 0) -> list[torch.Tensor]:
    return [melody(seconds, seed=seed + i) for i in range(n)]


def training_batches():
    data = clips()
    return [padded_batch(data[:3]), padded_batch(data[3:])]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fitted teacher and its state file, shared by the tests that only read them."""
    path = tmp_path_factory.mktemp("melrvq") / "tokenizer.pt"
    from mertlab.plugins.teachers.melrvq import MelRVQParams, MelRVQTeacher

    teacher = MelRVQTeacher(MelRVQParams(**SMALL, tokenizer=str(path)))
    teacher.fit(training_batches(), progress=False)
    teacher.save_state(path)
    return teacher, path


def test_defaults_follow_muq():
    p = get_registry().get("teacher", "melrvq").params_model()
    assert (p.sample_rate, p.n_fft, p.hop_length, p.n_mels, p.stack_frames) == (24000, 2048, 240, 128, 4)
    assert (p.n_codebooks, p.codebook_size, p.codebook_dim) == (8, 1024, 16)
    assert (p.commitment_weight, p.codebook_weight, p.dead_code_steps) == (0.25, 1.0, 100)
    info = build().info
    assert info.kind == "discrete" and info.frame_rate == 25.0 and info.vocab_sizes == (16, 16, 16)


def test_fitting_lowers_reconstruction_and_uses_the_codebooks(fitted):
    teacher, _ = fitted
    history = teacher.fit_history
    assert len(history) == SMALL["steps"]
    assert np.mean(history[-10:]) < 0.6 * history[0], (history[0], history[-10:])
    # the codes of the training audio use most of every codebook
    out = teacher.targets(*padded_batch(clips()))
    for cb in range(SMALL["n_codebooks"]):
        codes = out.values[:, :, cb][~out.padding_mask]
        assert codes.unique().numel() >= 15 and code_perplexity(codes, 16) > 10, cb
    # more codebooks reconstruct better, on audio the tokenizer never saw
    x, recon = teacher.reconstruct(*padded_batch(clips(2, seed=100)))
    single = build(n_codebooks=1, steps=100)
    single.fit(training_batches(), progress=False)
    x1, recon1 = single.reconstruct(*padded_batch(clips(2, seed=100)))
    assert (recon - x).abs().mean() < (recon1 - x1).abs().mean() < x1.abs().mean()


def test_targets_are_batch_independent_and_padding_is_zero(fitted):
    teacher, _ = fitted
    data = [melody(1.0, seed=40), melody(0.5, seed=41)]
    wav, lengths = padded_batch(data, pad_value=0.7)
    out = teacher.targets(wav, lengths)
    assert out.lengths.tolist() == [(1 + int(n) // 240) // 4 for n in lengths]
    alone = teacher.targets(data[1][None], lengths[1:])
    assert torch.equal(out.values[1, : out.lengths[1]], alone.values[0])
    assert bool((out.values[1, out.lengths[1] :] == 0).all())
    with pytest.raises(MertlabError, match=r"teacher 'melrvq': clip 0 has 500 samples, shorter than one frame"):
        teacher.targets(torch.randn(1, 500), torch.tensor([500]))


def test_state_round_trips_and_is_plain_tensors(fitted, tmp_path):
    teacher, path = fitted
    tensors, meta = read_safetensors(path, "state")  # safetensors: no pickled code
    assert meta["format"] == "mertlab-melrvq-v1" and tensors["rvq.codebooks"].shape == (3, 16, 16)
    loaded = build(tokenizer=str(path))
    wav, lengths = padded_batch(clips(2, seed=50))
    assert torch.equal(loaded.targets(wav, lengths).values, teacher.targets(wav, lengths).values)
    assert loaded.fingerprint() == teacher.fingerprint() != build().fingerprint()
    # refitting with the same seed gives the same tokenizer; another seed another one
    again = build(tokenizer=str(tmp_path / "again.pt"))
    again.fit(training_batches(), progress=False)
    assert again.fingerprint_payload() == teacher.fingerprint_payload()  # the tokenizer's digest
    other = build(seed=1)
    other.fit(training_batches(), progress=False)
    assert other.fingerprint_payload() != teacher.fingerprint_payload()


def test_missing_mismatched_or_garbage_state_is_one_clear_error(fitted, tmp_path):
    _, path = fitted
    assert_missing_state_says_fit(build, "tokenizer", tmp_path)
    assert_bad_state_is_rejected(
        build,
        "tokenizer",
        path,
        tmp_path,
        {"n_mels": 40},
        settings_message=r"different settings \(n_mels: file 32 vs params 40\)",
        junk_message="damaged or truncated teacher 'melrvq' state file",
    )


def test_residual_vq_recovers_planted_clusters():
    g = torch.Generator().manual_seed(0)
    k, dim = 8, 24
    centres = 6 * torch.randn(k, dim, generator=g)
    labels = torch.arange(k).repeat_interleave(300)
    x = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rvq = ResidualLinearVQ(dim, n_codebooks=2, codebook_size=k, codebook_dim=8)
    history = fit_rvq(rvq, x, RVQFitSettings(steps=300, batch_size=512, lr=3e-3, dead_code_steps=20), progress=False)
    codes = rvq.encode(x)
    assert adjusted_rand_score(labels.numpy(), codes[:, 0].numpy()) > 0.95  # first stage = the clusters
    assert history[-1] < 0.5 * history[0]


def test_targets_through_the_target_cache(fitted, tmp_path):
    import soundfile as sf

    teacher, _ = fitted
    wav = melody(1.5, seed=60)
    sf.write(tmp_path / "a.wav", wav.numpy(), SR)
    file = probe(tmp_path / "a.wav")
    summary = build_teacher_cache(
        teacher, [file], tmp_path / "cache", windowing=Windowing(window_seconds=100), progress=False
    )
    assert (summary.computed, summary.skipped) == (1, 0)
    cached = TeacherCache(tmp_path / "cache", teacher).read(file.path)
    from mertlab.data.audio import load_audio

    whole = teacher.targets(load_audio(file.path, SR)[None], torch.tensor([file.num_frames])).values[0]
    assert cached.dtype == np.int16 and np.array_equal(cached, whole.numpy())
