"""CLI start-up time: `mertlab plugins` (and other light commands) vs `python -c "import torch"`.

Peer: importing torch in a fresh interpreter, measured interleaved with the commands in the
same run (so the ratio is robust to a noisy machine). Components are torch modules, so listing
them imports torch and nothing heavier (Lightning, MLflow, codecs, nnAudio, torchaudio are
imported on first use); the target is `mertlab plugins` under 1.5x of `import torch`. Each
time is the median CPU time (user + system) of fresh processes.

    .venv/bin/python bench/startup.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from _timing import parser, ratio_value

SPEC = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")
COMMANDS = {
    'python -c "import torch"': ["-c", "import torch"],
    "mertlab plugins": ["-m", "mertlab", "plugins"],
    "mertlab --help": ["-m", "mertlab", "--help"],
    "mertlab validate quickstart.yaml": ["-m", "mertlab", "validate", SPEC],
    "mertlab schema teacher cqt": ["-m", "mertlab", "schema", "teacher", "cqt"],
}


def cpu_seconds(args: list[str]) -> float:
    """CPU time (user + system) of one fresh ``python ARGS`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    args = parser(__doc__).parse_args()
    commands = dict(list(COMMANDS.items())[:2]) if args.quick else COMMANDS
    repeats = 1 if args.quick else args.repeats
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):  # interleaved: load changes affect every command alike
        for name, command in commands.items():
            times[name].append(cpu_seconds(command))
    reference = statistics.median(times['python -c "import torch"'])
    width = max(map(len, commands))
    print(f"{'command':{width}}  cpu s (median of {repeats})  x import torch")
    for name, values in times.items():
        print(
            f"{name:{width}}  {statistics.median(values):8.2f}"
            f"                 {statistics.median(values) / reference:5.2f}x"
        )
    ratio = statistics.median(times["mertlab plugins"]) / reference
    print()
    ratio_value("mertlab plugins / import torch, CPU time", ratio, "fresh processes", target=1.5, at_most=True)


if __name__ == "__main__":
    main()
