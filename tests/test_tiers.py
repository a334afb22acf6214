"""The two test tiers stay honest (docs/development.md).

`make test-fast` runs ``-m "not integration"``: every test that trains, runs a training or sweep
command end to end, builds the dev set or starts another process must carry the ``integration``
marker, or the fast tier silently grows into the full one. The check reads the tests' source:
a test is heavy when its body, a helper or fixture it reaches (in its module, conftest.py or the
tests' support modules) does one of those things. `make test`, CI's command, deselects nothing.
"""

from __future__ import annotations

import ast
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

#: mertlab functions that train, sweep or build the dev set, by the name they are imported under.
HEAVY_FUNCTIONS = {
    "train": "mertlab.train.run",
    "run_sweep": "mertlab.experiment.sweep",
    "build_dev_set": "mertlab.data",
}
#: CLI commands that train (or build data) when run for real (``sweep --dry-run`` only plans).
HEAVY_COMMANDS = {"train", "sweep", "dev-data"}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
#: Processes cheap enough for the fast tier: reading git's file list.
CHEAP_PROGRAMS = {"git"}


@dataclass
class Module:
    """One parsed file of tests/: its functions and where its imported names come from."""

    name: str
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, original name)
    fixtures: set[str] = field(default_factory=set)
    integration_module: bool = False


def _is_integration_mark(node: ast.expr) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "integration" for n in ast.walk(node))


def _is_fixture(func: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in func.decorator_list)


def parse_module(name: str, source: str) -> Module:
    tree = ast.parse(source)
    module = Module(name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                module.imports[alias.asname or alias.name] = (node.module, alias.name)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            module.functions[node.name] = node
            if _is_fixture(node):
                module.fixtures.add(node.name)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
            if target == "pytestmark":
                module.integration_module = _is_integration_mark(value)
            elif isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
                module.imports[target] = (value.value.id, value.attr)  # ``trained = other_module.trained``
    return module


def _first_arg(call: ast.Call) -> ast.expr | None:
    return call.args[0] if call.args else None


def _literal_words(node: ast.expr | None) -> list[str] | None:
    """The leading constant strings of a list/tuple literal (None when it is not one)."""
    if not isinstance(node, (ast.List, ast.Tuple)):
        return None
    words = []
    for element in node.elts:
        if not (isinstance(element, ast.Constant) and isinstance(element.value, str)):
            break
        words.append(element.value)
    return words


def _all_constants(node: ast.Call) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def heavy_call(call: ast.Call, module: Module, lists: dict[str, ast.expr] | None = None) -> str | None:
    """Why ``call`` makes a test heavy, or None (``lists``: the function's ``name = [...]`` assignments)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name is None:
        return None
    is_subprocess = (
        isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "subprocess"
    ) or module.imports.get(name, ("", ""))[0] == "subprocess"
    if is_subprocess and name in SUBPROCESS_CALLS:
        words = _literal_words(_first_arg(call))
        if words and words[0] in CHEAP_PROGRAMS:
            return None
        return f"starts a process ({ast.unparse(call)[:60]})"
    origin = module.imports.get(name) if isinstance(func, ast.Name) else None  # not ``module.train()``
    if origin and origin[1] in HEAVY_FUNCTIONS and origin[0].startswith(HEAVY_FUNCTIONS[origin[1]]):
        return f"calls {origin[0]}.{origin[1]}"
    if name != "main" and "cli" not in name:
        return None
    command = None
    for arg in call.args:  # the command line: ``main(["train", ...])``, ``run_cli(capsys, "train", ...)``
        words = _literal_words((lists or {}).get(arg.id, arg) if isinstance(arg, ast.Name) else arg)
        if words or (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            command = words[0] if words else arg.value
            break
    if command in HEAVY_COMMANDS and not (command == "sweep" and "--dry-run" in _all_constants(call)):
        return f"runs `mertlab {command}` ({ast.unparse(call)[:60]})"
    return None


class Tiering:
    """Which tests of tests/ are heavy and which are marked ``integration``."""

    def __init__(self, sources: dict[str, str]):
        self.modules = {name: parse_module(name, source) for name, source in sources.items()}
        self._memo: dict[tuple[str, str], str | None] = {}

    def _resolve(self, module: Module, name: str) -> tuple[Module, ast.FunctionDef] | None:
        """The function ``name`` means in ``module``: its own, a support module's, or a conftest fixture."""
        if name in module.functions:
            return module, module.functions[name]
        origin = module.imports.get(name)
        if origin and origin[0] in self.modules and origin[1] in self.modules[origin[0]].functions:
            other = self.modules[origin[0]]
            return other, other.functions[origin[1]]
        return None

    def _fixture(self, module: Module, name: str) -> tuple[Module, ast.FunctionDef] | None:
        if name in module.fixtures:
            return module, module.functions[name]
        origin = module.imports.get(name)
        if origin and origin[0] in self.modules and origin[1] in self.modules[origin[0]].fixtures:
            other = self.modules[origin[0]]
            return other, other.functions[origin[1]]
        conftest = self.modules.get("conftest")
        if conftest and name in conftest.fixtures:
            return conftest, conftest.functions[name]
        return None

    def why_heavy(self, module: Module, func: ast.FunctionDef) -> str | None:
        key = (module.name, func.name)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None  # recursion guard
        reason = None
        takes_fixtures = func.name.startswith("test_") or func.name in module.fixtures
        for arg in func.args.args if takes_fixtures else ():
            fixture = self._fixture(module, arg.arg)
            if fixture and fixture[1] is not func and (inner := self.why_heavy(*fixture)):
                reason = f"fixture {arg.arg}: {inner}"
                break
        if reason is None:
            local = {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            local |= {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}
            lists = {
                n.targets[0].id: n.value
                for n in ast.walk(func)
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
            }
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and (reason := heavy_call(node, module, lists)):
                    break
                # a function it calls or hands on (``pool.map(run_quick, ...)``), not a local variable
                named = isinstance(node, ast.Name) and node.id not in local
                target = self._resolve(module, node.id) if named else None
                if target and target[1] is not func and (inner := self.why_heavy(*target)):
                    reason = f"{node.id}: {inner}"
                    break
        self._memo[key] = reason
        return reason

    def unmarked_heavy_tests(self) -> dict[str, str]:
        """``module::test`` -> why it is heavy, for heavy tests without the ``integration`` marker."""
        found = {}
        for module in self.modules.values():
            if not module.name.startswith("test_") or module.integration_module:
                continue
            for func in module.functions.values():
                if not func.name.startswith("test_"):
                    continue
                marked = any(_is_integration_mark(d) for d in func.decorator_list)
                if not marked and (reason := self.why_heavy(module, func)):
                    found[f"{module.name}.py::{func.name}"] = reason
        return found


def test_every_heavy_test_is_marked_integration():
    sources = {path.stem: path.read_text() for path in sorted(TESTS.glob("*.py"))}
    unmarked = Tiering(sources).unmarked_heavy_tests()
    assert not unmarked, "heavy tests without @pytest.mark.integration (docs/development.md):\n" + "\n".join(
        f"  {test}: {why}" for test, why in unmarked.items()
    )


SUPPORT = """
import subprocess
from mertlab.train.run import train as run_training

def launch(args):
    return subprocess.Popen(["mertlab", *args])

def fit_tiny(spec):
    return run_training(spec)
"""


@pytest.mark.parametrize(
    "body, heavy",
    [
        ("main(['train', str(path), '--no-progress'])", "runs `mertlab train`"),
        ("run_cli(capsys, 'sweep', str(path))", "runs `mertlab sweep`"),
        ("monkeypatch.setattr(module, 'train', len)", None),
        ("run_cli('sweep', str(path), '--no-progress')", "runs `mertlab sweep`"),
        ("main(['sweep', str(path), '--dry-run'])", None),
        ("main(['validate', str(path)])", None),
        ("subprocess.run([sys.executable, '-c', 'pass'])", "starts a process"),
        ("subprocess.run(['git', 'ls-files'], cwd=REPO)", None),
        ("Popen(cmd)", "starts a process"),
        ("launch(['train'])", "launch: starts a process"),
        ("fit_tiny(spec)", "fit_tiny: calls mertlab.train.run.train"),
        ("local_helper()", "local_helper: calls mertlab.experiment.sweep.run_sweep"),
        ("uses_fixture", "fixture trained: calls mertlab.train.run.train"),
        ("uses_conftest_fixture", "fixture ddp_run: starts a process"),
        ("len([])", None),
        ("argv = ['train', str(path)]; main(argv)", "runs `mertlab train`"),
        ("launch = detect(cmd); launch.rank", None),
        ("pool.map(launch, [['train']])", "launch: starts a process"),
        ("model.train()", None),
        ("helper_with_a_trained_argument(None)", None),
    ],
)
def test_the_check_finds_each_kind_of_heavy_test(body, heavy):
    if body == "uses_fixture":
        test = "def test_x(trained):\n    pass\n"
    elif body == "uses_conftest_fixture":
        test = "def test_x(ddp_run, tmp_path):\n    pass\n"
    else:
        test = f"def test_x(capsys, path, cmd, spec, monkeypatch, module):\n    {body}\n"
    module = textwrap.dedent(
        """
        import subprocess
        from subprocess import Popen
        import pytest
        from mertlab.cli import main
        from mertlab.experiment.sweep import run_sweep
        from mertlab.train.run import train
        from support import launch, fit_tiny

        @pytest.fixture(scope="module")
        def trained():
            return train(None)

        def local_helper():
            return run_sweep(None)

        def helper_with_a_trained_argument(trained):
            return trained

        def run_cli(*argv):
            return main(list(argv))
        """
    )
    conftest = "import pytest, subprocess\n@pytest.fixture\ndef ddp_run():\n    subprocess.Popen(['x'])\n"
    sources = {"test_mod": module + test, "support": SUPPORT, "conftest": conftest}
    found = Tiering(sources).unmarked_heavy_tests()
    if heavy is None:
        assert found == {}
    else:
        assert list(found) == ["test_mod.py::test_x"] and heavy in found["test_mod.py::test_x"]
        marked = Tiering({**sources, "test_mod": module + "@pytest.mark.integration\n" + test})
        assert marked.unmarked_heavy_tests() == {}
        whole = Tiering({**sources, "test_mod": module + "pytestmark = [pytest.mark.integration]\n" + test})
        assert whole.unmarked_heavy_tests() == {}


def _pytest_args(target: str) -> list[str]:
    """The arguments after ``pytest`` in the recipe of a Makefile target."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        words = shlex.split(line)
        if "pytest" in words:
            return words[words.index("pytest") + 1 :]
    raise AssertionError(f"`make {target}` runs no pytest")


def test_ci_deselects_nothing_and_the_fast_tier_leaves_out_only_integration():
    import tomllib

    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = shlex.split(options.get("addopts", ""))
    assert "-m" not in addopts and "-k" not in addopts, "ini addopts must not deselect: CI runs everything"
    assert any(m.startswith("integration:") for m in options["markers"]) and options["timeout"] > 0
    full = _pytest_args("test")
    assert "-m" not in full and "-k" not in full and "--durations=25" in full
    fast = _pytest_args("test-fast")
    assert fast[fast.index("-m") + 1] == "not integration" and "-k" not in fast
