"""Every spec shipped in experiments/ validates (sweep variants included) and trains for a few
steps at tiny scale, reached only through ``-o`` overrides.

The tiny overrides are generic, not per file: short crops and steps, a temporary store and
output folder, and each component's own ``test_params`` (the plugin's small, download-free
configuration: tiny presets, ``pretrained: false`` codecs...) merged over the spec's params.
Teachers that need fitting are fitted with their own API (``mertlab.teachers.fitting.fit_teachers``);
a teacher reading a trained backbone (``checkpoint``) gets a tiny one.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mertlab.experiment import metric_names as M
from mertlab.experiment.spec import load_spec
from mertlab.experiment.sweep import format_value, plan_sweep
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.fitting import fit_teachers
from mertlab.toolkit.checkpoint import save_backbone
from mertlab.train.run import train

pytestmark = pytest.mark.filterwarnings("ignore")

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SPECS = sorted(EXPERIMENTS.glob("*.yaml"))
IDS = [p.stem for p in SPECS]


def test_the_experiment_library_is_complete():
    names = set(IDS)
    assert {
        "quickstart",
        "mert_v1_95m",
        "mert_v1_330m",
        "hubert_mfcc_kmeans",
        "hubert_iter2_hidden_kmeans",
        "bestrq_conformer",
        "dac_teacher",
        "ablation_teachers",
        "scaleup_stability",
        "muq_melrvq_conformer",
        "crepe_pitch_aux",
        "distill_hidden",
        "small_scale",
        "small_scale_r1",
        "mert_tiny",
    } <= names


def test_quickstart_ends_with_a_probe_verdict_on_the_demo_tasks():
    spec = load_spec(EXPERIMENTS / "quickstart.yaml")
    assert spec.data.generate_demo and spec.probe is not None and spec.probe.random_init
    from mertlab.data.demo_tasks import DEMO_TASKS, demo_tasks_dir

    tasks_dir = demo_tasks_dir(spec.data.path)
    assert [Path(t) for t in spec.probe.tasks] == [tasks_dir / f"{name}.csv" for name in DEMO_TASKS]
    assert "cqt" in spec.probe.baselines


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_spec_validates(path):
    spec = load_spec(path)
    assert spec.name == path.stem  # runs and MLflow experiments are named after the file
    if spec.sweep is not None:
        plan = plan_sweep(path)  # every variant validated
        assert len(plan.children) >= 2 and all(c.spec.sweep is None for c in plan.children)


def test_mert_recipes_carry_the_paper_numbers():
    small = load_spec(EXPERIMENTS / "mert_v1_95m.yaml")
    large = load_spec(EXPERIMENTS / "mert_v1_330m.yaml")
    for spec in (small, large):
        assert spec.data.crop_seconds == 5.0 and spec.backbone.params["sample_rate"] == 24000
        assert spec.teachers["rvq"].params["bandwidth"] == 6.0 and spec.teachers["rvq"].params["pretrained"] is True
        cqt = spec.teachers["cqt"].params
        assert (cqt["n_bins"], cqt["bins_per_octave"], cqt["hop_length"]) == (336, 48, 320)
        assert spec.masking.params["mask_prob"] == 0.8 and spec.masking.params["span_length"] == 5
        assert spec.augment["mixup"].params["probability"] == 0.5 and spec.feature_penalty == 10.0
        assert spec.objectives["cqt_recon"].weight == 1.0 and spec.objectives["rvq_pred"].params["reduction"] == "sum"
    assert small.backbone.params["layer_norm_first"] is False and small.backbone.params["hidden_dim"] == 768
    assert (small.optim.lr, small.optim.grad_clip, small.optim.warmup_steps, small.trainer.max_steps) == (
        5e-4,
        10.0,
        32000,
        400000,
    )
    assert large.backbone.params["layer_norm_first"] is True and large.backbone.params["attention_relax"] == 32.0
    assert large.backbone.params["num_layers"] == 24 and large.backbone.params["hidden_dim"] == 1024
    assert (large.optim.lr, large.optim.grad_clip) == (1.5e-3, 1.0)


def component_test_params(kind: str, prefix: str, component) -> list[str]:
    entry = get_registry().get(kind, component.name)
    return [f"{prefix}.params.{k}={format_value(v)}" for k, v in getattr(entry.component, "test_params", {}).items()]


def tiny_overrides(path: Path, demo_dir: Path, tmp_path: Path, tracking_uri: str) -> list[str]:
    spec = load_spec(path)
    overrides = [
        f"data.path={demo_dir}",
        "data.generate_demo=false",
        "data.crop_seconds=1.0",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.val_fraction=0.2",
        "data.target_cache=null",
        "trainer.max_steps=2",
        "trainer.val_every_n_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.precision='32'",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.accumulate_grad_batches=1",
        f"trainer.output_dir={tmp_path / 'runs'}",
        f"tracking.tracking_uri={tracking_uri}",
        "sweep=null",
        "probe=null",  # probing: tests/test_probe_experiment.py
    ]
    overrides += component_test_params("backbone", "backbone", spec.backbone)
    for alias, teacher in spec.teachers.items():
        overrides += component_test_params("teacher", f"teachers.{alias}", teacher)
    for alias, objective in spec.objectives.items():
        overrides += component_test_params("objective", f"objectives.{alias}", objective)
    overrides += component_test_params("masking", "masking", spec.masking)
    tiny = load_spec(path, overrides)
    registry = get_registry()
    for alias, teacher in tiny.teachers.items():
        if registry.get("teacher", teacher.name).component.requires_fit and "n_clusters" in teacher.params:
            overrides.append(f"teachers.{alias}.params.n_clusters=16")  # a few seconds of demo audio: few clusters
        if teacher.params.get("checkpoint"):  # reads a trained backbone: give it a tiny one (this spec's backbone)
            backbone = registry.build("backbone", tiny.backbone.name, tiny.backbone.params)
            checkpoint = save_backbone(tmp_path / f"{alias}_backbone.pt", backbone)
            overrides.append(f"teachers.{alias}.params.checkpoint={checkpoint}")
            if teacher.params.get("layer") is not None:
                overrides.append(f"teachers.{alias}.params.layer={min(teacher.params['layer'], backbone.num_layers)}")
    return overrides


@pytest.mark.integration
@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_spec_trains_at_tiny_scale(path, demo_dir, tracking_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the spec (centroids, mlruns) land here
    spec = load_spec(path, tiny_overrides(path, demo_dir, tmp_path, tracking_uri))
    assert spec.backbone.params.get("preset") == "tiny"
    fitted = fit_teachers(spec)  # the k-means specs: fit their centroids with the teacher's own API
    needs_fit = [a for a, t in spec.teachers.items() if get_registry().get("teacher", t.name).component.requires_fit]
    assert [f.alias for f in fitted] == needs_fit and all(f.path.is_file() for f in fitted)
    result = train(spec, progress=False)
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for alias in spec.objectives:
        assert math.isfinite(metrics[M.loss(alias)]), alias
    assert math.isfinite(metrics[M.SUMMARY_FINAL_LOSS]) and metrics[M.SUMMARY_NONFINITE_STEPS] == 0
    assert (result.checkpoint_dir / "last.ckpt").is_file()


def test_example_sweeps_vary_what_they_say():
    ablation = {c.variant.name: c.spec for c in plan_sweep(EXPERIMENTS / "ablation_teachers.yaml").children}
    assert {name: (sorted(s.teachers), sorted(s.objectives)) for name, s in ablation.items()} == {
        "rvq_only": (["rvq"], ["rvq_pred"]),
        "cqt_only": (["cqt"], ["cqt_recon"]),
        "rvq_cqt": (["cqt", "rvq"], ["cqt_recon", "rvq_pred"]),
        "mfcc_kmeans": (["mfcc_units"], ["units_pred"]),
        "melrvq": (["mel_rvq"], ["mel_pred"]),
    }
    assert ablation["melrvq"].teachers["mel_rvq"].name == "melrvq"
    assert ablation["mfcc_kmeans"].teachers["mfcc_units"].params["feature"] == "mfcc"
    scaleup = {
        c.variant.name: c.spec.backbone.params for c in plan_sweep(EXPERIMENTS / "scaleup_stability.yaml").children
    }
    assert len(scaleup) == 9
    for size, width in (("tiny", 64), ("small", 512), ("base", 768)):
        post, pre, relax = (scaleup[f"{v},preset={size}"] for v in ("post_ln", "pre_ln", "pre_ln_relax"))
        assert post["hidden_dim"] == pre["hidden_dim"] == relax["hidden_dim"] == width
        assert (post["layer_norm_first"], pre["layer_norm_first"], relax["layer_norm_first"]) == (False, True, True)
        assert (post["attention_relax"], pre["attention_relax"], relax["attention_relax"]) == (None, None, 32.0)


def test_hubert_iteration_2_replaces_the_teacher():
    spec = load_spec(EXPERIMENTS / "hubert_iter2_hidden_kmeans.yaml")
    assert list(spec.teachers) == ["hidden_units"] and spec.objectives["units_pred"].teacher == "hidden_units"
    params = spec.teachers["hidden_units"].params
    assert (params["feature"], params["layer"], params["n_clusters"]) == ("hidden", 6, 500)
    first = load_spec(EXPERIMENTS / "hubert_mfcc_kmeans.yaml").teachers["mfcc_units"].params
    assert (first["feature"], first["n_clusters"], first["n_mfcc"]) == ("mfcc", 100, 13)
