"""`mertlab compare`: every child of a sweep, with values read back from MLflow, as a table,
CSV, Markdown and PNG plots logged to the parent run."""

from __future__ import annotations

import csv
import math
import re
import struct
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.data.demo import write_demo_dataset
from mertlab.experiment import metric_names as M
from mertlab.experiment.compare import Score, load_comparison, to_markdown, to_text, write_csv
from mertlab.experiment.sweep import run_sweep
from sweep_support import THREE_VARIANTS, tiny_sweep_spec, write_spec

pytestmark = pytest.mark.filterwarnings("ignore")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = {"loss_total.png", "loss_rvq_pred.png", "loss_cqt_recon.png", "grad_norm_total.png", "final_metrics.png"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A three-variant tiny sweep (run in-process, no comparison yet): (tracking URI, parent run id, workdir)."""
    path = tmp_path_factory.mktemp("compare")
    write_demo_dataset(path / "demo", num_clips=6, seconds=2.0, progress=False)
    uri = f"sqlite:///{path / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)  # MLflow's default artifact folder (./mlruns) lands here
        spec = write_spec(path / "sweep.yaml", tiny_sweep_spec("cmp-sweep", path / "demo", path, uri, THREE_VARIANTS))
        result = run_sweep(spec, progress=False)
        assert not result.failed and len(result.outcomes) == 3
        yield uri, result.parent_run_id, path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def close(cell: str, value: float) -> bool:
    return math.isclose(float(cell), value, rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture(scope="module")
def compared(sweep):
    """`mertlab compare PARENT --out DIR`, run once: (exit code, stdout, out dir)."""
    uri, parent, path = sweep
    out_dir = path / "cmp"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        buffer = StringIO()
        with redirect_stdout(buffer):
            code = main(["compare", parent, "--tracking-uri", uri, "--out", str(out_dir)])
    return code, buffer.getvalue(), out_dir


@pytest.mark.integration
def test_table_lists_every_child_with_values_read_back_from_mlflow(sweep, compared):
    uri, parent, _ = sweep
    code, out, out_dir = compared
    assert code == 0
    client = MlflowClient(uri)
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert len(children) == 3
    for name in ("base", "cqt_only", "lr_high"):
        assert name in out
    rows = read_csv(out_dir / "comparison.csv")
    assert [r["variant"] for r in rows] == ["base", "cqt_only", "lr_high"]  # sweep order
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    for row in rows:
        run = client.get_run(row["run_id"])

        def history(key, run_id=run.info.run_id):
            return [m.value for m in client.get_metric_history(run_id, key)]

        assert row["variant"] == run.data.tags["variant"] and row["status"] == "FINISHED"
        for metric in ("loss/total", "loss/cqt_recon", "val/loss/total"):
            assert close(row[f"{metric} final"], run.data.metrics[metric])
            assert close(row[f"{metric} best"], min(history(metric)))
        assert close(row[M.SUMMARY_MAX_GRAD_NORM], max(history(M.GRAD_NORM_TOTAL)))
        attn = [v for k in run.data.metrics if k.startswith("attn/max_logit/") for v in history(k)]
        assert close(row[M.SUMMARY_MAX_ATTN_LOGIT], max(attn))
        assert close(row[M.SUMMARY_NONFINITE_STEPS], 0) and close(row[M.SUMMARY_SKIPPED_STEPS], 0)
        assert row["optim.lr"] == run.data.params.get("override.optim.lr", "")
    by_name = {r["variant"]: r for r in rows}
    assert by_name["cqt_only"]["loss/rvq_pred final"] == "" and by_name["base"]["loss/rvq_pred final"] != ""
    assert by_name["cqt_only"]["teachers.rvq"] == "null" and by_name["lr_high"]["optim.lr"] == "0.01"
    assert len({r["loss/total final"] for r in rows}) == 3  # three different runs, not one value repeated


@pytest.mark.integration
def test_terminal_and_markdown_tables(sweep, compared):
    _, parent, _ = sweep
    _, out, out_dir = compared
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("variant "))
    assert header.split() == ["variant", "base", "cqt_only", "lr_high"]
    for field in (
        "optim.lr",
        "loss/total final",
        "val/loss/total best",
        M.SUMMARY_MAX_GRAD_NORM,
        M.SUMMARY_LOSS_SPIKES,
    ):
        assert any(line.startswith(field + " ") for line in lines), field
    markdown = (out_dir / "comparison.md").read_text().splitlines()
    table = [line for line in markdown if line.startswith("|")]
    assert table[0] == "| variant | base | cqt_only | lr_high |" and table[1] == "|---|---|---|---|"
    assert table[2].startswith("| status | FINISHED |") and table[3].startswith("| run_id | ")
    assert any(row.startswith("| loss/total final | ") for row in table)
    assert parent in "\n".join(markdown)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.integration
def test_plots_are_pngs_logged_to_the_parent_run(sweep, compared, tmp_path):
    uri, parent, _ = sweep
    _, out, out_dir = compared
    assert PLOTS <= {p.name for p in out_dir.glob("*.png")}
    for name in PLOTS:
        data = (out_dir / name).read_bytes()
        width, height = png_size(data)
        assert width >= 300 and height >= 200 and len(data) > 5000, name
    client = MlflowClient(uri)
    logged = {Path(a.path).name for a in client.list_artifacts(parent, "compare")}
    assert PLOTS | {"comparison.csv", "comparison.md"} <= logged
    copy = Path(client.download_artifacts(parent, "compare/loss_total.png", str(tmp_path)))
    assert copy.read_bytes() == (out_dir / "loss_total.png").read_bytes()
    assert f"logged them to parent run {parent}" in out


@pytest.mark.integration
def test_compare_by_experiment_name_finds_the_sweep(sweep, compared, capsys):
    uri, parent, path = sweep
    code, out, _ = run_cli(capsys, "compare", "cmp-sweep", "--tracking-uri", uri, "--out", path / "by-name", "--no-log")
    assert code == 0 and "logged" not in out
    assert [r["run_id"] for r in read_csv(path / "by-name" / "comparison.csv")] == [
        r["run_id"] for r in read_csv(compared[2] / "comparison.csv")
    ]


@pytest.mark.integration
def test_metric_patterns_and_probe_scores(sweep):
    uri, parent, _ = sweep
    client = MlflowClient(uri)
    comparison = load_comparison(parent, uri)
    lr_high = next(r for r in comparison.rows if r.variant == "lr_high")
    best, layer = M.probe("genre", "accuracy"), M.probe("genre", "accuracy", "layer1")
    for step, value in enumerate([0.4, 0.7, 0.6]):  # as `mertlab probe` reports onto this run
        client.log_metric(lr_high.run_id, best, value, step=step)
        client.log_metric(lr_high.run_id, layer, value / 2, step=step)

    assert load_comparison(parent, uri).metrics == [  # default: each task's probe scores first, then losses
        best,
        "loss/cqt_recon",
        "loss/rvq_pred",
        "loss/total",
        "val/loss/cqt_recon",
        "val/loss/rvq_pred",
        "val/loss/total",
    ]
    comparison = load_comparison(parent, uri, metrics=["loss/total", "probe/**"])
    assert comparison.metrics == [best, layer, "loss/total"]
    header, rows = comparison.records()
    assert "loss/cqt_recon final" not in header and M.SUMMARY_MAX_GRAD_NORM in header
    assert f"{best} final" not in header and f"{best} best" not in header  # a probe score is shown once
    values = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert values["lr_high"][best] == Score(0.6)  # its latest value: a best over checkpoints would pick on test
    assert values["lr_high"][layer] == Score(0.3)
    assert values["base"][best] is None  # where present only
    assert values["lr_high"]["loss/total final"] is not None and values["lr_high"]["loss/total best"] is not None


@pytest.mark.integration
def test_probe_scores_show_their_interval_and_p_values_are_rows(sweep, tmp_path):
    uri, parent, _ = sweep
    client = MlflowClient(uri)
    comparison = load_comparison(parent, uri)
    base = next(r for r in comparison.rows if r.variant == "base")
    score = M.probe("key", "accuracy")
    for name, value in (
        (score, 0.42),
        (M.probe_companion("key", "accuracy", M.CI_LOW), 0.35),
        (M.probe_companion("key", "accuracy", M.CI_HIGH), 0.49),
        (M.probe_companion("key", "accuracy", M.P_VS_RANDOM), 0.0004),
    ):
        client.log_metric(base.run_id, name, value, step=0)
    comparison = load_comparison(parent, uri, metrics=["probe/key/*"])
    p_name = M.probe_companion("key", "accuracy", M.P_VS_RANDOM)
    assert comparison.metrics == [score, p_name]  # the bounds go with their score, not into rows of their own
    header, rows = comparison.records()
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert cells["base"][score] == Score(0.42, 0.35, 0.49) and cells["base"][p_name] == Score(0.0004)
    assert re.search(r"^probe/key/accuracy +0\.42 \[0\.35, 0\.49\]", to_text(comparison), re.M)
    assert "| 0.42 [0.35, 0.49] |" in to_markdown(comparison)
    by_variant = {r["variant"]: r for r in read_csv(write_csv(comparison, tmp_path / "c.csv"))}
    assert [by_variant["base"][f"{score}{s}"] for s in ("", " ci_low", " ci_high")] == ["0.42", "0.35", "0.49"]
    assert by_variant["lr_high"][score] == by_variant["lr_high"][f"{score} ci_low"] == ""


def test_metric_patterns_stay_within_segments():
    from mertlab.experiment.compare import metric_pattern

    assert metric_pattern("loss/*").match("loss/total") and not metric_pattern("loss/*").match("loss/a/b")
    assert metric_pattern("probe/**").match("probe/key/layer3/accuracy")
    assert not metric_pattern("loss/*").match("val/loss/total") and metric_pattern("*/loss/?otal").match(
        "val/loss/total"
    )


@pytest.mark.integration
def test_bad_targets_are_one_clear_error(sweep, capsys):
    uri, parent, _ = sweep
    code, _, err = run_cli(capsys, "compare", "no-such-experiment", "--tracking-uri", uri)
    assert code == 1 and "'no-such-experiment' is neither a run id nor an experiment" in err
    child = load_comparison(parent, uri).rows[0].run_id
    code, _, err = run_cli(capsys, "compare", child, "--tracking-uri", uri)
    assert code == 1 and f"run {child} has no child runs" in err
