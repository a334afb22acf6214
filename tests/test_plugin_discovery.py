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


def skipped_warning(caplog, fragment: str) -> str:
    """The one warning naming the skipped plugin."""
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and fragment in r.getMessage()]
    assert len(lines) == 1 and len(lines[0].splitlines()) == 1, lines
    return lines[0]


def test_plugin_import_failure_is_skipped_with_one_warning_and_the_rest_loads(fake_dist, caplog):
    fake_dist("broken-plugin", "broken_plugin_mod", "import does_not_exist_xyz\n", version="0.9")
    fake_dist("good-teachers", "good_teacher_mod", TEACHER_CODE.format(cls="Good", name="good"))
    registry = get_registry()
    warning = skipped_warning(caplog, "broken_plugin_mod")
    assert "broken-plugin 0.9" in warning and "does_not_exist_xyz" in warning and "ModuleNotFoundError" in warning
    assert "MERTLAB_DISABLE_PLUGINS=broken_plugin_mod" in warning
    assert registry.get("teacher", "good").source.distribution == "good-teachers"
    assert registry.get("teacher", "cqt").source.label == "builtin"
    with pytest.raises(UnknownComponentError) as err:  # a command needing it fails with the warning's message
        registry.get("teacher", "broken_teacher")
    assert "not loaded: plugin 'broken_plugin_mod' (broken-plugin 0.9): failed to import" in str(err.value)


def test_duplicate_names_skip_the_later_plugin_naming_both(fake_dist, caplog):
    fake_dist("dup-one", "dup_one_mod", TEACHER_CODE.format(cls="A", name="twin"))
    fake_dist("dup-two", "dup_two_mod", TEACHER_CODE.format(cls="B", name="twin"))
    registry = get_registry()
    kept = registry.get("teacher", "twin").source.distribution
    dropped = ({"dup-one", "dup-two"} - {kept}).pop()
    warning = skipped_warning(caplog, "named 'twin'")
    assert f"({dropped} 1.0): registers a teacher named 'twin', which plugin" in warning and kept in warning


def test_a_plugin_clashing_with_a_builtin_never_replaces_it(fake_dist, caplog):
    fake_dist("cqt-clash", "cqt_clash_mod", TEACHER_CODE.format(cls="C", name="cqt"))
    assert get_registry().get("teacher", "cqt").source.label == "builtin"
    assert "plugin 'cqt_clash_mod' (cqt-clash 1.0): registers a teacher named 'cqt'" in skipped_warning(caplog, "cqt")


def test_misspelled_hook_is_skipped_with_did_you_mean(fake_dist, caplog):
    code = "from mertlab.hookspecs import hookimpl\n@hookimpl\ndef register_teacher(register):\n    pass\n"
    fake_dist("typo-plugin", "typo_plugin_mod", code)
    get_registry()
    warning = skipped_warning(caplog, "typo_plugin_mod")
    assert "'register_teacher' is not a mertlab hook; did you mean 'register_teachers'?" in warning
    assert "typo-plugin 1.0" in warning


def test_registering_a_non_component_skips_the_plugin_and_all_it_registered(fake_dist, caplog):
    code = TEACHER_CODE.format(cls="Fine", name="fine_one") + (
        "\n@hookimpl\ndef register_objectives(register):\n    register(object)\n"
    )
    fake_dist("bad-reg", "bad_reg_mod", code)
    registry = get_registry()
    assert "without a string `name`" in skipped_warning(caplog, "bad_reg_mod")
    assert not registry.list("teacher", "fine_one")  # all of a plugin's components or none


def test_a_crashing_register_hook_is_skipped(fake_dist, caplog):
    code = "from mertlab.hookspecs import hookimpl\n@hookimpl\ndef register_teachers(register):\n    1 / 0\n"
    fake_dist("crash-reg", "crash_reg_mod", code)
    assert get_registry().get("teacher", "cqt")
    assert "failed to register its components: ZeroDivisionError" in skipped_warning(caplog, "crash_reg_mod")


def test_disable_plugins_by_environment_skips_them_silently(fake_dist, monkeypatch, caplog):
    fake_dist("acme-teachers", "acme_teacher_mod", TEACHER_CODE.format(cls="Acme", name="acme"))
    fake_dist("broken-plugin", "broken_plugin_mod", "import does_not_exist_xyz\n")
    monkeypatch.setenv("MERTLAB_DISABLE_PLUGINS", "acme-teachers, broken_plugin_mod,mertlab.plugins.teachers.crepe")
    registry = get_registry()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert {e.name for e in registry.list("teacher")}.isdisjoint({"acme", "crepe"})
    assert registry.get("teacher", "cqt")
    with pytest.raises(UnknownComponentError, match=r"plugin 'acme_teacher_mod' \(acme-teachers 1.0\): disabled"):
        registry.get("teacher", "acme")


def test_misspelled_disabled_plugin_gets_did_you_mean(fake_dist, monkeypatch, caplog):
    fake_dist("acme-teachers", "acme_teacher_mod", TEACHER_CODE.format(cls="Acme", name="acme"))
    monkeypatch.setenv("MERTLAB_DISABLE_PLUGINS", "acme_teacher_mdo")
    assert get_registry().get("teacher", "acme")
    assert "no plugin named 'acme_teacher_mdo'; did you mean 'acme_teacher_mod'?" in skipped_warning(caplog, "mdo")


def test_cli_disable_plugin_option_and_a_broken_plugin_never_block_other_commands(fake_dist, capsys):
    from conftest import REPO
    from mertlab.cli import main

    fake_dist("acme-teachers", "acme_teacher_mod", TEACHER_CODE.format(cls="Acme", name="acme"))
    code = "from mertlab.hookspecs import hookimpl\nclass P:\n    name = 'x'\n    summary = None\n"
    code += "@hookimpl\ndef register_teachers(register):\n    register(P)\n"
    fake_dist("summary-none", "summary_none_mod", code)
    assert main(["validate", str(REPO / "experiments" / "quickstart.yaml")]) == 0
    assert "not loaded: plugin 'summary_none_mod'" not in capsys.readouterr().out  # a warning, on stderr
    assert main(["--disable-plugin", "acme-teachers", "plugins", "acme"]) == 0
    out = capsys.readouterr().out
    assert (
        "no component matches 'acme'" in out
        and "not loaded: plugin 'acme_teacher_mod' (acme-teachers 1.0): disabled" in out
    )
    assert main(["plugins", "acme"]) == 0  # the option applied to that command only
    assert "acme-teachers" in capsys.readouterr().out
    assert main(["--disable-plugin=acme_teacher_mod", "check-plugin", "acme"]) == 1
    assert "unknown component 'acme'" in capsys.readouterr().err


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


@pytest.mark.integration
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
    from mertlab.contracts import LazyComponent
    from mertlab.hookspecs import hookimpl
    from mertlab.plugin_system.plugin_manager import PluginSource
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
        match=(
            r"plugin 'wrong' \(wrong-dist 1.0\): callback 'stability2': .* differs from its registration in "
            r"name, summary"
        ),
    ):
        _ = Registry(pm).get("callback", "stability2").component  # loading the class raises
