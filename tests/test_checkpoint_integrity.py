"""Checkpoint I/O without a second copy, and with integrity.

* a checkpoint streams to disk: saving it costs no second copy in host memory;
* a sidecar (size, SHA-256, step, spec, run) lies beside each checkpoint and every load checks
  it: a flipped byte in a tensor record is refused by ``--resume`` (which falls back to the
  newest intact checkpoint), ``export``, ``probe`` and rollback, in one line naming the file;
* a crash between writing the file and its sidecar leaves a pair that still checks out;
* checkpoints without a sidecar (older) load with one warning; ``export`` refuses NaN weights.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import test_reliability_io
from mertlab.cli import main
from mertlab.errors import MertlabError
from mertlab.experiment.spec import spec_fingerprint
from mertlab.toolkit.checkpoint import load_checkpoint_file
from mertlab.toolkit.checkpoint_sidecar import file_sha256, read_sidecar, sidecar_path, verify_checkpoint
from mertlab.toolkit.safe_load import load_torch_file
from mertlab.train.checkpoint_io import SafeCheckpointIO, describe_checkpoint, select_resume_checkpoint
from mertlab.train.rollback import rollback_to_last_checkpoint
from test_reliability_io import copy_runs, one_error_line

pytestmark = pytest.mark.filterwarnings("ignore")
trained = test_reliability_io.trained  # the fixture: one short real run (tests copy it before changing it)


@pytest.fixture
def task(demo_dir, tmp_path) -> Path:
    rows = [f"demo_00{i}.wav,{'ab'[i % 2]},{('train', 'train', 'valid', 'valid', 'test', 'test')[i]}" for i in range(6)]
    path = tmp_path / "task.csv"
    path.write_text("path,label,split\n" + "\n".join(f"{demo_dir}/{r}" for r in rows) + "\n")
    return path


def largest_tensor_record(path: Path) -> tuple[int, int]:
    """``(offset, size)`` of the data of the largest tensor record (``archive/data/N``) of a
    torch zip file (records are stored uncompressed)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_byte_in_a_tensor(path: Path) -> None:
    offset, size = largest_tensor_record(path)
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0xFF
    path.write_bytes(data)


# --------------------------------------------------------------------------- writing
def test_saving_streams_to_disk_without_a_second_copy(tmp_path):
    """tracemalloc sees numpy-backed tensors (numpy reports its buffers to it): the peak while
    saving, the checkpoint's own tensors included, stays below 1.3x the file's size (a
    serialised copy in memory first would make it >= 2x)."""
    tracemalloc.start()
    try:
        rng = np.random.default_rng(0)
        state = {
            f"layer{i}.weight": torch.from_numpy(rng.standard_normal(500_000, dtype=np.float32)) for i in range(12)
        }
        moments = {i: {"exp_avg": torch.from_numpy(np.ones(250_000, np.float32))} for i in range(12)}
        checkpoint = {"state_dict": state, "optimizer_states": [{"state": moments}], "global_step": 7}
        tracemalloc.reset_peak()
        SafeCheckpointIO().save_checkpoint(checkpoint, tmp_path / "last.ckpt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = (tmp_path / "last.ckpt").stat().st_size
    assert size > 30e6
    assert peak < 1.3 * size, f"peak {peak / size:.2f}x the checkpoint's size"
    loaded = load_torch_file(tmp_path / "last.ckpt")
    assert torch.equal(loaded["state_dict"]["layer3.weight"], state["layer3.weight"])


@pytest.mark.integration
def test_the_sidecar_records_the_file_and_the_run(trained):
    data, ckpt_dir = trained
    for path in (ckpt_dir / "last.ckpt", *ckpt_dir.glob("best-step*.ckpt")):
        sidecar = read_sidecar(path)
        ckpt = load_torch_file(path)
        assert sidecar.current.sha256 == file_sha256(path) and sidecar.current.size == path.stat().st_size
        assert sidecar.current.step == ckpt["global_step"] and sidecar.current.file == path.name
        assert sidecar.current.spec_name == "rel-io" and sidecar.current.mlflow_run_id == ckpt["mlflow_run_id"]
        assert sidecar.current.spec_fingerprint == spec_fingerprint(ckpt["mertlab_spec"])
        assert sidecar.previous is None  # the save finished: only the file present is listed
        assert describe_checkpoint(path) == sidecar.current
    # no sidecar is left behind by a best checkpoint that a better one replaced
    assert sorted(p.name for p in ckpt_dir.glob("*.json")) == sorted(p.name + ".json" for p in ckpt_dir.glob("*.ckpt"))


def test_a_crash_between_the_file_and_its_sidecar_leaves_a_pair_that_checks_out(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    replace = os.replace

    def crash(src, dst):  # the process dies after the sidecar listed the new file, before its rename
        if str(dst).endswith(".ckpt"):
            raise OSError(5, "Input/output error")
        replace(src, dst)

    monkeypatch.setattr("mertlab.toolkit.atomic.os.replace", crash)
    with pytest.raises(MertlabError, match="cannot write checkpoint"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    sidecar = read_sidecar(path)
    assert sidecar.current.step == 2 and sidecar.previous.step == 1  # both listed during the swap
    assert verify_checkpoint(path).step == 1  # the file present (the old one) checks out
    monkeypatch.undo()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    assert verify_checkpoint(path).step == 2 and read_sidecar(path).previous is None


def test_removing_a_checkpoint_removes_its_sidecar(tmp_path):
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {}, "global_step": 1}, tmp_path / "best-step1.ckpt")
    io.remove_checkpoint(tmp_path / "best-step1.ckpt")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- reading
@pytest.mark.integration
def test_a_flipped_byte_is_refused_by_every_load_and_resume_falls_back(
    trained, task, tmp_path, write_yaml, capsys, caplog
):
    data, ckpt_dir = copy_runs(trained, tmp_path, max_steps=3)
    last = ckpt_dir / "last.ckpt"
    flip_byte_in_a_tensor(last)
    hidden = last.with_name("hidden.json")
    sidecar_path(last).rename(hidden)  # without its sidecar the damage would load silently
    assert load_torch_file(last)["global_step"] == 2
    hidden.rename(sidecar_path(last))

    with pytest.raises(MertlabError, match=r"last.ckpt: damaged checkpoint \(its SHA-256") as exc:
        load_checkpoint_file(last)
    assert "\n" not in str(exc.value)
    for argv in (
        ["export", str(last), "--format", "hf", str(tmp_path / "hf")],
        ["probe", str(last), str(task), "--no-progress"],
        ["train", str(write_yaml(data)), "--resume", str(last), "--no-progress"],
    ):
        assert main(argv) == 1, argv
        err = one_error_line(capsys)
        assert str(last) in err and "damaged checkpoint" in err and "sidecar last.ckpt.json" in err, (argv, err)
    assert not (tmp_path / "hf").exists()

    point = select_resume_checkpoint(tmp_path / "runs" / data["name"])
    assert point.path.name.startswith("best-step") and "damaged checkpoint" in point.skipped[0]
    assert point.record == read_sidecar(point.path).current
    assert main(["train", str(write_yaml(data)), "--resume", "--no-progress"]) == 0
    assert "damaged checkpoint" in caplog.text and str(last) in caplog.text
    assert load_torch_file(last)["global_step"] == 3 and verify_checkpoint(last).step == 3


@pytest.mark.integration
def test_resume_selection_reads_candidates_memory_mapped(trained, tmp_path, monkeypatch):
    """Choosing what to resume never materialises a candidate: the damaged newest one is
    refused by its sidecar before torch reads it, the chosen one is memory-mapped."""
    import mertlab.toolkit.checkpoint as checkpoint_module

    data, ckpt_dir = copy_runs(trained, tmp_path)
    flip_byte_in_a_tensor(ckpt_dir / "last.ckpt")
    calls = []
    real = checkpoint_module.load_torch_file

    def recorded(path, what="checkpoint", *, mmap=False):
        calls.append((Path(path).name, mmap))
        return real(path, what, mmap=mmap)

    monkeypatch.setattr(checkpoint_module, "load_torch_file", recorded)
    point = select_resume_checkpoint(tmp_path / "runs" / data["name"])
    assert calls == [(point.path.name, True)] and point.path.name.startswith("best-step")


@pytest.mark.integration
def test_checkpoints_without_a_sidecar_load_with_one_warning(trained, tmp_path, caplog):
    _, ckpt_dir = copy_runs(trained, tmp_path)
    last = ckpt_dir / "last.ckpt"
    sidecar_path(last).unlink()
    assert load_checkpoint_file(last)["global_step"] == 2
    load_checkpoint_file(last)
    assert caplog.text.count("has no sidecar last.ckpt.json") == 1
    described = describe_checkpoint(last)  # computed for an older checkpoint
    assert described.sha256 == file_sha256(last) and described.step == 2
    sidecar_path(last).write_text("{not json")
    with pytest.raises(MertlabError, match=r"last.ckpt.json: damaged checkpoint sidecar .*delete the sidecar"):
        load_checkpoint_file(last)


@pytest.mark.integration
def test_rollback_refuses_a_damaged_checkpoint_and_only_skips(trained, tmp_path):
    _, ckpt_dir = copy_runs(trained, tmp_path)
    last = ckpt_dir / "last.ckpt"
    flip_byte_in_a_tensor(last)
    trainer = SimpleNamespace(world_size=1, checkpoint_callbacks=[SimpleNamespace(last_model_path=str(last))])
    skipped = []
    module = SimpleNamespace(skip_update=skipped.append, load_state_dict=lambda state: pytest.fail("loaded"))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    outcome = rollback_to_last_checkpoint(trainer, module, optimizer, 0.5)
    assert not outcome.rolled_back and skipped == [optimizer]
    assert str(last) in outcome.message and "damaged checkpoint" in outcome.message


@pytest.mark.integration
def test_export_refuses_non_finite_weights(trained, tmp_path, capsys):
    _, ckpt_dir = copy_runs(trained, tmp_path)
    ckpt = load_torch_file(ckpt_dir / "last.ckpt")
    name = next(k for k in ckpt["state_dict"] if k.startswith("backbone.") and k.endswith("weight"))
    ckpt["state_dict"][name].view(-1)[:16] = float("nan")
    diverged = tmp_path / "diverged.ckpt"
    SafeCheckpointIO().save_checkpoint(ckpt, diverged)
    assert main(["export", str(diverged), "--format", "hf", str(tmp_path / "hf")]) == 1
    err = one_error_line(capsys)
    assert str(diverged) in err and "16 non-finite backbone weight(s) in 1 tensor(s)" in err
    assert name.removeprefix("backbone.") in err and not (tmp_path / "hf").exists()
    assert json.loads(sidecar_path(diverged).read_text())["step"] == 2
