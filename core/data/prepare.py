"""Data a spec needs before training, teacher fitting or a target cache can start."""

from __future__ import annotations

from pathlib import Path

from mertlab.data.audio import list_audio_paths
from mertlab.data.demo import write_demo_dataset
from mertlab.data.demo_tasks import DEMO_TASKS, demo_tasks_dir, write_demo_tasks
from mertlab.data.source import data_source
from mertlab.experiment.spec import ExperimentSpec


def prepare_data(spec: ExperimentSpec, progress: bool = True) -> None:
    """With ``data.generate_demo``: write the generated demo set when the folder has no audio,
    and the labelled demo probe tasks to ``<data.path>-tasks/`` when their CSVs are missing
    (``progress``: their progress bars). Nothing for data that cannot hold the demo set (shards)."""
    if not spec.data.generate_demo or not data_source(spec.data).writes_demo:
        return
    path = Path(spec.data.path)
    if not path.exists() or not list_audio_paths(path, spec.data.extensions):
        write_demo_dataset(path, progress=progress)
    tasks = demo_tasks_dir(path)
    missing = [name for name in DEMO_TASKS if not (tasks / f"{name}.csv").is_file()]
    if missing:
        write_demo_tasks(tasks, names=missing, progress=progress)
