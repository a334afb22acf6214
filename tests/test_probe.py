"""Downstream probing: windowed feature extraction, task CSVs, MARBLE probes, metrics, MLflow, CLI.

The tasks are generated tones whose labels are real properties of the sound: the pitch class
of a pure tone (played in one of two octaves, so the class is not just "the frequency"), the set
of notes sounding in a chord (multi-label), and the fundamental frequency in Hz (regression). An
untrained tiny transformer's features already separate these -- its conv extractor is a random
filter bank, so mean-pooled features encode the spectrum -- which is what lets a test see a
probe clearly beat the majority / chance baseline. (Loudness would not do as a regression
target: the group-norm extractor normalises each channel over time, removing a clip's gain.)
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, average_precision_score, r2_score, roc_auc_score

from mertlab.cli import main
from mertlab.data.audio import load_audio
from mertlab.errors import DataError, MertlabError
from mertlab.plugin_system.registry import get_registry
from mertlab.probe.extract import FeatureSet, extract_features, resolve_layers, window_bounds
from mertlab.probe.fit import ProbeParams, fit_probes, probe_task
from mertlab.probe.metrics import compute_metrics
from mertlab.probe.run import random_init_backbone, run_probe
from mertlab.probe.task import Task, TaskError, load_task
from mertlab.toolkit.checkpoint import save_backbone

pytestmark = pytest.mark.filterwarnings("ignore")

SR = 24000
NOTES = {"C": 0, "Eb": 3, "Gb": 6, "A": 9}  # pitch classes a minor third apart
FAST = ProbeParams(max_epochs=80, patience=10)


def hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def tone(freqs: list[float], seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wav = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs) / len(freqs)
    return (0.5 * rng.uniform(0.5, 1.0) * wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_csv(path, rows, header=("path", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return get_registry().build("backbone", "transformer", {"preset": "tiny"}).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory, backbone):
    """Backbone file + the three generated tasks (CSV paths relative to the CSV)."""
    root = tmp_path_factory.mktemp("probe")
    for sub in ("pc", "ch", "hz"):
        (root / "audio" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = list(NOTES)
    pitch_rows, chord_rows, hz_rows = [], [], []
    for i in range(64):  # pitch class: 4 classes x 16, explicit splits 10/3/3 per class
        name = names[i % 4]
        wav = tone([hz(48 + NOTES[name] + 12 * int(rng.integers(0, 2)))], 0.5, rng)
        sf.write(root / "audio" / "pc" / f"{i}.wav", wav, SR)
        split = "train" if i < 40 else ("valid" if i < 52 else "test")
        pitch_rows.append((f"audio/pc/{i}.wav", name, split))
    for i in range(72):  # chords: which of the four notes sound (1-3 of them)
        present = sorted(rng.choice(names, size=int(rng.integers(1, 4)), replace=False), key=names.index)
        wav = tone([hz(60 + NOTES[n]) for n in present], 0.5, rng)
        sf.write(root / "audio" / "ch" / f"{i}.wav", wav, SR)
        chord_rows.append((f"audio/ch/{i}.wav", ";".join(present)))
    for i in range(64):  # regression: fundamental in Hz, continuous MIDI 48..72
        f0 = hz(rng.uniform(48, 72))
        sf.write(root / "audio" / "hz" / f"{i}.wav", tone([f0, 2 * f0], 0.5, rng), SR)
        hz_rows.append((f"audio/hz/{i}.wav", f"{f0:.3f}"))
    return {
        "root": root,
        "backbone": save_backbone(root / "backbone.pt", backbone),
        "pitch": write_csv(root / "pitch.csv", pitch_rows, ("path", "label", "split")),
        "chords": write_csv(root / "chords.csv", chord_rows),
        "hz": write_csv(root / "hz.csv", hz_rows),
    }


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """The CLI's feature cache (.mertlab-cache/) goes to the working directory: a temporary one."""
    monkeypatch.chdir(tmp_path)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- extraction
def manual_features(backbone, wav: torch.Tensor, window: int) -> np.ndarray:
    """Each window alone through the backbone, frame means averaged with frame-count weights."""
    sums, frames = 0.0, 0
    for start in range(0, wav.numel(), window):
        piece = wav[start : start + window]
        if backbone.num_frames(piece.numel()) == 0:
            continue
        with torch.no_grad():
            out = backbone(piece[None])
        hidden = torch.stack(out.hidden_states)[:, 0].double()  # [L+1, T, D]
        sums = sums + hidden.mean(dim=1) * hidden.shape[1]
        frames += hidden.shape[1]
    return (sums / frames).numpy()


def test_long_file_equals_frame_weighted_mean_of_its_windows(backbone, tmp_path):
    rng = np.random.default_rng(1)
    # 2.3 s at 16 kHz: decoded, resampled to 24 kHz, cut into 1 s + 1 s + 0.3 s windows.
    long = np.concatenate([tone([hz(60)], 1.2, rng, 16000), tone([hz(67), hz(71)], 1.1, rng, 16000)])
    sf.write(tmp_path / "long.wav", long, 16000)
    sf.write(tmp_path / "short.wav", tone([hz(64)], 0.7, rng), SR)
    paths = [tmp_path / "long.wav", tmp_path / "short.wav"]

    got = extract_features(backbone, paths, window_seconds=1.0, batch_size=3, device="cpu", progress=False)
    assert got.features.shape == (2, backbone.num_layers + 1, backbone.hidden_dim)
    assert got.layers == [0, 1, 2]
    assert got.seconds == pytest.approx([2.3, 0.7], abs=1e-3)
    for row, path in enumerate(paths):
        expected = manual_features(backbone, load_audio(path, SR), SR)
        np.testing.assert_allclose(got.features[row], expected, rtol=1e-4, atol=1e-5)

    # Windowing matters (a 10 s window is one pass over the whole file) and batching does not.
    whole = extract_features(backbone, paths[:1], window_seconds=10.0, progress=False)
    assert np.abs(whole.features[0] - got.features[0]).max() > 1e-3
    one_by_one = extract_features(backbone, paths, window_seconds=1.0, batch_size=1, progress=False)
    np.testing.assert_allclose(one_by_one.features, got.features, rtol=1e-4, atol=1e-5)
    assert not backbone.training


def test_layer_selection_and_npz_roundtrip(backbone, data, tmp_path):
    paths = load_task(data["pitch"]).paths[:6]
    full = extract_features(backbone, paths, progress=False)
    some = extract_features(backbone, paths, layers="0,-1", progress=False)
    assert some.layers == [0, 2]
    np.testing.assert_allclose(some.features, full.features[:, [0, 2]], rtol=1e-5, atol=1e-6)
    assert resolve_layers("last", 12) == [12] and resolve_layers(None, 2) == [0, 1, 2]
    with pytest.raises(MertlabError, match="layer 5 does not exist"):
        resolve_layers("5", 2)
    with pytest.raises(MertlabError, match="comma-separated"):
        resolve_layers("first", 2)

    saved = FeatureSet.load(some.save(tmp_path / "f.npz"))
    np.testing.assert_array_equal(saved.features, some.features)
    assert saved.paths == [str(p) for p in paths] and saved.layers == [0, 2]
    raw = np.load(tmp_path / "f.npz")  # usable without mertlab
    assert (
        raw["features"].shape == (6, 2, backbone.hidden_dim) and json.loads(str(raw["meta"]))["window_seconds"] == 5.0
    )


def test_windows_and_too_short_audio(backbone, tmp_path):
    assert window_bounds(1000, 400, 400) == [(0, 400), (400, 800)]  # a 200-sample tail gives no frame
    assert window_bounds(1000, 300, 100) == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    sf.write(tmp_path / "blip.wav", np.zeros(100, dtype=np.float32), SR)
    with pytest.raises(DataError, match=r"blip\.wav: .*receptive field"):
        extract_features(backbone, [tmp_path / "blip.wav"], progress=False)


# --------------------------------------------------------------------------- probes
def test_pitch_class_probe_beats_majority(backbone, data):
    outcome = run_probe(data["backbone"], data["pitch"], params=FAST, device="cpu", progress=False)
    report = outcome.report
    assert report.task.type == "classification" and report.task.classes == ["A", "C", "Eb", "Gb"]
    assert [p.name for p in report.probes] == ["layer0", "layer1", "layer2", "weighted"]
    assert report.baseline.test["accuracy"] == pytest.approx(0.25)  # 4 balanced classes
    assert report.best.test["accuracy"] >= 0.75
    assert all(p.test["accuracy"] >= 0.6 for p in report.probes)
    weights = report.probes[-1].layer_weights
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def reports(backbone, data):
    """Last-layer probes (and baseline) of each generated task, on features extracted once."""
    out = {}
    for key in ("pitch", "chords", "hz"):
        task = load_task(data[key])
        features = extract_features(backbone, task.paths, layers="last", progress=False)
        out[key] = probe_task(features.features, features.layers, task, FAST)
    return out


def test_multilabel_and_regression_probes_beat_chance(reports):
    chords = reports["chords"]
    assert chords.task.type == "multilabel" and chords.task.auto_split
    assert chords.baseline.test["roc_auc"] == pytest.approx(0.5)
    assert chords.best.test["roc_auc"] >= 0.8
    assert chords.best.test["average_precision"] > chords.baseline.test["average_precision"] + 0.2

    pitch_hz = reports["hz"]
    assert pitch_hz.task.type == "regression"
    assert pitch_hz.baseline.test["r2"] <= 0.05
    assert pitch_hz.best.test["r2"] >= 0.5


def test_metrics_agree_with_sklearn_on_the_csv_labels(reports, data):
    """Recompute every reported number from the probe's raw predictions and the CSV text itself."""
    for key, report in reports.items():
        task = report.task
        rows = read_rows(data[key])
        test = task.indices("test")
        labels = [rows[i]["label"] for i in test]
        for result in (*report.probes, report.baseline):
            scores = result.scores[test]
            if key == "pitch":
                predicted = [task.classes[j] for j in scores.argmax(axis=1)]
                assert result.test["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
            elif key == "chords":
                truth = np.array([[name in label.split(";") for name in task.classes] for label in labels], dtype=int)
                keep = (truth.sum(0) > 0) & (truth.sum(0) < len(truth))
                assert result.test["roc_auc"] == pytest.approx(roc_auc_score(truth[:, keep], scores[:, keep]))
                assert result.test["average_precision"] == pytest.approx(
                    average_precision_score(truth[:, keep], scores[:, keep])
                )
            else:
                assert result.test["r2"] == pytest.approx(r2_score([float(v) for v in labels], scores))


def test_multilabel_metrics_skip_tags_without_both_classes():
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.5], [0.3, 0.8, 0.1], [0.6, 0.4, 0.7], [0.1, 0.6, 0.2]])
    got = compute_metrics("multilabel", truth, scores)
    assert got["roc_auc"] == pytest.approx(np.mean([1.0, 0.75]))  # tag 2 (never positive) is left out
    assert got["average_precision"] == pytest.approx(average_precision_score(truth[:, :2], scores[:, :2]))
    assert math.isnan(compute_metrics("multilabel", np.zeros((3, 2)), np.ones((3, 2)))["roc_auc"])


def test_best_layer_and_weighted_sum_follow_the_informative_layer(data):
    """Layer 1 carries the class, layers 0 and 2 are noise: per-layer probes must see the
    difference, the best probe must be layer 1 or the weighted sum, which must weight layer 1 most."""
    task = load_task(data["pitch"])
    rng = np.random.default_rng(0)
    features = rng.standard_normal((len(task.paths), 3, 8)).astype(np.float32)
    features[:, 1, :4] += 4.0 * np.eye(4)[task.targets]
    report = probe_task(features, [0, 1, 2], task, ProbeParams(max_epochs=60, patience=20, layer_weights_lr=5e-2))
    by_name = {p.name: p for p in report.probes}
    assert by_name["layer1"].test["accuracy"] >= 0.75
    assert by_name["layer0"].test["accuracy"] <= 0.5 and by_name["layer2"].test["accuracy"] <= 0.5
    assert report.best.name in {"layer1", "weighted"}
    weights = by_name["weighted"].layer_weights
    assert weights[1] > 0.6 and weights[1] > 3 * max(weights[0], weights[2])
    # Starting from equal weights, the default logit learning rate also moves towards layer 1.
    default = probe_task(features, [0, 1, 2], task, ProbeParams(max_epochs=60, patience=20), probe_layers=[])
    assert default.probes[0].layer_weights[1] > max(
        default.probes[0].layer_weights[0], default.probes[0].layer_weights[2]
    )


def test_probes_are_seeded_and_deterministic(backbone, data):
    task = load_task(data["pitch"])
    features = extract_features(backbone, task.paths, layers="last", progress=False).features
    params = ProbeParams(max_epochs=8, patience=8)
    (a,) = fit_probes(features, task, params, [0], ["a"])
    (b,) = fit_probes(features, task, params, [0], ["b"])
    np.testing.assert_array_equal(a.scores, b.scores)
    (c,) = fit_probes(features, task, params.model_copy(update={"seed": 1}), [0], ["c"])
    assert not np.array_equal(a.scores, c.scores)


def test_probes_trained_side_by_side_equal_probes_trained_alone(one_thread):
    """fit_probes trains every layer's probe (and the weighted sum) as one batched module: without
    dropout (the only randomness after the seeded init and minibatch order) each member must end
    where the same probe trained alone ends, its own early stopping included."""
    rng = np.random.default_rng(1)
    n, classes = 240, 6
    targets = np.arange(n) % classes
    splits = np.array(["train"] * 160 + ["valid"] * 40 + ["test"] * 40)
    task = Task(
        "synthetic",
        "classification",
        Path("synthetic.csv"),
        [Path(f"{i}.wav") for i in range(n)],
        targets,
        splits,
        [str(c) for c in range(classes)],
        list(range(2, n + 2)),
    )
    features = rng.standard_normal((n, 3, 8)).astype(np.float32)
    features[:, 1, :classes] += 2.0 * np.eye(classes)[targets]  # layer 1 informative, layer 2 weakly
    features[:, 2, :classes] += 0.3 * np.eye(classes)[targets]
    params = ProbeParams(dropout=0.0, max_epochs=60, patience=10, hidden_dim=32)
    together = fit_probes(features, task, params, [0, 1, 2, None], ["layer0", "layer1", "layer2", "weighted"])
    alone = [fit_probes(features[:, k : k + 1], task, params, [0], [f"layer{k}"])[0] for k in range(3)]
    alone.append(fit_probes(features, task, params, [None], ["weighted"])[0])
    for a, b in zip(together, alone, strict=True):
        assert a.name == b.name and a.best_epoch == b.best_epoch
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(together[-1].layer_weights, alone[-1].layer_weights, atol=1e-5)
    assert together[1].test["accuracy"] > together[0].test["accuracy"] + 0.3
    assert len({r.best_epoch for r in together}) > 1, [(r.name, r.best_epoch) for r in together]  # stopped apart


# --------------------------------------------------------------------------- task files
def test_auto_split_is_seeded_stratified_70_15_15(data):
    task = load_task(data["chords"])
    assert [len(task.indices(s)) for s in ("train", "valid", "test")] == [50, 11, 11]
    assert np.array_equal(load_task(data["chords"]).splits, task.splits)
    assert not np.array_equal(load_task(data["chords"], seed=1).splits, task.splits)
    rows = [(f"audio/pc/{i}.wav", label) for i, label in enumerate(["a"] * 20 + ["b"] * 7)]
    small = load_task(write_csv(data["root"] / "strat.csv", rows))
    for c in (0, 1):  # every class lands in every split, in proportion
        members = small.splits[small.targets == c]
        assert {s: int((members == s).sum()) for s in ("train", "valid", "test")} == (
            {"train": 14, "valid": 3, "test": 3} if c == 0 else {"train": 5, "valid": 1, "test": 1}
        )


def test_type_detection_and_yaml_task(data):
    root = data["root"]
    midi = load_task(write_csv(root / "midi.csv", [(f"audio/pc/{i}.wav", 60 + i % 3) for i in range(30)]))
    assert midi.type == "classification" and midi.classes == ["60", "61", "62"]  # integers are classes
    (root / "task.yaml").write_text("name: hz-as-classes\ncsv: midi.csv\ntype: regression\nseed: 3\n")
    task = load_task(root / "task.yaml")
    assert (task.name, task.type, task.auto_type) == ("hz-as-classes", "regression", False)
    assert task.targets[:3].tolist() == [60.0, 61.0, 62.0]
    (root / "bad.yaml").write_text("csv: midi.csv\ntype: ranking\n")
    with pytest.raises(TaskError, match=r"bad\.yaml: type: Input should be"):
        load_task(root / "bad.yaml")


@pytest.mark.parametrize(
    "header, rows, expected",
    [
        (("path", "tag"), [("audio/pc/0.wav", "C")], r"bad\.csv:1: missing column 'label'"),
        (
            ("path", "label"),
            [("audio/pc/0.wav", "C"), ("audio/nope.wav", "C")],
            r"bad\.csv:3: column path: no such file 'audio/nope.wav'",
        ),
        (
            ("path", "label", "split"),
            [("audio/pc/0.wav", "C", "train"), ("audio/pc/1.wav", "Eb", "test")],
            r"bad\.csv: split 'valid' has no rows",
        ),
        (
            ("path", "label", "split"),
            [("audio/pc/0.wav", "C", "holdout")],
            r"bad\.csv:2: column split: unknown split 'holdout'",
        ),
        (
            ("path", "label", "split"),
            [
                ("audio/pc/0.wav", "C", "train"),
                ("audio/pc/1.wav", "Eb", "train"),
                ("audio/pc/2.wav", "C", "valid"),
                ("audio/pc/3.wav", "A", "test"),
            ],
            r"bad\.csv:5: column label: class 'A' appears only in test, never in train",
        ),
        (
            ("path", "label", "split"),
            [
                ("audio/pc/0.wav", "C", "train"),
                ("audio/pc/1.wav", "Eb", "train"),
                ("audio/pc/2.wav", "A;C", "valid"),
                ("audio/pc/3.wav", "Gb", "test"),
            ],
            r"bad\.csv:4: column label: class 'A' appears only in valid, never in train",
        ),
        (
            ("path", "label"),
            [("audio/pc/0.wav", "C"), ("audio/pc/0.wav", "Eb")],
            r"bad\.csv:3: column path: 'audio/pc/0.wav' is listed twice \(also line 2\)",
        ),
        (("path", "label"), [("audio/pc/0.wav", "C", "extra")], r"bad\.csv:2: 3 fields, the header has 2"),
        (("path", "label"), [], r"bad\.csv: no rows after the header"),
        (("path", "label"), [("audio/pc/0.wav", "")] * 1, r"bad\.csv:2: column label: empty"),
    ],
)
def test_bad_csv_gives_one_line_naming_file_line_column(data, header, rows, expected):
    path = write_csv(data["root"] / "bad.csv", rows, header)
    with pytest.raises(TaskError, match=expected) as info:
        load_task(path)
    assert "\n" not in str(info.value)


def test_bad_task_options(data):
    with pytest.raises(TaskError, match="unknown task type 'ranking'"):
        load_task(data["pitch"], task_type="ranking")
    with pytest.raises(TaskError, match=r"hz-bad\.csv:2: column label: 'C' is not a finite number"):
        load_task(write_csv(data["root"] / "hz-bad.csv", [("audio/pc/0.wav", "C")]), task_type="regression")
    with pytest.raises(TaskError, match="only one class"):
        load_task(write_csv(data["root"] / "one.csv", [(f"audio/pc/{i}.wav", "C") for i in range(20)]))
    with pytest.raises(TaskError, match="metric names"):
        load_task(data["pitch"], name="a/b")


# --------------------------------------------------------------------------- MLflow + CLI
@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """A real two-step pre-training run: its last.ckpt knows its MLflow run."""
    from mertlab.experiment.spec import resolve_spec
    from mertlab.train.run import train

    root = tmp_path_factory.mktemp("pretrain")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = resolve_spec(
        {
            "name": "pre",
            "data": {"path": str(data["root"] / "audio"), "crop_seconds": 0.5, "batch_size": 2, "val_fraction": 0.0},
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}}},
            "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
            "trainer": {"max_steps": 2, "log_every_n_steps": 1, "output_dir": str(root / "runs")},
            "tracking": {"tracking_uri": uri},
            "callbacks": {},
        }
    )
    result = train(spec, progress=False)
    return result.checkpoint_dir / "last.ckpt", result.run_id, uri


@pytest.mark.integration
def test_cli_probe_logs_onto_the_checkpoints_training_run(trained, data, capsys):
    ckpt, run_id, uri = trained
    code = main(
        [
            "probe",
            str(ckpt),
            str(data["pitch"]),
            "--layers",
            "0,2",
            "--random-init",
            "--max-epochs",
            "60",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert (
        "layer0" in out
        and "layer2" in out
        and "layer1 " not in out
        and "majority" in out
        and "random-init layer2" in out
    )
    assert f"MLflow run {run_id}" in out
    run = MlflowClient(uri).get_run(run_id)
    metrics = run.data.metrics
    for name in (
        "probe/pitch/accuracy",
        "probe/pitch/layer0/accuracy",
        "probe/pitch/layer2/accuracy",
        "probe/pitch/weighted/accuracy",
        "probe/pitch/majority/accuracy",
        "probe/pitch/random_init/accuracy",
    ):
        assert name in metrics, sorted(metrics)
    assert "probe/pitch/layer1/accuracy" not in metrics
    for name in ("probe/pitch/accuracy", "probe/pitch/layer2/accuracy", "probe/pitch/random_init/accuracy"):
        assert metrics[name + "_ci_low"] <= metrics[name] <= metrics[name + "_ci_high"], name
    assert (
        0 < metrics["probe/pitch/accuracy_p_vs_random"] <= 1 and 0 < metrics["probe/pitch/accuracy_p_vs_baseline"] <= 1
    )
    lines = out.strip().splitlines()
    logged = next(i for i, line in enumerate(lines) if line.startswith("logged probe/pitch/"))
    verdict = lines[logged - 1]  # the verdict comes right before the line saying where it was logged
    assert verdict.startswith("pitch: ") and "(random init " in verdict and ", p" in verdict, out
    assert metrics["probe/pitch/majority/accuracy"] == pytest.approx(0.25)
    best = run.data.tags["probe/pitch/best"]
    assert metrics["probe/pitch/accuracy"] == metrics[f"probe/pitch/{best}/accuracy"]
    assert "loss/total" in metrics  # the pre-training metrics are still there, on the same run
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert step == 2 and [m.step for m in MlflowClient(uri).get_metric_history(run_id, "probe/pitch/accuracy")] == [
        step
    ]
    artifacts = sorted(a.path for a in MlflowClient(uri).list_artifacts(run_id, "probe"))
    assert artifacts == ["probe/pitch.json", "probe/pitch_layers.png"]
    assert run.data.tags["probe/pitch/settings"]


@pytest.mark.integration
def test_cli_probe_onto_a_given_run_and_errors(trained, data, capsys, tmp_path):
    _, _, uri = trained
    client = MlflowClient(uri)
    other = client.create_run(client.create_experiment("probes-elsewhere")).info.run_id
    code = main(
        [
            "probe",
            str(data["backbone"]),
            str(data["hz"]),
            "--layers",
            "last",
            "--run-id",
            other,
            "--tracking-uri",
            uri,
            "--max-epochs",
            "30",
            "--out",
            str(tmp_path / "r.json"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr()
    assert "probe/hz/r2" in client.get_run(other).data.metrics
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["task"]["type"] == "regression" and report["best"] in {"layer2", "weighted"}

    capsys.readouterr()
    assert main(["probe", str(data["backbone"]), str(data["hz"]), "--run-id", "0" * 32, "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow run 00000000") and "Traceback" not in err
    assert main(["probe", str(data["backbone"]), str(data["root"] / "missing.csv")]) == 1
    assert "missing.csv: no such task file" in capsys.readouterr().err
    assert main(["probe", str(data["root"] / "nope.ckpt"), str(data["hz"])]) == 1
    assert capsys.readouterr().err.strip().endswith("nope.ckpt: no such checkpoint file")
    # A backbone file has no run: the scores are printed, and the reply says how to log them.
    assert (
        main(
            [
                "probe",
                str(data["backbone"]),
                str(data["pitch"]),
                "--layers",
                "last",
                "--max-epochs",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "not logged to MLflow" in capsys.readouterr().out


def test_cli_extract_writes_npz(data, tmp_path, capsys):
    out = tmp_path / "features.npz"
    assert (
        main(
            [
                "extract",
                str(data["backbone"]),
                str(data["pitch"]),
                "--out",
                str(out),
                "--window-seconds",
                "0.25",
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "64 files x 3 layers x 64 dims" in capsys.readouterr().out
    features = FeatureSet.load(out)
    assert features.meta["window_seconds"] == 0.25 and features.meta["checkpoint"] == str(data["backbone"])
    assert (
        main(
            [
                "extract",
                str(data["backbone"]),
                str(data["root"] / "audio" / "hz"),
                "--out",
                str(out),
                "--layers",
                "last",
                "--no-progress",
            ]
        )
        == 0
    )
    assert FeatureSet.load(out).features.shape == (64, 1, 64)


def test_random_init_backbone_has_same_architecture_new_weights(backbone):
    fresh = random_init_backbone(backbone, seed=5)
    assert fresh.params == backbone.params
    a, b = fresh.state_dict(), backbone.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_folder_of_class_subfolders_is_a_classification_task(tmp_path):
    for label in ("blues", "jazz"):
        for i in range(10):
            (tmp_path / "genres" / label).mkdir(parents=True, exist_ok=True)
            sf.write(str(tmp_path / "genres" / label / f"{label}.{i:05d}.wav"), np.zeros(800, dtype=np.float32), 16000)
    (tmp_path / "genres" / "README.txt").write_text("not a class")
    task = load_task(tmp_path / "genres")
    assert task.name == "genres" and task.type == "classification" and task.classes == ["blues", "jazz"]
    assert len(task.paths) == 20 and {task.classes[int(t)] for t in task.targets} == {"blues", "jazz"}
    assert all(task.classes[int(t)] == p.parent.name for p, t in zip(task.paths, task.targets, strict=True))
    assert set(task.splits) == {"train", "valid", "test"}
    with pytest.raises(TaskError, match="not regression"):
        load_task(tmp_path / "genres", task_type="regression")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="no audio files"):
        load_task(tmp_path / "empty")
