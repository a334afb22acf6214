"""Reliability of what mertlab reads and writes.

* files that would run code when unpickled are refused everywhere a file is loaded;
* checkpoints are written atomically, survive a full disk / read-only folder, and ``--resume``
  falls back to the newest checkpoint that loads;
* damaged checkpoints and target-cache entries are named in one line; cache entries are
  verified (size + SHA-256) and recomputed.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.errors import MertlabError, WeightsError
from mertlab.experiment.spec import resolve_spec
from mertlab.plugin_system.registry import get_registry
from mertlab.toolkit.checkpoint import LEGACY_BACKBONE_FORMAT, load_backbone, save_backbone
from mertlab.toolkit.safe_load import is_safetensors, load_torch_file
from mertlab.train.checkpoint_io import SafeCheckpointIO, select_resume_checkpoint
from mertlab.train.run import train

pytestmark = pytest.mark.filterwarnings("ignore")


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_file(path: Path, marker: Path, **extra) -> Path:
    """A torch.save'd training-checkpoint look-alike carrying :class:`Payload`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": {"backbone.x": torch.zeros(1)}, "mlflow_run_id": "0" * 32, **extra, "hook": Payload(marker)},
        path,
    )
    return path


def test_the_payload_is_live_when_loaded_unsafely(tmp_path):
    """The test files below really would run code under torch.load(weights_only=False)."""
    path = malicious_file(tmp_path / "evil.ckpt", tmp_path / "proof")
    torch.load(path, weights_only=False)
    assert (tmp_path / "proof").exists()


def one_error_line(capsys) -> str:
    """The single ``error:`` line a failing command printed (progress and Lightning's own
    notices may share stderr); never a traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def task_dir(demo_dir):
    """A valid probe task (CSV with splits) over the demo clips."""
    rows = [f"demo_00{i}.wav,{'ab'[i % 2]},{('train', 'train', 'valid', 'valid', 'test', 'test')[i]}" for i in range(6)]
    path = demo_dir / "task.csv"
    path.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return path


def spec_data(demo_dir, tmp_path, tracking_uri, **trainer) -> dict:
    """A tiny spec (CQT teacher only: fast) writing checkpoints under ``tmp_path/runs``."""
    return {
        "name": "rel-io",
        "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.2},
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}}},
        "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "trainer": {
            "max_steps": 2,
            "log_every_n_steps": 1,
            "val_every_n_steps": 1,
            "limit_val_batches": 1,
            "output_dir": str(tmp_path / "runs"),
            **trainer,
        },
        "tracking": {"tracking_uri": tracking_uri},
        "callbacks": {},
    }


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory, tracking_uri):
    """One short real run: its spec data and checkpoint folder (tests copy before changing it)."""
    root = tmp_path_factory.mktemp("trained")
    data = spec_data(demo_dir, root, tracking_uri)
    result = train(resolve_spec(data), progress=False)
    return data, result.checkpoint_dir


def copy_runs(trained, tmp_path, **trainer) -> tuple[dict, Path]:
    """The trained run's spec pointed at a private copy of its runs folder."""
    data, checkpoint_dir = trained
    runs_src = checkpoint_dir.parents[2]
    shutil.copytree(runs_src, tmp_path / "runs")
    data = {**data, "trainer": {**data["trainer"], "output_dir": str(tmp_path / "runs"), **trainer}}
    return data, tmp_path / "runs" / data["name"] / checkpoint_dir.parent.name / "checkpoints"


# ----------------------------------------------------------------------------- 1. safe loading
@pytest.mark.integration
def test_no_command_runs_code_from_a_file(demo_dir, task_dir, tmp_path, tracking_uri, write_yaml, capsys):
    """probe, extract, train --resume CKPT, a planted last.ckpt and the k-means hidden-feature
    checkpoint: the marker never appears and each is one line naming the file."""
    marker = tmp_path / "MARKER"
    evil = malicious_file(tmp_path / "evil.ckpt", marker)
    spec = write_yaml(spec_data(demo_dir, tmp_path, tracking_uri))

    commands = {
        "probe": ["probe", str(evil), str(task_dir)],
        "extract": ["extract", str(evil), str(demo_dir), "--out", str(tmp_path / "f.npz")],
        "train --resume CKPT": ["train", str(spec), "--resume", str(evil)],
    }
    for name, argv in commands.items():
        assert main(argv) == 1, name
        err = one_error_line(capsys)
        assert str(evil) in err and "refused to load" in err, (name, err)

    planted = malicious_file(tmp_path / "runs" / "rel-io" / ("f" * 32) / "checkpoints" / "last.ckpt", marker)
    assert main(["train", str(spec), "--resume"]) == 1
    err = one_error_line(capsys)
    assert str(planted) in err and "refused to load" in err

    kmeans = {
        "feature": "hidden",
        "checkpoint": str(evil),
        "layer": 1,
        "n_clusters": 4,
        "centroids": str(tmp_path / "km.safetensors"),
    }
    fit_spec = write_yaml(
        {
            **spec_data(demo_dir, tmp_path, tracking_uri),
            "teachers": {"km": {"name": "kmeans", "params": kmeans}},
            "objectives": {"km_pred": {"name": "masked_prediction", "teacher": "km"}},
        },
        "fit.yaml",
    )
    assert main(["teachers", "fit", str(fit_spec)]) == 1
    err = one_error_line(capsys)
    assert str(evil) in err and "refused to load" in err
    assert not marker.exists()


def test_codec_weights_and_legacy_state_files_load_weights_only(tmp_path):
    marker = tmp_path / "MARKER"
    evil = malicious_file(tmp_path / "weights.pth", marker)
    for name, params in (
        ("encodec", {"pretrained": True, "weights": str(evil)}),
        ("dac", {"pretrained": True, "model_type": "16khz", "weights": str(evil)}),
    ):
        with pytest.raises(WeightsError, match=r"refused to load") as err:
            get_registry().build("teacher", name, params)
        assert str(evil) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MertlabError, match="refused to load"):
        get_registry().build("teacher", "kmeans", {"centroids": str(evil)})
    assert not marker.exists()


def test_backbone_files_are_safetensors_and_old_files_still_load(tmp_path):
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", "transformer", {"preset": "tiny"})
    path = save_backbone(tmp_path / "b.pt", backbone)
    assert is_safetensors(path)
    loaded = load_backbone(path)
    assert all(
        torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    # a backbone file in the torch format (plain data + tensors) loads weights-only too
    legacy = tmp_path / "legacy.pt"
    torch.save(
        {
            "format": LEGACY_BACKBONE_FORMAT,
            "state_dict": backbone.state_dict(),
            "backbone": {"name": backbone.name, "params": backbone.params.model_dump(mode="json")},
        },
        legacy,
    )
    reloaded = load_backbone(legacy).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in backbone.state_dict().items())


def test_numpy_rng_states_in_a_checkpoint_are_allowed(tmp_path):
    """Resumable data pipelines store numpy RNG states: allow-listed, still weights-only."""
    path = tmp_path / "rng.ckpt"
    torch.save(
        {
            "state_dict": {},
            "rng": np.random.default_rng(0).bit_generator.state,
            "legacy": np.random.RandomState(0).get_state(),
            "x": np.float64(1.5),
        },
        path,
    )
    loaded = load_torch_file(path)
    assert loaded["legacy"][1].dtype == np.uint32 and loaded["x"] == 1.5


# ----------------------------------------------------------------------------- 2-3. checkpoints
def full_disk(monkeypatch) -> None:
    """Checkpoint files run out of space after a few bytes have reached the disk."""
    from mertlab.toolkit.atomic import atomic_write

    def write_then_fail(f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        "mertlab.train.checkpoint_io.atomic_write",
        lambda path, write, **kwargs: atomic_write(path, write_then_fail, **kwargs),
    )


def test_checkpoint_write_is_atomic_on_a_full_disk(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before, sidecar = path.read_bytes(), (path.parent / "last.ckpt.json").read_bytes()

    full_disk(monkeypatch)
    with pytest.raises(
        MertlabError, match=r"last.ckpt: cannot write checkpoint \(No space left on device\); the previous"
    ):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    assert path.read_bytes() == before and (path.parent / "last.ckpt.json").read_bytes() == sidecar
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.json"]
    assert io.load_checkpoint(path)["global_step"] == 1


def test_checkpoint_write_to_a_read_only_folder_keeps_the_previous(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {}, "global_step": 1}, path)

    def read_only(*args, **kwargs):  # what a read-only mount answers (chmod does not stop root)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("mertlab.toolkit.atomic.tempfile.mkstemp", read_only)
    with pytest.raises(MertlabError, match="Read-only file system"):
        io.save_checkpoint({"state_dict": {}, "global_step": 2}, path)
    assert io.load_checkpoint(path)["global_step"] == 1


@pytest.mark.integration
def test_unwritable_output_dir_fails_before_the_mlflow_run(demo_dir, tmp_path, write_yaml, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spec = write_yaml(spec_data(demo_dir, tmp_path, uri, output_dir=str(blocker / "runs")))
    assert main(["train", str(spec)]) == 1
    err = one_error_line(capsys)
    assert err.startswith("error: trainer.output_dir: cannot write to ") and str(blocker) in err
    experiment = MlflowClient(uri).get_experiment_by_name("rel-io")
    assert experiment is None or not MlflowClient(uri).search_runs([experiment.experiment_id])


@pytest.mark.integration
def test_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(
    trained, tmp_path, write_yaml, capsys, monkeypatch
):
    data, ckpt_dir = copy_runs(trained, tmp_path, max_steps=4)
    last = ckpt_dir / "last.ckpt"
    before = last.read_bytes()

    full_disk(monkeypatch)
    assert main(["train", str(write_yaml(data)), "--resume", "--no-progress"]) == 1
    err = one_error_line(capsys)
    assert "No space left on device" in err and str(ckpt_dir) in err
    assert last.read_bytes() == before
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.integration
def test_resume_skips_a_damaged_last_ckpt_for_the_newest_good_one(trained, tmp_path, write_yaml, capsys, caplog):
    data, ckpt_dir = copy_runs(trained, tmp_path, max_steps=3)
    last = ckpt_dir / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # e.g. what a full disk left behind before this fix
    point = select_resume_checkpoint(tmp_path / "runs" / data["name"])
    assert point.path.name.startswith("best-step") and str(last) in point.skipped[0]
    assert main(["train", str(write_yaml(data)), "--resume", "--no-progress"]) == 0
    assert "damaged or truncated checkpoint" in caplog.text and str(last) in caplog.text
    assert load_torch_file(last)["global_step"] == 3  # continued from the good one, to the end


@pytest.mark.integration
def test_damaged_checkpoints_are_named_in_one_line(trained, demo_dir, task_dir, tmp_path, write_yaml, capsys):
    data, ckpt_dir = copy_runs(trained, tmp_path)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes((ckpt_dir / "last.ckpt").read_bytes()[:5000])
    random = tmp_path / "random.ckpt"
    random.write_bytes(np.random.default_rng(0).bytes(4000))
    spec = write_yaml(data)
    for path in (damaged, random):
        for argv in (
            ["train", str(spec), "--resume", str(path)],
            ["probe", str(path), str(task_dir)],
            ["extract", str(path), str(demo_dir), "--out", str(tmp_path / "x.npz")],
        ):
            assert main(argv) == 1, argv
            err = one_error_line(capsys)
            assert str(path) in err and "damaged or truncated checkpoint" in err, (argv, err)
    for ckpt in ckpt_dir.glob("*.ckpt"):  # a truncated best and last: nothing to resume from
        ckpt.write_bytes(b"")
    assert main(["train", str(spec), "--resume"]) == 1
    err = one_error_line(capsys)
    assert "no checkpoint under" in err and "loads" in err and "last.ckpt" in err


# ----------------------------------------------------------------------------- 4. cache integrity
def cache_spec(demo_dir, tmp_path, tracking_uri) -> dict:
    data = spec_data(demo_dir, tmp_path, tracking_uri)
    data["data"] = {**data["data"], "target_cache": str(tmp_path / "targets")}
    return data


def cache_of(spec_dict) -> tuple:
    """The CQT teacher's cache folder object and the audio files of the spec."""
    from mertlab.data.audio import list_audio_paths, probe
    from mertlab.teachers.target_cache import TeacherCache

    t = spec_dict["teachers"]["cqt"]
    teacher = get_registry().build("teacher", t["name"], t["params"])
    files = [probe(p) for p in list_audio_paths(spec_dict["data"]["path"], [".wav"])]
    return TeacherCache(spec_dict["data"]["target_cache"], teacher), teacher, files


def damage(entry: Path, how: str) -> None:
    blob = bytearray(entry.read_bytes())
    if how == "truncate":
        entry.write_bytes(bytes(blob[: len(blob) // 2]))
    elif how == "flip":  # same size, one data byte changed: only the checksum sees it
        blob[-7] ^= 0xFF
        entry.write_bytes(bytes(blob))
    else:  # random bytes over the whole entry
        entry.write_bytes(np.random.default_rng(1).bytes(len(blob)))


def make_read_only(monkeypatch, root: Path) -> None:
    """Files under ``root`` cannot be created, as on a read-only mount (chmod does not stop root)."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir", "")).resolve().is_relative_to(root.resolve()):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr("mertlab.toolkit.atomic.tempfile.mkstemp", mkstemp)


def test_damaged_cache_entries_are_named_and_recomputed_by_targets_build(
    demo_dir, tmp_path, tracking_uri, write_yaml, capsys, caplog
):
    from mertlab.teachers.target_cache import compute_file_targets

    data = cache_spec(demo_dir, tmp_path, tracking_uri)
    spec = write_yaml(data)
    assert main(["targets", "build", str(spec), "--no-progress"]) == 0
    cache, teacher, files = cache_of(data)
    good = {f.path: np.array(cache.read(f.path)) for f in files}
    damaged = {cache.entry(f.path): how for f, how in zip(files, ("truncate", "flip", "random"), strict=False)}
    for entry, how in damaged.items():
        damage(entry, how)
        assert cache.damage(entry), how
    capsys.readouterr()
    assert main(["targets", "build", str(spec), "--no-progress"]) == 0
    assert "3 files computed (of which 3 replaced damaged entries)" in capsys.readouterr().out
    for entry in damaged:
        assert f"recomputing damaged entry {entry}" in caplog.text
    fresh, _, _ = cache_of(data)
    for f in files:
        assert fresh.damage(fresh.entry(f.path)) is None
        np.testing.assert_array_equal(fresh.read(f.path), good[f.path])
    np.testing.assert_array_equal(good[files[0].path], compute_file_targets(teacher, files[0]))


def test_a_damaged_entry_read_while_training_is_recomputed(demo_dir, tmp_path, tracking_uri, caplog, monkeypatch):
    """Checksums are checked on each entry's first read: a changed byte is repaired from the
    teacher, stored back, or kept in memory when the cache cannot be written."""
    from mertlab.teachers.target_cache import build_teacher_cache
    from mertlab.train.targets import CachedTargets

    data = cache_spec(demo_dir, tmp_path, tracking_uri)
    cache, teacher, files = cache_of(data)
    build_teacher_cache(teacher, files, data["data"]["target_cache"], progress=False)
    expected = np.array(cache.read(files[0].path))
    entry = cache.entry(files[0].path)

    damage(entry, "flip")
    source = CachedTargets(data["data"]["target_cache"], {"cqt": teacher}, 24000)
    np.testing.assert_array_equal(source.read("cqt", files[0]), expected)
    assert f"damaged entry {entry}" in caplog.text and "checksum mismatch" in caplog.text
    assert cache.damage(entry) is None  # repaired on disk

    damage(entry, "flip")
    make_read_only(monkeypatch, tmp_path / "targets")
    source = CachedTargets(data["data"]["target_cache"], {"cqt": teacher}, 24000)
    np.testing.assert_array_equal(source.read("cqt", files[0]), expected)
    assert "using the recomputed targets for this run only" in caplog.text

    with pytest.raises(MertlabError, match=r"damaged entry .*checksum mismatch.*targets build SPEC"):
        CachedTargets(data["data"]["target_cache"], {"cqt": teacher}, 24000, repair=False).read("cqt", files[0])


@pytest.mark.integration
def test_damaged_or_missing_entries_without_repair_are_one_line(
    demo_dir, tmp_path, tracking_uri, write_yaml, capsys, monkeypatch
):
    data = cache_spec(demo_dir, tmp_path, tracking_uri)
    spec = write_yaml(data)
    assert main(["targets", "build", str(spec), "--no-progress"]) == 0
    cache, _, files = cache_of(data)
    entry = cache.entry(files[1].path)
    damage(entry, "truncate")
    assert main(["train", str(spec), "--no-progress", "-o", "data.build_target_cache=false"]) == 1
    err = one_error_line(capsys)
    assert f"damaged entry {entry} (targets of {files[1].path}): truncated" in err and "targets build SPEC" in err

    # a read-only cache with a missing entry says so (train builds missing entries first)
    entry.unlink()
    make_read_only(monkeypatch, tmp_path / "targets")
    for argv in (["train", str(spec), "--no-progress"], ["targets", "build", str(spec), "--no-progress"]):
        assert main(argv) == 1
        err = one_error_line(capsys)
        assert f"cannot write {entry} (Read-only file system)" in err and "must be writable" in err, err


def test_entries_of_older_caches_without_a_record_still_load(demo_dir, tmp_path, tracking_uri):
    from mertlab.teachers.target_cache import build_teacher_cache

    data = cache_spec(demo_dir, tmp_path, tracking_uri)
    cache, teacher, files = cache_of(data)
    build_teacher_cache(teacher, files[:1], data["data"]["target_cache"], progress=False)
    entry = cache.entry(files[0].path)
    entry.with_name(entry.stem + ".sum.json").unlink()
    fresh, _, _ = cache_of(data)
    assert fresh.damage(entry) is None and fresh.read(files[0].path).shape[1] == teacher.info.dim
    damage(entry, "truncate")
    assert "truncated" in fresh.damage(entry)


# ----------------------------------------------------------------------------- 5. spec hardening
BAD_SPECS = [
    (["-o", "name=../../escaped"], "name: Value error, '../../escaped' is not a valid name"),
    (["-o", "name=/abs/path"], "is not a valid name"),
    (["-o", "seed=-1"], "seed: Input should be greater than or equal to 0"),
    (["-o", f"seed={2**32}"], "seed: Input should be less than or equal to 4294967295"),
    (["-o", "optim.betas=[0.9, 1.5]"], "optim.betas: Value error, each beta must be in [0, 1)"),
    (["-o", "trainer.accelerator=warp"], "trainer.accelerator: Value error, unknown accelerator 'warp'"),
    (["-o", "data.crop_seconds=.inf"], "data.crop_seconds: Input should be a finite number"),
    (["-o", 'data.path="a\\0b"'], "data.path: Value error, contains a NUL character"),
    (["-o", 'name="x\\0y"'], "name: Value error, contains a NUL character"),
]


@pytest.mark.integration
@pytest.mark.parametrize("argv, message", BAD_SPECS, ids=[a[1] for a, _ in BAD_SPECS])
def test_validate_rejects_what_train_would_and_train_starts_nothing(
    argv, message, demo_dir, tmp_path, write_yaml, capsys
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_yaml(spec_data(demo_dir, tmp_path, uri))
    assert main(["validate", str(spec), *argv]) == 1
    validate_err = one_error_line(capsys)
    assert message in validate_err
    assert main(["train", str(spec), *argv]) == 1
    assert one_error_line(capsys) == validate_err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_largest_seed_trains(demo_dir, tmp_path, tracking_uri):
    spec = resolve_spec(spec_data(demo_dir, tmp_path, tracking_uri, max_steps=1) | {"seed": 2**32 - 1})
    assert train(spec, progress=False).metrics


def test_paths_from_values_stay_inside_their_root(tmp_path):
    from mertlab.toolkit.paths import inside

    assert inside(tmp_path, "a", "b") == tmp_path / "a" / "b"
    for parts in (("..", "x"), ("a", "../../x"), ("/etc",), (".",)):
        with pytest.raises(MertlabError, match="would leave"):
            inside(tmp_path, *parts, what="name")
    # a checkpoint cannot point the run's folder elsewhere through its MLflow run id
    ckpt = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "mlflow_run_id": "../../elsewhere"}, ckpt)
    with pytest.raises(MertlabError, match=r"odd.ckpt: its mlflow_run_id '../../elsewhere' is not an MLflow run id"):
        select_resume_checkpoint(tmp_path, str(ckpt))


FUZZ_BASE = {
    "name": "fuzz",
    "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
    "teachers": {"c": {"name": "cqt"}, "k": {"name": "bestrq", "params": {"codebook_size": 64}}},
    "objectives": {
        "o": {"name": "masked_regression", "teacher": "c"},
        "p": {"name": "masked_prediction", "teacher": "k"},
    },
}
FUZZ_KEYS = [
    "name",
    "seed",
    "description",
    "data",
    "data.path",
    "data.crop_seconds",
    "data.batch_size",
    "data.extensions",
    "backbone",
    "backbone.name",
    "backbone.params",
    "backbone.params.preset",
    "backbone.params.num_layers",
    "backbone.params.num_heads",
    "teachers",
    "teachers.c",
    "teachers.c.name",
    "teachers.c.params.n_bins",
    "teachers.k.params.codebook_size",
    "objectives.o",
    "objectives.o.teacher",
    "objectives.o.weight",
    "masking.name",
    "masking.params.mask_prob",
    "optim.betas",
    "optim.lr",
    "trainer.precision",
    "trainer.accelerator",
    "trainer.output_dir",
    "tracking.tags",
    "callbacks.stability.params",
    "sweep",
    "sweep.grid",
    "sweep.variants",
    "requires_plugins",
    "augment.mixup.probability",
    "feature_penalty",
]


def fuzz_values():
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    return st.recursive(
        leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6
    )


def put(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def test_fuzzed_spec_dicts_load_or_give_a_spec_error(one_thread):
    """Any structure at any key, nested up to thousands deep: a resolved spec or a rendered
    SpecError, never another exception."""
    import copy

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mertlab.errors import SpecError

    def deep(depth: int, leaf) -> object:  # lists and mappings inside each other, thousands deep
        for i in range(depth):
            leaf = [leaf] if i % 2 else {"k": leaf}
        return leaf

    values = fuzz_values() | st.tuples(st.integers(0, 5000), fuzz_values()).map(lambda d: deep(*d))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.tuples(st.sampled_from(FUZZ_KEYS) | st.text(max_size=10), values), min_size=1, max_size=4))
    def check(mutations):
        data = copy.deepcopy(FUZZ_BASE)
        for key, value in mutations:
            put(data, key, value)
        try:
            resolve_spec(data)
        except SpecError as exc:
            assert str(exc) and all(line.strip() for line in str(exc).splitlines())

    check()


def test_fuzzed_yaml_and_overrides_load_or_give_a_spec_error(tmp_path, one_thread):
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mertlab.errors import SpecError
    from mertlab.experiment.spec import load_spec

    good = yaml.safe_dump(FUZZ_BASE)
    path = tmp_path / "spec.yaml"

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(
        st.one_of(
            st.text(max_size=60),
            st.text(max_size=30).map(lambda t: good + t),
            st.binary(max_size=40).map(lambda b: good[: len(good) // 2] + b.decode("latin-1")),
        ),
        st.lists(
            st.sampled_from(FUZZ_KEYS).flatmap(lambda k: st.text(max_size=12).map(lambda v: f"{k}={v}"))
            | st.text(max_size=15),
            max_size=3,
        ),
    )
    def check(text, overrides):
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            load_spec(path, overrides)
        except SpecError as exc:
            assert str(exc)

    check()


def test_every_torch_load_of_the_product_goes_through_the_safe_loader():
    """A new ``torch.load``/``pickle.load`` call in core/ or plugins/ would bypass the allow-list
    of :func:`mertlab.toolkit.safe_load.load_torch_file`; reading files is that module's job alone."""
    root = Path(__file__).resolve().parents[1]
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("core", "plugins")
        for path in sorted((root / folder).rglob("*.py"))
        if path.name != "safe_load.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ("torch.load(" in line or "pickle.load" in line) and not line.lstrip().startswith(("#", "*", "``"))
    ]
    assert not offenders, f"use mertlab.toolkit.safe_load.load_torch_file instead: {offenders}"
