"""The `kmeans` teacher, its frame features and the torch mini-batch k-means behind it."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from fitted_teacher_checks import assert_bad_state_is_rejected, assert_missing_state_says_fit
from mertlab.errors import MertlabError
from mertlab.plugin_system.registry import get_registry
from mertlab.toolkit.checkpoint import save_backbone
from mertlab.toolkit.frame_features import LogMelChroma, MFCCDeltas
from mertlab.toolkit.kmeans import fit_minibatch_kmeans, lloyd_kmeans, nearest_centroid
from synth_audio import SR, chord, melody, padded_batch

SMALL_FIT = {"n_clusters": 8, "n_iter": 30, "batch_size": 2000}


def build(**params):
    return get_registry().build("teacher", "kmeans", {**SMALL_FIT, **params})


def training_batches(n_batches: int = 2, seed: int = 0):
    for i in range(n_batches):
        yield padded_batch([melody(0.8, seed=seed + 10 * i + j) for j in range(3)])


@pytest.fixture(scope="module")
def fitted_state(tmp_path_factory):
    """One fitted MFCC teacher's state file, shared by the tests that only read it."""
    from mertlab.plugins.teachers.kmeans import KMeansParams, KMeansTeacher

    path = tmp_path_factory.mktemp("kmeans") / "mfcc.pt"
    teacher = KMeansTeacher(KMeansParams(**SMALL_FIT))
    teacher.fit(training_batches(), progress=False)
    teacher.save_state(path)
    return path


# ----------------------------------------------------------------------------- k-means itself
def planted(n_per: int = 400, k: int = 6, dim: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 8 * torch.randn(k, dim, generator=g)
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centres[labels] + 0.5 * torch.randn(k * n_per, dim, generator=g)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], labels[perm], centres


def test_minibatch_kmeans_recovers_planted_clusters():
    x, labels, centres = planted()
    centroids = fit_minibatch_kmeans(x, 6, n_iter=60, batch_size=512, init="kmeans++", seed=3, progress=False)
    assert adjusted_rand_score(labels.numpy(), nearest_centroid(x, centroids).numpy()) == pytest.approx(1.0)
    # every planted centre has a fitted centroid next to it (within the noise of the means)
    assert torch.cdist(centres, centroids).amin(1).max() < 0.2


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_minibatch_kmeans_converges_to_means_of_its_clusters(init):
    # whatever local optimum an init leads to, each centroid ends at the mean of its points
    x, _, _ = planted(seed=1)
    centroids = fit_minibatch_kmeans(x, 6, n_iter=60, batch_size=512, init=init, seed=0, progress=False)
    assign = nearest_centroid(x, centroids)
    for k in assign.unique():
        assert torch.dist(centroids[k], x[assign == k].mean(0)) < 0.1


def test_minibatch_kmeans_is_seeded_and_checks_its_input():
    x, _, _ = planted(n_per=100)
    a = fit_minibatch_kmeans(x, 6, n_iter=10, batch_size=128, seed=1, progress=False)
    assert torch.equal(a, fit_minibatch_kmeans(x, 6, n_iter=10, batch_size=128, seed=1, progress=False))
    assert not torch.equal(a, fit_minibatch_kmeans(x, 6, n_iter=10, batch_size=128, seed=2, progress=False))
    with pytest.raises(MertlabError, match="at least n_clusters=6 frames"):
        fit_minibatch_kmeans(x[:5], 6, progress=False)
    # fewer distinct points than clusters (e.g. silence) still fits instead of crashing k-means++
    assert fit_minibatch_kmeans(torch.zeros(50, 3), 4, n_iter=2, progress=False).shape == (4, 3)


def test_lloyd_kmeans_is_seeded_and_converged():
    # the plain Lloyd fit the codec teachers' random-init codebooks use
    x, _, _ = planted(n_per=200, seed=2)

    def fit(seed: int, spherical: bool = False) -> torch.Tensor:
        return lloyd_kmeans(x, 6, n_iter=30, generator=torch.Generator().manual_seed(seed), spherical=spherical)

    centroids = fit(0)
    assert torch.equal(centroids, fit(0)) and not torch.equal(centroids, fit(1))
    assign = nearest_centroid(x, centroids)
    for k in assign.unique():  # converged: each centroid is the mean of its points
        assert torch.dist(centroids[k], x[assign == k].mean(0)) < 1e-4
    spherical = fit(0, spherical=True)  # directions: unit centroids, nearest by cosine
    assert torch.allclose(spherical.norm(dim=1), torch.ones(6))
    assert torch.equal(nearest_centroid(x, spherical, spherical=True), (x @ spherical.T).argmax(1))
    with pytest.raises(MertlabError, match="n_clusters=7, 5 rows"):
        lloyd_kmeans(x[:5], 7, n_iter=1, generator=torch.Generator())


def test_nearest_centroid_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(500, 7, generator=g), torch.randn(20, 7, generator=g)
    assert torch.equal(nearest_centroid(x, c), torch.cdist(x, c).argmin(1))


# ----------------------------------------------------------------------------- frame features
def test_mfcc_deltas_are_39_dims_at_75_hz():
    feature = MFCCDeltas(SR, 2048, 320, 128, 13)
    feats, frames = feature(melody(0.5)[None], torch.tensor([12000]))
    assert feature.dim == 39 and feature.frame_rate == 75.0
    assert feats.shape == (1, 1 + 12000 // 320, 39) and frames.tolist() == [38]
    assert feats[0, :, 13:].abs().sum() > 0  # deltas are not zero on changing audio


def test_chroma_half_of_logmel_chroma_names_the_pitch_class():
    feature = LogMelChroma(SR, 2048, 320, 64)
    for midi in (57, 60, 66):  # A3, C4, F#4 -> pitch classes 9, 0, 6
        feats, _ = feature(chord(0.5, (midi,), noise=0.0)[None], torch.tensor([12000]))
        chroma = feats[0, 5:-5, 64:]
        assert feature.dim == 76 and bool((chroma.argmax(1) == midi % 12).all())
        assert torch.allclose(chroma.amax(1), torch.ones(len(chroma)), atol=1e-4)


# ----------------------------------------------------------------------------- the teacher
def test_registered_and_describes_its_targets():
    teacher = build()
    assert teacher.requires_fit and teacher.target_kind == "discrete"
    info = teacher.info
    assert (info.kind, info.dim, info.frame_rate, info.vocab_sizes) == ("discrete", 1, 75.0, (8,))
    assert teacher.sample_rate == SR


def test_targets_from_a_fitted_state(fitted_state):
    teacher = build(centroids=str(fitted_state))
    wav, lengths = padded_batch([melody(0.7, seed=100), melody(0.4, seed=101)], pad_value=0.5)
    out = teacher.targets(wav, lengths)
    assert out.values.shape == (2, 1 + wav.shape[1] // 320, 1) and out.values.dtype == torch.int64
    assert out.lengths.tolist() == [1 + int(n) // 320 for n in lengths]
    assert bool(((out.values >= 0) & (out.values < 8)).all())
    assert out.values[0, : out.lengths[0]].unique().numel() >= 4  # diverse codes on changing music
    assert torch.equal(out.values, teacher.targets(wav, lengths).values)  # deterministic
    for b in range(2):  # a padded batch (junk padding) equals each clip alone
        n = int(lengths[b])
        alone = teacher.targets(wav[b : b + 1, :n], lengths[b : b + 1])
        assert torch.equal(out.values[b, : out.lengths[b]], alone.values[0])


def test_silent_and_shorter_than_a_hop_clips(fitted_state):
    teacher = build(centroids=str(fitted_state))
    silent = teacher.targets(torch.zeros(2, 4000), torch.tensor([4000, 2000]))
    assert silent.lengths.tolist() == [13, 7] and bool((silent.values < 8).all())
    assert silent.values[0, :13].unique().numel() == 1  # constant audio -> one code
    tiny = teacher.targets(torch.randn(1, 100), torch.tensor([100]))  # centred: one frame
    assert tiny.values.shape == (1, 1, 1)
    with pytest.raises(MertlabError, match="between 1 and"):
        teacher.targets(torch.zeros(1, 100), torch.tensor([0]))


def test_state_round_trips_through_its_file(tmp_path):
    teacher = build(feature="logmel_chroma", n_mels=32, seed=5)
    teacher.fit(training_batches(), progress=False)
    path = tmp_path / "sub" / "centroids.pt"
    teacher.save_state(path)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))

    loaded = build(feature="logmel_chroma", n_mels=32, seed=5, centroids=str(path))
    assert torch.equal(loaded.centroids, teacher.centroids)
    assert torch.equal(loaded.feature_mean, teacher.feature_mean)
    wav, lengths = padded_batch([melody(0.5, seed=7)])
    assert torch.equal(loaded.targets(wav, lengths).values, teacher.targets(wav, lengths).values)
    # fingerprint follows the fitted state, not just the params
    twin = build(feature="logmel_chroma", n_mels=32, seed=5, centroids=str(path))
    assert twin.fingerprint() == loaded.fingerprint()
    other = build(feature="logmel_chroma", n_mels=32, seed=6)
    other.fit(training_batches(), progress=False)
    other.save_state(path)
    assert build(feature="logmel_chroma", n_mels=32, seed=5, centroids=str(path)).fingerprint() != loaded.fingerprint()


def test_teacher_codes_separate_distinct_sounds():
    # chords in three registers: no code is shared between their (inner) frames. Extra clusters
    # are free to take the clip edges, whose centred windows half-overlap the zero padding.
    chords = [(36, 40, 43), (78, 82, 85), (57, 60, 64)]
    clips = [chord(0.6, c, seed=i) for i, c in enumerate(chords)]
    teacher = build(feature="logmel_chroma", n_mels=32, n_clusters=5, n_iter=40)
    teacher.fit([padded_batch(clips)], progress=False)
    codes = teacher.targets(*padded_batch(clips)).values[:, 4:-4, 0]
    sets = [set(c.tolist()) for c in codes]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), sets


def test_missing_centroids_tell_the_user_to_fit(tmp_path):
    assert_missing_state_says_fit(build, "centroids", tmp_path)


def test_file_written_after_construction_is_picked_up(fitted_state, tmp_path):
    path = tmp_path / "later.pt"
    teacher = build(centroids=str(path))
    path.write_bytes(fitted_state.read_bytes())  # e.g. `mertlab teachers fit` ran meanwhile
    assert teacher.targets(*padded_batch([melody(0.3)])).values.shape[2] == 1


def test_state_from_other_settings_or_garbage_is_rejected(fitted_state, tmp_path):
    assert_bad_state_is_rejected(
        build,
        "centroids",
        fitted_state,
        tmp_path,
        {"n_mfcc": 12},
        settings_message=r"different settings \(n_mfcc: file 13 vs params 12\)",
        junk_message="junk.pt: damaged or truncated k-means state file",
    )


def test_params_cross_checks():
    with pytest.raises(MertlabError, match="feature=hidden needs `checkpoint`"):
        build(feature="hidden")
    with pytest.raises(MertlabError, match="only used by feature=hidden"):
        build(checkpoint="model.pt")
    with pytest.raises(MertlabError, match="n_clusters"):
        build(n_clusters=1)


# ----------------------------------------------------------------------------- hidden feature
def save_tiny_transformer(path, seed: int):
    """A registered backbone (the tiny transformer preset) saved by mertlab.toolkit.checkpoint."""
    torch.manual_seed(seed)
    return save_backbone(path, get_registry().build("backbone", "transformer", {"preset": "tiny"}))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return save_tiny_transformer(tmp_path / "backbone.pt", seed=0)


def test_hidden_feature_clusters_a_saved_backbone_layer(tiny_checkpoint, tmp_path):
    teacher = build(feature="hidden", checkpoint=str(tiny_checkpoint), layer=2, n_clusters=6)
    assert teacher.info.frame_rate == 75.0 and teacher.feature.dim == 64
    teacher.fit(training_batches(), progress=False)
    wav, lengths = padded_batch([melody(0.6, seed=50), melody(0.3, seed=51)], pad_value=0.9)
    out = teacher.targets(wav, lengths)
    assert out.lengths.tolist() == [(int(n) - 400) // 320 + 1 for n in lengths]
    assert out.values[0, : out.lengths[0]].unique().numel() >= 3
    alone = teacher.targets(wav[1:, : int(lengths[1])], lengths[1:])
    assert torch.equal(out.values[1, : out.lengths[1]], alone.values[0])

    teacher.save_state(tmp_path / "hidden.pt")
    # retraining the backbone behind the same path invalidates the fitted centroids
    save_tiny_transformer(tiny_checkpoint, seed=1)
    with pytest.raises(MertlabError, match="backbone_digest"):
        build(
            feature="hidden",
            checkpoint=str(tiny_checkpoint),
            layer=2,
            n_clusters=6,
            centroids=str(tmp_path / "hidden.pt"),
        )


def test_hidden_feature_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(MertlabError, match=r"layer 3 is out of range .* use 0..2"):
        build(feature="hidden", checkpoint=str(tiny_checkpoint), layer=3)
    with pytest.raises(MertlabError, match="no such checkpoint"):
        build(feature="hidden", checkpoint=str(tmp_path / "missing.pt"))
    teacher = build(feature="hidden", checkpoint=str(tiny_checkpoint), layer=1)
    teacher.fit(training_batches(1), progress=False)
    with pytest.raises(MertlabError, match="too short for one frame"):
        teacher.targets(torch.randn(1, 300), torch.tensor([300]))


def test_nearest_centroid_matches_brute_force_in_every_path():
    """Blocked GEMM + argmin (NumPy on CPU, threads over blocks) equals the plain argmin of the
    distance matrix, ties to the lowest index, spherical by dot product; empty input is fine."""
    from mertlab.toolkit.kmeans import nearest_centroid

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 39, generator=g)
    c = torch.randn(100, 39, generator=g)
    c[7] = c[3]  # an exact tie: index 3 wins
    x[:5] = c[3]
    expected = torch.cdist(x.double(), c.double()).argmin(1)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.equal(nearest_centroid(x, c), expected)
            assert torch.get_num_threads() == n  # the threaded path leaves torch's threads alone
    finally:
        torch.set_num_threads(threads)
    assert nearest_centroid(x[:5], c).tolist() == [3] * 5
    xn, cn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(c, dim=1)
    assert torch.equal(nearest_centroid(xn, cn, spherical=True), (xn.double() @ cn.double().T).argmax(1))
    assert nearest_centroid(x[:0], c).shape == (0,)
    assert torch.equal(nearest_centroid(x.double(), c.double()), expected)  # float64: same path
