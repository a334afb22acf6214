"""Start ``mertlab`` commands as an outside launcher does (torchrun, srun): every rank at once,
with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set, and the test
callbacks of ``dist_probes`` installed through a test distribution's entry point."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

MERTLAB = str(Path(sys.executable).parent / "mertlab")
TESTS = Path(__file__).parent


def tiny_spec(name: str, data: Path, out_dir: Path, tracking_uri: str, **trainer: Any) -> dict[str, Any]:
    """A tiny transformer with one CQT teacher on CPU, writing under ``out_dir/runs``."""
    return {
        "name": name,
        "seed": 3,
        "data": {"path": str(data), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.25},
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}}},
        "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "trainer": {
            "max_steps": 2,
            "log_every_n_steps": 1,
            "val_every_n_steps": 2,
            "limit_val_batches": 1,
            "output_dir": str(out_dir / "runs"),
            "accelerator": "cpu",
            **trainer,
        },
        "tracking": {"tracking_uri": tracking_uri},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_plugin_site(root: Path) -> Path:
    """A folder holding the dist-info of a test distribution whose ``mertlab`` entry point is
    ``dist_probes`` (tests/dist_probes.py): put it and tests/ on PYTHONPATH."""
    info = root / "mertlab_test_probes-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mertlab-test-probes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mertlab]\ndist_probes = dist_probes\n")
    return root


def base_env(site: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def launch(
    args: list[str], world: int, cwd: Path, env: dict[str, str], timeout: float = 300
) -> list[subprocess.CompletedProcess]:
    """``mertlab ARGS`` as ``world`` ranks started together; their results in rank order."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        rank_env = {
            **env,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [MERTLAB, *args], cwd=cwd, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return results


def ok(results: list[subprocess.CompletedProcess]) -> list[subprocess.CompletedProcess]:
    for rank, done in enumerate(results):
        assert done.returncode == 0, f"rank {rank}: rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return results


def probe_records(folder: Path, rank: int) -> list[dict[str, Any]]:
    path = folder / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
