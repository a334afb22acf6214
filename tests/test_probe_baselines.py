"""Handcrafted probe baselines, the feature cache and probing released (``hf:DIR``) checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from mlflow.tracking import MlflowClient

import mertlab.probe.run as probe_run_module
from hf_support import tiny_hubert
from mertlab.cli import main
from mertlab.errors import MertlabError
from mertlab.experiment.spec import BASELINE_NAMES, parse_baselines
from mertlab.plugin_system.registry import get_registry
from mertlab.probe.baselines import BASELINES, baseline_features
from mertlab.probe.cache import FeatureCache
from mertlab.probe.extract import extract_features
from mertlab.probe.fit import ProbeParams
from mertlab.probe.run import probe_metrics, report_table, run_probe, summary_lines, verdict
from mertlab.probe.task import load_task
from mertlab.probe.uncertainty import format_p
from mertlab.toolkit.checkpoint import load_backbone, save_backbone
from probe_tasks import SR, harmonic_tone, write_pitch_class_task

pytestmark = pytest.mark.filterwarnings("ignore")
FAST = ProbeParams(max_epochs=60, patience=10)


@pytest.fixture(scope="module")
def pitch(tmp_path_factory):
    root = tmp_path_factory.mktemp("pitch")
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", "transformer", {"preset": "tiny"})
    return {
        "root": root,
        "task": write_pitch_class_task(root),
        "backbone": save_backbone(root / "backbone.pt", backbone),
    }


def test_cqt_baseline_learns_pitch_class_and_random_init_stays_well_below(pitch, tmp_path, one_thread):
    outcome = run_probe(
        pitch["backbone"],
        pitch["task"],
        "last",
        params=FAST,
        random_init=True,
        device="cpu",
        progress=False,
        baselines="cqt,chroma",
        cache=FeatureCache(tmp_path),
    )
    cqt = outcome.baselines["cqt"].probes[0]
    random_best = outcome.random_init.best.test["accuracy"]
    assert cqt.name == "baseline_cqt" and cqt.test["accuracy"] >= 0.8, cqt
    assert random_best <= cqt.test["accuracy"] - 0.3, (random_best, cqt.test)
    assert outcome.report.baseline.test["accuracy"] == pytest.approx(0.25)  # 4 balanced classes
    # the strongest baseline is chosen on valid, among majority and the handcrafted ones
    strongest = outcome.strongest_baseline()
    assert strongest.name in {"baseline_cqt", "baseline_chroma"}
    assert strongest.valid["accuracy"] == max(r.valid["accuracy"] for r in outcome.baseline_results())
    metrics = probe_metrics(outcome)
    for name in (
        "probe/pitch/baseline_cqt/accuracy",
        "probe/pitch/baseline_chroma/accuracy",
        "probe/pitch/best_layer/accuracy",
        "probe/pitch/random_init/accuracy",
        "probe/pitch/majority/accuracy",
        "probe/pitch/accuracy",
    ):
        assert name in metrics, sorted(metrics)
    assert metrics["probe/pitch/baseline_cqt/accuracy"] == cqt.test["accuracy"]
    # every row carries its difference to the strongest baseline
    header, rows = report_table(outcome)
    assert header[-1] == f"vs {strongest.name} (test accuracy)"
    diffs = {row[0]: row[-1] for row in rows}
    assert diffs[strongest.name] == "-"
    assert float(diffs["majority"]) == pytest.approx(0.25 - strongest.test["accuracy"], abs=1e-4)
    assert "difference" in summary_lines(outcome)[1]
    line = verdict(outcome)
    assert line.startswith("pitch: ") and "random init" in line and f"best baseline {strongest.name[9:]} " in line
    assert line.endswith(f"{format_p(outcome.p_vs_baseline())})")


def test_baseline_features_shapes_and_names():
    assert list(BASELINES) == list(BASELINE_NAMES) == ["mfcc", "chroma", "cqt"]
    assert parse_baselines("cqt, mfcc,cqt") == ["cqt", "mfcc"] and parse_baselines(None) == []
    with pytest.raises(MertlabError, match="unknown baseline 'spectral'.*mfcc, chroma, cqt"):
        parse_baselines("mfcc,spectral")


def test_chroma_baseline_is_octave_invariant(tmp_path):
    rng = np.random.default_rng(1)
    for i, midi in enumerate((48, 60, 51)):  # C3, C4, Eb3
        sf.write(tmp_path / f"{i}.wav", harmonic_tone(midi, 0.5, rng), SR)
    feats = baseline_features("chroma", [str(tmp_path / f"{i}.wav") for i in range(3)], progress=False).features[:, 0]
    assert feats.shape == (3, 12)
    assert feats[0].argmax() == feats[1].argmax() == 0 and feats[2].argmax() == 3  # C, C, Eb
    mfcc = baseline_features("mfcc", [str(tmp_path / "0.wav")], progress=False).features
    assert mfcc.shape == (1, 1, 40)  # mean and std of 20 coefficients


def test_feature_cache_is_hit_on_rerun_and_invalidated_by_a_new_checkpoint(pitch, tmp_path, monkeypatch, one_thread):
    calls = {"backbone": 0, "baseline": 0}
    real_extract, real_baseline = probe_run_module.extract_features, probe_run_module.baseline_features

    def counting_extract(*args, **kwargs):
        calls["backbone"] += 1
        return real_extract(*args, **kwargs)

    def counting_baseline(*args, **kwargs):
        calls["baseline"] += 1
        return real_baseline(*args, **kwargs)

    monkeypatch.setattr(probe_run_module, "extract_features", counting_extract)
    monkeypatch.setattr(probe_run_module, "baseline_features", counting_baseline)
    ckpt = tmp_path / "model.pt"
    save_backbone(ckpt, load_backbone(pitch["backbone"]))
    quick = ProbeParams(max_epochs=3)

    def probe(**kwargs):
        cache = FeatureCache(tmp_path / "cache")
        outcome = run_probe(
            ckpt,
            pitch["task"],
            device="cpu",
            progress=False,
            baselines=["mfcc"],
            cache=cache,
            random_init=True,
            **kwargs,
        )
        return outcome, cache

    first, cache = probe(params=quick)
    assert calls == {"backbone": 2, "baseline": 1} and cache.misses == 3
    # other probe settings and layers: nothing is extracted again, and the features are identical
    second, cache = probe(params=ProbeParams(max_epochs=2, patience=1, hidden_dim=16), layers="0,1")
    assert calls == {"backbone": 2, "baseline": 1} and cache.hits == 3 and cache.misses == 0
    np.testing.assert_array_equal(first.features.features, second.features.features)
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 3 and not list((tmp_path / "cache").rglob("*.part*"))
    # a different checkpoint at the same path: its features are extracted again (random-init
    # and baseline features do not depend on the weights and stay cached)
    torch.manual_seed(123)
    save_backbone(ckpt, get_registry().build("backbone", "transformer", {"preset": "tiny"}))
    third, _ = probe(params=quick)
    assert calls == {"backbone": 3, "baseline": 1}
    assert not np.allclose(third.features.features, first.features.features)


# --------------------------------------------------------------------------- hf:DIR
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random HubertModel saved with transformers (our loader's reference)."""
    path = tmp_path_factory.mktemp("hf") / "tiny-hubert"
    model = tiny_hubert()
    model.save_pretrained(path)
    return path, model


def test_hf_dir_features_equal_the_transformers_model(hf_dir, pitch):
    path, model = hf_dir
    backbone = load_backbone(f"hf:{path}")
    task = load_task(pitch["task"])
    files = [str(p) for p in task.paths[:3]]
    ours = extract_features(backbone, files, window_seconds=5.0, device="cpu", progress=False)
    for i, file in enumerate(files):
        wav, rate = sf.read(file, dtype="float32")
        assert rate == backbone.sample_rate
        with torch.no_grad():
            hidden = model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states
        expected = torch.stack([h[0].double().mean(dim=0) for h in hidden]).numpy()
        np.testing.assert_allclose(ours.features[i], expected, atol=1e-5, rtol=1e-4)


def test_hf_dir_errors_name_what_is_missing(tmp_path, pitch, capsys):
    with pytest.raises(MertlabError, match="no such directory"):
        load_backbone(f"hf:{tmp_path / 'absent'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MertlabError, match="no config.json in the directory"):
        load_backbone(f"hf:{tmp_path / 'empty'}")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(MertlabError, match="no model.safetensors or pytorch_model.bin"):
        load_backbone(f"hf:{tmp_path / 'noweights'}")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["probe", "--hf-dir", str(tmp_path / "other"), str(pitch["task"]), "--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert "model_type 'bert' is not loadable" in err and "hubert" in err and "Traceback" not in err


def test_cli_probes_hf_dir_into_a_run_named_after_it(hf_dir, pitch, tmp_path, capsys, monkeypatch, one_thread):
    path, _ = hf_dir
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        str(pitch["task"]),
        "--layers",
        "last",
        "--max-epochs",
        "5",
        "--baselines",
        "chroma",
        "--tracking-uri",
        uri,
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(["probe", "--hf-dir", str(path), *args]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "baseline_chroma" in out and "features: 0 from the cache, 2 extracted" in out
    assert (tmp_path / ".mertlab-cache" / "features").is_dir()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("probes").experiment_id])
    assert [r.info.run_name for r in runs] == ["tiny-hubert"]
    run = runs[0]
    assert (
        "probe/pitch/baseline_chroma/accuracy" in run.data.metrics and "probe/pitch/layer2/accuracy" in run.data.metrics
    )
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "probe")) == [
        "probe/pitch.json",
        "probe/pitch_layers.png",
    ]
    # hf:DIR as CKPT goes to the same run; the features come from the cache
    assert main(["probe", f"hf:{path}", *args]) == 0
    assert "features: 2 from the cache, 0 extracted" in capsys.readouterr().out
    assert len(client.search_runs([run.info.experiment_id])) == 1
