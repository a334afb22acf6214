"""Uncertainty of probe scores: bootstrap intervals over test clips, paired tests between probes,
the seed spread, and how they reach the verdict line, the report JSON and MLflow names."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from mertlab.experiment import metric_names as M
from mertlab.plugin_system.registry import get_registry
from mertlab.probe.fit import ProbeParams
from mertlab.probe.metrics import compute_metrics
from mertlab.probe.run import probe_metrics, report_dict, report_table, run_probe, summary_lines, verdict
from mertlab.probe.uncertainty import (
    confidence_intervals,
    format_p,
    mcnemar_p,
    paired_p,
    resample_indices,
    resampled_metrics,
)
from mertlab.toolkit.checkpoint import save_backbone
from probe_tasks import write_pitch_class_task

pytestmark = pytest.mark.filterwarnings("ignore")
FAST = ProbeParams(max_epochs=40, patience=5)


def one_hot_scores(predicted: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[predicted]


correctness = st.lists(st.booleans(), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(correct=correctness, seed=st.integers(0, 2**16))
def test_accuracy_interval_contains_the_point_estimate(correct, seed):
    targets = np.zeros(len(correct), dtype=int)
    predicted = np.where(correct, 0, 1)
    point = float(np.mean(correct))
    interval = confidence_intervals("classification", targets, one_hot_scores(predicted, 2), 500, seed=seed)["accuracy"]
    assert 0.0 <= interval.low <= point <= interval.high <= 1.0


@settings(max_examples=60, deadline=None)
@given(a=correctness, data=st.data())
def test_mcnemar_p_is_a_probability_symmetric_and_one_for_equal_classifiers(a, data):
    a = np.array(a)
    b = np.array(data.draw(st.lists(st.booleans(), min_size=len(a), max_size=len(a))))
    p = mcnemar_p(a, b)
    assert 0.0 <= p <= 1.0
    assert p == mcnemar_p(b, a)
    assert mcnemar_p(a, a) == 1.0


def test_mcnemar_p_is_the_exact_binomial_test_of_the_discordant_clips():
    a = np.array([True] * 12 + [False] * 3 + [True] * 20 + [False] * 5)
    b = np.array([False] * 12 + [True] * 3 + [True] * 20 + [False] * 5)  # 12 vs 3 discordant
    assert mcnemar_p(a, b) == pytest.approx(binomtest(3, 15, 0.5).pvalue)
    assert 0.03 < mcnemar_p(a, b) < 0.04  # 2 * P(X <= 3 | n=15, 1/2) = 0.0352
    all_right, all_wrong = np.ones(30, bool), np.zeros(30, bool)
    assert mcnemar_p(all_right, all_wrong) == pytest.approx(2 * 0.5**30)


regression_case = st.integers(3, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-100, 100), min_size=n, max_size=n),
        st.lists(st.floats(-100, 100), min_size=n, max_size=n),
        st.lists(st.floats(-100, 100), min_size=n, max_size=n),
    )
)


@settings(max_examples=40, deadline=None)
@given(case=regression_case)
def test_paired_bootstrap_p_is_a_probability_and_symmetric(case):
    targets, a, b = (np.array(x) for x in case)
    p = paired_p("regression", "r2", targets, a, b, resamples=300)
    if np.ptp(targets) == 0:
        assert math.isnan(p)  # R² is undefined on constant targets
        return
    assert 0.0 < p <= 1.0
    assert p == paired_p("regression", "r2", targets, b, a, resamples=300)
    assert paired_p("regression", "r2", targets, a, a, resamples=300) == 1.0


def test_paired_bootstrap_separates_a_good_from_a_bad_regressor_and_not_two_equals():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=200)
    good = targets + 0.3 * rng.normal(size=200)
    bad = targets + 2.0 * rng.normal(size=200)
    also_good = targets + 0.3 * rng.normal(size=200)
    assert paired_p("regression", "r2", targets, good, bad) < 0.001
    assert paired_p("regression", "r2", targets, good, also_good) > 0.05
    intervals = confidence_intervals("regression", targets, good)
    r2 = 1 - np.sum((targets - good) ** 2) / np.sum((targets - targets.mean()) ** 2)
    assert intervals["r2"].contains(r2) and intervals["r2"].high - intervals["r2"].low < 0.1
    assert confidence_intervals("regression", targets, targets)["r2"] == type(intervals["r2"])(1.0, 1.0)


def test_interval_width_shrinks_with_more_clips_and_resamples_are_seeded():
    def width(n: int) -> float:
        targets = np.zeros(n, dtype=int)
        predicted = (np.arange(n) % 2).astype(int)  # half right
        i = confidence_intervals("classification", targets, one_hot_scores(predicted, 2))["accuracy"]
        return i.high - i.low

    assert width(400) < width(100) < width(25)
    assert 0.17 < width(100) < 0.22  # ~ 2 x 1.96 x sqrt(0.25 / 100) = 0.196
    assert np.array_equal(resample_indices(10, 5, seed=3), resample_indices(10, 5, seed=3))


tagging_case = st.tuples(st.integers(2, 30), st.integers(1, 5), st.integers(0, 2**16), st.integers(1, 2))


@settings(max_examples=12, deadline=None)
@given(case=tagging_case)
def test_resampled_tagging_metrics_equal_sklearns_ties_included(case):
    n, tags, seed, decimals = case
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, tags)) < rng.random()).astype(np.float32)
    scores = np.round(rng.random((n, tags)), decimals)  # few distinct values: many ties
    indices = resample_indices(n, 8, seed)
    fast = resampled_metrics("multilabel", targets, scores, indices)
    for name in ("roc_auc", "average_precision"):
        reference = [compute_metrics("multilabel", targets[i], scores[i])[name] for i in indices]
        np.testing.assert_allclose(fast[name], reference, rtol=1e-9, atol=1e-12)


def test_multilabel_intervals_cover_each_metric():
    rng = np.random.default_rng(1)
    targets = (rng.random((60, 3)) < 0.5).astype(np.float32)
    scores = np.clip(targets * 0.6 + 0.4 * rng.random((60, 3)), 0, 1)
    intervals = confidence_intervals("multilabel", targets, scores, resamples=100)
    assert set(intervals) == {"roc_auc", "average_precision"}
    assert all(0.5 < i.low <= i.high <= 1.0 for i in intervals.values())


@pytest.mark.parametrize(
    ("p", "text"),
    [(0.0004, "p<0.001"), (0.001, "p=0.001"), (0.0312, "p=0.031"), (0.41, "p=0.41"), (1.0, "p=1"), (math.nan, "p=n/a")],
)
def test_format_p(p, text):
    assert format_p(p) == text


# --------------------------------------------------------------------------- in mertlab probe
@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    """A tiny untrained backbone on the pitch-class task, with random init, a baseline and 2 seeds."""
    root = tmp_path_factory.mktemp("uncertainty")
    torch.manual_seed(0)
    backbone = save_backbone(root / "b.pt", get_registry().build("backbone", "transformer", {"preset": "tiny"}))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead
    yield run_probe(
        backbone,
        write_pitch_class_task(root, clips=96),
        "last",
        params=FAST,
        random_init=True,
        device="cpu",
        progress=False,
        baselines="chroma",
        seeds=2,
    )
    torch.set_num_threads(previous)


VERDICT = re.compile(
    r"^pitch: \d+% \[\d+, \d+\] \(random init \d+% \[\d+, \d+\], p(<0\.001|=[\d.]+); "
    r"best baseline \w+ \d+% \[\d+, \d+\], p(<0\.001|=[\d.]+)\); over 2 probe seeds [\d.]+% \+- [\d.]+ "
    r"\(random init [\d.]+% \+- [\d.]+\)$"
)


def test_verdict_carries_intervals_p_values_and_seed_spread(outcome):
    line = verdict(outcome)
    assert VERDICT.match(line), line
    best = outcome.report.best
    low, high = best.test_ci["accuracy"].low, best.test_ci["accuracy"].high
    assert line.startswith(f"pitch: {100 * best.test['accuracy']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]")
    assert low <= best.test["accuracy"] <= high
    test = outcome.report.task.indices("test")
    targets = outcome.report.task.targets[test]
    expected = mcnemar_p(
        best.scores[test].argmax(1) == targets, outcome.random_init.best.scores[test].argmax(1) == targets
    )
    assert outcome.p_vs_random() == expected and format_p(expected) in line


def test_every_logged_score_has_its_interval_and_the_p_values_are_logged(outcome):
    metrics = probe_metrics(outcome)
    scores = [k for k in metrics if M.probe_score_of(k) is None]
    assert "probe/pitch/accuracy" in scores and "probe/pitch/random_init/accuracy" in scores
    for name in scores:
        low, high = metrics[name + M.CI_LOW], metrics[name + M.CI_HIGH]
        assert low <= metrics[name] <= high, name
    assert 0 < metrics["probe/pitch/accuracy_p_vs_random"] <= 1
    assert metrics["probe/pitch/accuracy_p_vs_baseline"] == outcome.p_vs_baseline()
    trained, random = outcome.seed_spread()
    assert len(trained.values) == 2 and trained.values[0] == outcome.report.best.test["accuracy"]
    assert metrics["probe/pitch/accuracy_seed_mean"] == pytest.approx(np.mean(trained.values))
    assert metrics["probe/pitch/random_init/accuracy_seed_std"] == pytest.approx(np.std(random.values, ddof=1))
    assert M.probe_score_of("probe/pitch/layer2/accuracy_ci_low") == ("probe/pitch/layer2/accuracy", M.CI_LOW)


def test_report_keeps_each_probes_test_predictions_clip_by_clip(outcome):
    report = report_dict(outcome, {})
    clips = report["test_clips"]
    assert len(clips["paths"]) == len(outcome.report.task.indices("test"))
    for probe in report["probes"] + report["random_init"]:
        hits = [p == t for p, t in zip(probe["test_predictions"], clips["targets"], strict=True)]
        assert np.mean(hits) == pytest.approx(probe["test"]["accuracy"]), probe["probe"]
        assert probe["test_ci"]["accuracy"][0] <= probe["test"]["accuracy"] <= probe["test_ci"]["accuracy"][1]
    assert report["p_vs_random"]["accuracy"] == outcome.p_vs_random()
    assert len(report["seeds"]["accuracy"]["trained"]) == 2
    header, rows = report_table(outcome)
    assert header[1:4] == ("valid accuracy", "test accuracy", "95% CI") and all(r[3].startswith("[") for r in rows)
    assert any("over 2 probe seeds" in line for line in summary_lines(outcome))


def test_seeds_must_be_positive(outcome):
    from mertlab.errors import MertlabError

    with pytest.raises(MertlabError, match="seeds: expected at least 1"):
        run_probe("unused.pt", outcome.report.task, seeds=0)
