"""Discovery: built-ins via DEFAULT_PLUGINS, third-party via the `mertlab` entry-point group."""

from __future__ import annotations

import pytest

from mertlab.errors import PluginError, UnknownComponentError
from mertlab.plugin_system.plugin_manager import DEFAULT_PLUGINS, create_plugin_manager
from mertlab.plugin_system.registry import Registry, get_registry

TEACHER_CODE = """
from pydantic import Field
from mertlab.contracts import Params
from mertlab.hookspecs import hookimpl

class P(Params):
    k: int = Field(3, gt=0, description="k")

class {cls}:
    name = "{name}"
    summary = "third-party teacher"
    Params = P
    target_kind = "continuous"

    def __init__(self, params):
        self.params = params

@hookimpl
def register_teachers(register):
    register({cls})
"""


def test_builtins_register_through_the_same_hooks():
    pm = create_plugin_manager(autoload=False)
    assert set(DEFAULT_PLUGINS) <= set(pm.sources)
    assert all(pm.sources[m].label == "builtin" for m in DEFAULT_PLUGINS)


def test_entry_point_plugin_is_discovered_with_its_distribution(fake_dist):
    fake_dist("acme-teachers", "acme_teacher_mod", TEACHER_CODE.format(cls="Acme", name="acme"), version="2.3")
    entry = get_registry().get("teacher", "acme")
    assert entry.source.distribution == "acme-teachers"
    assert entry.source.label == "acme-teachers 2.3"
    assert entry.build({"k": 5}).params.k == 5


def test_disable_autoload_hides_third_party(fake_dist, monkeypatch):
    fake_dist("hidden-teachers", "hidden_teacher_mod", TEACHER_CODE.format(cls="Hid", name="offstage"))
    monkeypatch.setenv("MERTLAB_DISABLE_AUTOLOAD", "1")
    with pytest.raises(UnknownComponentError):
        get_registry().get("teacher", "offstage")


def test_plugin_import_failure_names_distribution_and_cause(fake_dist):
    fake_dist("broken-plugin", "broken_plugin_mod", "import does_not_exist_xyz\n", version="0.9")
    with pytest.raises(PluginError) as err:
        get_registry()
    msg = str(err.value)
    assert "broken-plugin 0.9" in msg and "does_not_exist_xyz" in msg and "ModuleNotFoundError" in msg
    assert "MERTLAB_DISABLE_AUTOLOAD=1" in msg and len(msg.splitlines()) == 1


def test_duplicate_names_name_both_sources(fake_dist):
    fake_dist("dup-one", "dup_one_mod", TEACHER_CODE.format(cls="A", name="twin"))
    fake_dist("dup-two", "dup_two_mod", TEACHER_CODE.format(cls="B", name="twin"))
    with pytest.raises(PluginError) as err:
        get_registry()
    assert "twin" in str(err.value) and "dup-one" in str(err.value) and "dup-two" in str(err.value)


def test_misspelled_hook_fails_loudly(fake_dist):
    code = "from mertlab.hookspecs import hookimpl\n@hookimpl\ndef register_teacher(register):\n    pass\n"
    fake_dist("typo-plugin", "typo_plugin_mod", code)
    with pytest.raises(PluginError) as err:
        get_registry()
    assert "register_teacher" in str(err.value) and "typo-plugin" in str(err.value)


def test_registering_a_non_component_is_an_error(fake_dist):
    code = "from mertlab.hookspecs import hookimpl\n@hookimpl\ndef register_teachers(register):\n    register(object)\n"
    fake_dist("bad-reg", "bad_reg_mod", code)
    with pytest.raises(PluginError, match="without a string `name`"):
        get_registry()


def test_unknown_name_suggests_close_match(toy_registry):
    with pytest.raises(UnknownComponentError) as err:
        toy_registry.get("teacher", "toy_rvk")
    assert "did you mean 'toy_rvq'?" in str(err.value) and "toy_cqt" in str(err.value)


def test_wildcard_listing(toy_registry):
    names = [e.name for e in toy_registry.list("teacher", "toy_*")]
    assert names == ["toy_cqt", "toy_rvq"]
    assert [e.name for e in toy_registry.list(None, "toy_sp*")] == ["toy_span"]
    assert isinstance(toy_registry, Registry)


HEAVY = ("lightning", "mlflow", "torchaudio", "nnAudio", "encodec", "dac", "transformers", "matplotlib")


def test_light_commands_import_no_heavy_package():
    """`plugins`, `validate`, `schema` and `--help` only import what they need (not Lightning,
    MLflow, codecs...): components registered lazily or importing their heavy packages on use."""
    import subprocess
    import sys

    from conftest import REPO

    code = (
        "import sys\nfrom mertlab.cli import main\n"
        f"for args in (['plugins'], ['validate', {str(REPO / 'experiments' / 'quickstart.yaml')!r}], "
        "['schema', 'callback', 'stability'], ['--help']):\n"
        "    assert main(args) == 0, args\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MERTLAB_DISABLE_AUTOLOAD": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_lazy_component_is_imported_on_use_and_must_match_its_declaration():
    from mertlab.hookspecs import hookimpl
    from mertlab.plugin_system.plugin_manager import PluginSource
    from mertlab.plugin_system.registry import LazyComponent
    from mertlab.plugins.callbacks.stability_plugin import STABILITY, StabilityParams

    entry = get_registry().get("callback", "stability")
    assert entry.declared is STABILITY and entry.params_model is StabilityParams
    assert entry.component.__name__ == "StabilityMonitor" and entry.build({}).params.every_n_steps == 10

    class Wrong:
        @hookimpl
        def register_callbacks(self, register):
            register(
                LazyComponent(STABILITY.target, name="stability2", summary="another summary", Params=StabilityParams)
            )

    pm = create_plugin_manager(autoload=False)
    pm.register_source(Wrong(), PluginSource("wrong", "wrong-dist", "1.0"))
    with pytest.raises(
        PluginError,
        match=r"plugin 'wrong' \(wrong-dist 1.0\): callback 'stability2': .* differs from its registration in name, summary",
    ):
        Registry(pm).get("callback", "stability2").component
