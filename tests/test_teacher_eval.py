"""`mertlab teachers evaluate`: code statistics (HuBERT's PNMI and purities) and the probe score
of continuous teachers, ranked and logged without training any backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.teachers.evaluation import code_statistics, joint_counts
from probe_tasks import write_pitch_class_task

pytestmark = pytest.mark.filterwarnings("ignore")


def stats(codes, labels, vocab, num_labels):
    return code_statistics(joint_counts(np.asarray(codes), np.asarray(labels), vocab, num_labels))


def test_codes_equal_to_the_labels_give_pnmi_and_purities_of_one():
    labels = np.repeat(np.arange(4), 50)
    s = stats(labels, labels, 8, 4)  # 8 codes, 4 of them used
    assert s["pnmi"] == pytest.approx(1.0) and s["label_purity"] == pytest.approx(1.0)
    assert s["cluster_purity"] == pytest.approx(1.0) and s["perplexity"] == pytest.approx(4.0)


def test_random_codes_give_pnmi_near_zero_and_chance_purities():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 5000)
    codes = rng.integers(0, 16, labels.size)
    s = stats(codes, labels, 16, 4)
    assert s["pnmi"] < 0.005
    assert s["label_purity"] == pytest.approx(0.25, abs=0.03)  # the majority label of each code: ~ chance
    assert s["cluster_purity"] == pytest.approx(1 / 16, abs=0.02)  # each label's most frequent code: ~ 1/16
    assert s["perplexity"] == pytest.approx(16, rel=0.01)


def test_codes_finer_than_the_labels_keep_label_purity_not_cluster_purity():
    labels = np.repeat(np.arange(2), 100)
    codes = labels * 2 + np.tile([0, 1], 100)  # each label split evenly over two codes
    s = stats(codes, labels, 4, 2)
    assert s["pnmi"] == pytest.approx(1.0) and s["label_purity"] == pytest.approx(1.0)
    assert s["cluster_purity"] == pytest.approx(0.5)


def test_one_label_gives_nan_pnmi_whatever_the_code_order():
    # Summed float probabilities of the one label are 1 - 1e-16 in some orders: a tiny positive
    # label entropy would turn "undefined" into PNMI 0 for one naming of the codes and NaN for another.
    labels = np.zeros(6, dtype=np.int64)
    for codes in ([0, 0, 0, 1, 1, 2], [2, 2, 2, 1, 1, 0], [5, 5, 5, 3, 3, 4]):
        assert math.isnan(stats(np.array(codes), labels, 6, 3)["pnmi"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2)), min_size=1, max_size=60), st.permutations(range(6)))
def test_statistics_are_bounded_and_ignore_code_names(pairs, permutation):
    codes, labels = (np.array(x) for x in zip(*pairs, strict=True))
    s = stats(codes, labels, 6, 3)
    renamed = stats(np.array(permutation)[codes], labels, 6, 3)
    for key, value in s.items():
        assert renamed[key] == pytest.approx(value, nan_ok=True)
    assert math.isnan(s["pnmi"]) or -1e-9 <= s["pnmi"] <= 1 + 1e-9
    assert 0 < s["label_purity"] <= 1 + 1e-9 and 0 < s["cluster_purity"] <= 1 + 1e-9
    assert 1 - 1e-9 <= s["perplexity"] <= 6 + 1e-9


def test_cli_ranks_teachers_on_a_labelled_task_and_logs_one_run_each(tmp_path, write_yaml, capsys, one_thread):
    task = write_pitch_class_task(tmp_path, clips=48)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_yaml(
        {
            "name": "teachers",
            "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
            "teachers": {
                "rvq": {"name": "bestrq", "params": {"codebook_size": 64, "n_codebooks": 2}},
                "cqt": {
                    "name": "cqt",
                    "params": {"n_bins": 48, "bins_per_octave": 12, "fmin": 32.7, "magnitude": "log"},
                },
            },
            "objectives": {
                "rvq_pred": {"name": "masked_prediction", "teacher": "rvq"},
                "cqt_recon": {"name": "masked_regression", "teacher": "cqt"},
            },
            "tracking": {"tracking_uri": uri},
        }
    )
    assert main(["teachers", "evaluate", str(spec), str(task), "--max-epochs", "40", "--no-progress"]) == 0, (
        capsys.readouterr()
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "teacher", "plugin", "kind"]
    assert lines[2].split()[:4] == ["1", "rvq", "bestrq", "discrete"] and lines[3].split()[:4] == [
        "2",
        "cqt",
        "cqt",
        "continuous",
    ]
    client = MlflowClient(uri)
    runs = {
        r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("teacher-eval").experiment_id])
    }
    assert set(runs) == {"teachers/rvq", "teachers/cqt"}
    rvq, cqt = runs["teachers/rvq"].data.metrics, runs["teachers/cqt"].data.metrics
    for name in ("pnmi", "pnmi/cb0", "pnmi/cb1", "label_purity", "cluster_purity", "perplexity/cb1"):
        assert f"teacher_eval/pitch/{name}" in rvq, sorted(rvq)
    assert 0 <= rvq["teacher_eval/pitch/pnmi"] <= 1 and rvq["teacher_eval/pitch/label_purity"] >= 0.25
    # the CQT's mean log-magnitudes tell the pitch class apart: far above chance (4 classes)
    assert cqt["teacher_eval/pitch/probe_accuracy"] >= 0.6 > cqt["teacher_eval/pitch/chance_accuracy"] + 0.3
    assert (
        runs["teachers/cqt"].data.tags["teacher"] == "cqt"
        and runs["teachers/rvq"].data.params["params.codebook_size"] == "64"
    )

    assert main(["teachers", "evaluate", str(spec), str(task), "--teacher", "nope", "--no-tracking"]) == 1
    assert "--teacher: no teacher alias 'nope'" in capsys.readouterr().err
