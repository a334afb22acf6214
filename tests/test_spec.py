"""Experiment specs: two-stage validation, inheritance, overrides, round trip."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mertlab.errors import SpecError
from mertlab.experiment.spec import ExperimentSpec, apply_overrides, deep_merge, dump_spec, load_spec


def problems(exc: SpecError) -> dict[str, str]:
    return dict(exc.problems)


def test_valid_spec_resolves_params_with_defaults(toy_registry, toy_spec, write_yaml):
    spec = load_spec(write_yaml(toy_spec))
    assert spec.backbone.params == {"dim": 32, "heads": 2}
    assert spec.teachers["cqt"].params == {"n_bins": 84, "magnitude": "linear"}
    assert spec.objectives["cqt_recon"].weight == 0.5


def test_unknown_top_level_key(toy_registry, toy_spec, write_yaml):
    toy_spec["optimiser"] = {"lr": 1}
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(toy_spec))
    assert problems(err.value) == {"optimiser": "Extra inputs are not permitted"}


def test_plugin_param_error_has_full_path(toy_registry, toy_spec, write_yaml):
    toy_spec["teachers"]["cqt"]["params"]["n_bins"] = 0
    toy_spec["backbone"]["params"] = {"dim": 30, "heads": 4}
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(toy_spec))
    msg = str(err.value)
    assert "teachers.cqt.params.n_bins: Input should be greater than 0" in msg
    assert "backbone.params: Value error, heads (4) must divide dim (30)" in msg


def test_wrong_type(toy_registry, toy_spec, write_yaml):
    toy_spec["optim"] = {"lr": "fast"}
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(toy_spec))
    assert "optim.lr" in problems(err.value)


def test_unknown_plugin_name_lists_available(toy_registry, toy_spec, write_yaml):
    toy_spec["teachers"]["rvq"]["name"] = "toy_rvk"
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(toy_spec))
    msg = problems(err.value)["teachers.rvq.name"]
    assert "did you mean 'toy_rvq'?" in msg and "toy_cqt" in msg


def test_objective_with_missing_teacher_alias(toy_registry, toy_spec, write_yaml):
    toy_spec["objectives"]["rvq_pred"]["teacher"] = "codec"
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(toy_spec))
    assert "no teacher alias 'codec'" in problems(err.value)["objectives.rvq_pred.teacher"]


def test_teacher_kind_must_fit_objective(toy_registry, toy_spec, write_yaml):
    toy_spec["objectives"]["rvq_pred"]["teacher"] = "cqt"
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(toy_spec))
    assert "needs discrete targets" in problems(err.value)["objectives.rvq_pred.teacher"]


def test_missing_required_plugin(toy_registry, toy_spec, write_yaml):
    toy_spec["requires_plugins"] = ["mertlab-not-installed"]
    with pytest.raises(SpecError, match="'mertlab-not-installed' is required but not installed"):
        load_spec(write_yaml(toy_spec))


def test_malformed_yaml_and_missing_file(toy_registry, write_yaml, tmp_path):
    with pytest.raises(SpecError, match=r"malformed YAML: line 3, column 1"):
        load_spec(write_yaml("name: x\nbackbone: [unclosed\n"))
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="expected a mapping at the top level"):
        load_spec(write_yaml("- a\n- b\n"))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: a\nseed: 1\nname: b\n", "line 3, column 1: duplicate key 'name' (first on line 1)"),
        (
            "optim:\n  lr: 1.0e-3\n  warmup_steps: 5\n  lr: 1.0\n",
            "line 4, column 3: duplicate key 'lr' (first on line 2)",
        ),
        ("objectives: {o: {weight: 1, weight: 2}}\n", "line 1, column 29: duplicate key 'weight' (first on line 1)"),
    ],
)
def test_a_key_written_twice_is_one_line_not_the_last_one_silently(write_yaml, text, where):
    with pytest.raises(SpecError) as err:
        load_spec(write_yaml(text))
    assert str(err.value).endswith(f"malformed YAML: {where}") and len(str(err.value).splitlines()) == 1, err.value
    with pytest.raises(SpecError, match="duplicate key 'lr'"):
        apply_overrides({}, ["optim={lr: 1, lr: 2}"])


def test_anchors_and_merge_keys_work_and_an_explicit_key_overrides_a_merged_one(toy_registry, toy_spec, write_yaml):
    raw = yaml.safe_dump(toy_spec, sort_keys=False)
    text = raw + "optim:\n  <<: &fast {lr: 1.0e-3, warmup_steps: 5}\n  lr: 2.0e-3\n"
    spec = load_spec(write_yaml(text))
    assert spec.optim.lr == 2.0e-3 and spec.optim.warmup_steps == 5


def test_base_inheritance_and_deletion(toy_registry, toy_spec, write_yaml):
    write_yaml(toy_spec, "base.yaml")
    child = write_yaml(
        {
            "base": "base.yaml",
            "name": "child",
            "optim": {"lr": 1e-4},
            "objectives": {"cqt_recon": None},
            "teachers": {"cqt": None},
        },
        "child.yaml",
    )
    spec = load_spec(child)
    assert spec.name == "child" and spec.optim.lr == 1e-4
    assert list(spec.teachers) == ["rvq"] and list(spec.objectives) == ["rvq_pred"]


def test_inheritance_cycle(toy_registry, write_yaml):
    write_yaml({"base": "b.yaml"}, "a.yaml")
    b = write_yaml({"base": "a.yaml"}, "b.yaml")
    with pytest.raises(SpecError, match="inheritance cycle"):
        load_spec(b)


def test_overrides_parse_values_as_yaml(toy_registry, toy_spec, write_yaml):
    spec = load_spec(
        write_yaml(toy_spec),
        [
            "optim.lr=1e-4",
            "teachers.rvq.params.n_codebooks=4",
            "trainer.precision='bf16-mixed'",
            "data.extensions=[.wav]",
        ],
    )
    assert spec.optim.lr == 1e-4 and spec.teachers["rvq"].params["n_codebooks"] == 4
    assert spec.trainer.precision == "bf16-mixed" and spec.data.extensions == [".wav"]


def test_precision_given_as_a_number(toy_registry, toy_spec, write_yaml):
    assert load_spec(write_yaml(toy_spec), ["trainer.precision=32"]).trainer.precision == "32"
    with pytest.raises(SpecError, match="trainer.precision"):
        load_spec(write_yaml(toy_spec), ["trainer.precision=64"])


def test_bad_overrides(toy_registry, toy_spec, write_yaml):
    path = write_yaml(toy_spec)
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(path, ["optim.lr"])
    with pytest.raises(SpecError, match="cannot override inside name"):
        load_spec(path, ["name.x=1"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lr=st.floats(1e-6, 1.0, allow_nan=False),
    seed=st.integers(0, 2**31),
    weight=st.floats(0, 100, allow_nan=False),
    n_bins=st.integers(1, 512),
    magnitude=st.sampled_from(["linear", "log"]),
    clip=st.floats(0, 100),
    # any text but NUL, which specs reject everywhere (tested with the spec hardening)
    tags=st.dictionaries(
        st.text("abc_", min_size=1, max_size=5),
        st.text(st.characters(blacklist_characters="\x00"), max_size=8),
        max_size=3,
    ),
)
def test_resolved_spec_round_trips_through_yaml(
    toy_registry, toy_spec, tmp_path, lr, seed, weight, n_bins, magnitude, clip, tags
):
    toy_spec.update(seed=seed, optim={"lr": lr, "grad_clip": clip}, tracking={"tags": tags})
    toy_spec["objectives"]["rvq_pred"]["weight"] = weight
    toy_spec["teachers"]["cqt"]["params"] = {"n_bins": n_bins, "magnitude": magnitude}
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(toy_spec))
    spec = load_spec(first)
    again = tmp_path / "again.yaml"
    again.write_text(dump_spec(spec))
    assert load_spec(again) == spec


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=3),
        lambda kids: st.dictionaries(st.text("ab", min_size=1, max_size=2), kids, max_size=3),
        max_leaves=8,
    ),
    st.dictionaries(st.text("ab", min_size=1, max_size=2), st.integers(), max_size=3),
)
def test_deep_merge_properties(base, override):
    base = base if isinstance(base, dict) else {}
    merged = deep_merge(base, override)
    for key, value in override.items():
        assert merged[key] == value
    for key in base:
        if key not in override:
            assert merged[key] == base[key]


def test_apply_overrides_creates_nested_keys():
    assert apply_overrides({}, ["a.b.c=3"]) == {"a": {"b": {"c": 3}}}
    assert apply_overrides({"a": {"b": 1, "c": 2}}, ["a.b=null"]) == {"a": {"c": 2}}


def test_spec_json_schema_exports():
    schema = ExperimentSpec.model_json_schema()
    assert "backbone" in schema["properties"] and "objectives" in schema["required"]


# --------------------------------------------------------------------------- any bytes: one line
def validate_cli(path, *overrides, capsys):
    from mertlab.cli import main

    code = main(["validate", str(path), *(x for o in overrides for x in ("-o", o))])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def test_non_utf8_spec_is_one_line_naming_the_file(toy_registry, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"\x00\x01\xff\xfegarbage: [\n")
    code, err, _ = validate_cli(path, capsys=capsys)
    assert code == 1 and err == [f"error: {path}: not UTF-8 text: byte 0xff at offset 2 (a spec is a UTF-8 YAML file)"]


def test_nesting_deeper_than_the_limit_in_a_file_or_an_override(toy_registry, toy_spec, write_yaml, tmp_path, capsys):
    from mertlab.experiment.spec import MAX_NESTING

    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000)
    code, err, _ = validate_cli(deep, capsys=capsys)
    assert code == 1 and len(err) == 1 and f"nested deeper than {MAX_NESTING} levels" in err[0]
    path = write_yaml(toy_spec)
    for value in ("[" * 5000, "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), "{a: " * 40 + "1" + "}" * 40):
        code, err, _ = validate_cli(path, f"description={value}", capsys=capsys)
        assert code == 1 and len(err) == 1, err
        assert err[0].startswith(f"error: {path}: description: nested deeper than {MAX_NESTING} levels"), err
    # in the file itself, with the field named
    toy_spec["tracking"] = {"tags": {"x": "y"}}
    text = yaml.safe_dump(toy_spec) + "description: " + "[" * 100 + "]" * 100 + "\n"
    code, err, _ = validate_cli(write_yaml(text, "nested.yaml"), capsys=capsys)
    assert code == 1 and len(err) == 1 and ": description: nested deeper than" in err[0], err
    # nesting within the limit is an ordinary value error
    code, err, _ = validate_cli(path, "description=" + "[" * 5 + "]" * 5, capsys=capsys)
    assert code == 1 and err == [f"error: {path}: description: Input should be a valid string"]


def test_too_many_values_through_yaml_aliases(toy_registry, toy_spec, write_yaml, capsys):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10**9 values
    text = yaml.safe_dump(toy_spec) + "\n".join(lines) + "\n"
    code, err, _ = validate_cli(write_yaml(text), capsys=capsys)
    assert code == 1 and len(err) == 1 and "holds more than" in err[0], err


@pytest.mark.parametrize("key", ["seed", "trainer.max_steps", "optim.lr", "data.batch_size", "probe.seed"])
def test_a_boolean_is_not_a_number(toy_registry, toy_spec, write_yaml, capsys, key):
    toy_spec["probe"] = {"tasks": ["t.csv"]}
    code, err, _ = validate_cli(write_yaml(toy_spec), f"{key}=true", capsys=capsys)
    assert code == 1 and len(err) == 1 and f"{key}: Value error, expected a number, got the boolean true" in err[0]
    assert load_spec(write_yaml(toy_spec), [f"{key}=1"])  # a number is fine


def test_validate_checks_that_output_dir_can_be_written(toy_registry, toy_spec, write_yaml, tmp_path, capsys):
    path = write_yaml(toy_spec)
    code, err, _ = validate_cli(path, "trainer.output_dir=/proc/x", capsys=capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith("error: trainer.output_dir: cannot write to /proc/x")
    (tmp_path / "file").write_text("")
    code, err, _ = validate_cli(path, f"trainer.output_dir={tmp_path / 'file' / 'runs'}", capsys=capsys)
    assert code == 1 and err == [
        f"error: trainer.output_dir: cannot create {tmp_path / 'file' / 'runs'}: {tmp_path / 'file'} is not a folder"
    ]
    new = tmp_path / "new" / "runs"
    code, err, out = validate_cli(path, f"trainer.output_dir={new}", capsys=capsys)
    assert code == 0 and "name: toy" in out and not (tmp_path / "new").exists()  # checked, nothing created
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mertlab-write-check")]


@given(weights=st.lists(st.sampled_from([0, 0.0, 0.5, 2]), min_size=1, max_size=3))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_weight_zero_is_one_line_any_weight_above_zero_loads(toy_registry, toy_spec, write_yaml, weights):
    objective = toy_spec["objectives"]["cqt_recon"]  # the fixture is shared by the examples: copied
    path = write_yaml({**toy_spec, "objectives": {f"o{i}": {**objective, "weight": w} for i, w in enumerate(weights)}})
    if any(weights):
        assert [o.weight for o in load_spec(path).objectives.values()] == weights
        return
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert problems(err.value) == {
        "objectives": "every objective has weight 0, so loss/total is 0 and nothing would learn; give at least one a "
        "weight above 0 (a weight of 0 leaves one objective out of the loss)"
    }


@pytest.mark.parametrize("key", ["../x", ".", "optim..lr", "optim.lr.", " .lr"])
def test_an_override_key_with_an_empty_part_names_the_override(key):
    with pytest.raises(SpecError) as err:
        apply_overrides({}, [f"{key}=1"])
    assert str(err.value) == (
        f"override '{key}=1': KEY must be dotted field names without an empty part, e.g. optim.lr"
    ), err.value
