from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it here, before a
# test captures (and later closes) stderr, or a later test's Lightning log line hits a closed stream.
import lightning.pytorch  # noqa: F401
import pytest
import torch
import yaml

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        default=None,
        help="Where the real-browser tests keep their screenshots (default: a folder of pytest's "
        "temporary directory, named at the end of the run). `--screenshots docs/img` renews the docs' ones.",
    )


@pytest.fixture(scope="module")
def screenshot_dir(request, tmp_path_factory) -> Path:
    """Folder of the real-browser tests' screenshots (``--screenshots DIR``), named in the summary."""
    chosen = request.config.getoption("--screenshots")
    folder = Path(chosen).resolve() if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    request.config.stash[_SCREENSHOTS] = folder
    return folder


_SCREENSHOTS = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    folder = config.stash.get(_SCREENSHOTS, None)
    if folder is not None and any(folder.glob("*.png")):
        terminalreporter.write_line(f"screenshots of the real-browser tests: {folder}")


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Every test sees a registry built from the current environment (no cross-test leaks)."""
    from mertlab.plugin_system.registry import reset_registry

    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A small generated music set (6 clips of 2 s) shared by one test module."""
    from mertlab.data.demo import write_demo_dataset

    path = tmp_path_factory.mktemp("demo")
    write_demo_dataset(path, num_clips=6, seconds=2.0, progress=False)
    return path


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """A fresh MLflow sqlite store per test module, its tables created here: MLflow logs two INFO
    lines when it creates them, which would otherwise land in whichever test touches it first."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def one_thread():
    """For tests on tiny tensors: extra intra-op threads only add sync overhead (10x+ on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def install_registry_with(plugin_module, monkeypatch, source=None):
    """The real registry plus the components of ``plugin_module`` (registered as ``source``, a
    ``PluginSource``; default: a built-in of its module name), installed as the process-wide
    registry (so the CLI sees it too)."""
    import mertlab.plugin_system.registry as registry_module
    from mertlab.plugin_system.plugin_manager import PluginSource, create_plugin_manager

    pm = create_plugin_manager(autoload=False)
    pm.register_source(plugin_module, source or PluginSource(plugin_module.__name__))
    registry = registry_module.Registry(pm)
    monkeypatch.setattr(registry_module, "_PROCESS_REGISTRY", registry)
    return registry


@pytest.fixture
def registry_with(monkeypatch):
    """``registry_with(module, source)``: the built-ins plus the plugin ``module`` registered as
    ``source`` (a :class:`PluginSource`), installed as the process-wide registry (the CLI sees it)."""
    return lambda module, source: install_registry_with(module, monkeypatch, source)


@pytest.fixture
def toy_registry(monkeypatch):
    """The real registry plus the toy components of tests/toy_plugins.py."""
    import toy_plugins

    return install_registry_with(toy_plugins, monkeypatch)


@pytest.fixture
def probes_registry(monkeypatch):
    """The real registry plus the test callbacks of tests/dist_probes.py."""
    import dist_probes

    return install_registry_with(dist_probes, monkeypatch)


@pytest.fixture
def toy_spec() -> dict:
    import toy_plugins

    return copy.deepcopy(toy_plugins.TOY_SPEC)


@pytest.fixture
def write_yaml(tmp_path):
    def write(data, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Create an installed-looking distribution (module + dist-info with a `mertlab` entry
    point) on sys.path: real entry-point discovery, without pip."""

    def make(dist: str, module: str, code: str, version: str = "1.0", ep_name: str | None = None) -> Path:
        root = tmp_path / f"site-{dist}"
        root.mkdir()
        (root / f"{module}.py").write_text(textwrap.dedent(code))
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[mertlab]\n{ep_name or module} = {module}\n")
        monkeypatch.syspath_prepend(str(root))
        return root

    return make
