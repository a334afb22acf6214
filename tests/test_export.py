"""`mertlab export CKPT --format hf OUT`: a HubertModel directory with a model card."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.experiment.spec import resolve_spec
from mertlab.plugin_system.registry import get_registry
from test_hf_compat import assert_states_match, hf_hidden_states

transformers = pytest.importorskip("transformers")


def training_checkpoint(tmp_path, tracking_uri, backbone_params: dict) -> tuple:
    """A training checkpoint as `mertlab train` writes it (spec, backbone.* weights, MLflow run
    with a probe score on it)."""
    spec = resolve_spec(
        {
            "name": "export",
            "backbone": {"name": "transformer", "params": backbone_params},
            "teachers": {"cqt": {"name": "cqt", "params": {"n_bins": 24, "bins_per_octave": 4}}},
            "objectives": {"cqt_recon": {"name": "masked_regression", "teacher": "cqt"}},
            "tracking": {"tracking_uri": tracking_uri},
        }
    )
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", "transformer", spec.backbone.params)
    with torch.no_grad():  # non-trivial norms and biases, so a mismatched tensor cannot hide
        for name, p in backbone.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment(f"export-{len(str(tmp_path))}-{tmp_path.name}")).info.run_id
    client.log_metric(run_id, "probe/gtzan/accuracy", 0.625)
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "mertlab_spec": spec.model_dump(mode="json"),
            "state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
            "mlflow_run_id": run_id,
            "global_step": 10,
        },
        path,
    )
    return path, backbone.eval(), run_id


@pytest.mark.parametrize(
    "params",
    [
        {"preset": "tiny"},
        {"preset": "tiny", "layer_norm_first": True, "extractor_mode": "layer_norm", "attention_relax": 32.0},
    ],
)
def test_export_round_trips_through_transformers(tmp_path, tracking_uri, capsys, params):
    ckpt, ours, run_id = training_checkpoint(tmp_path, tracking_uri, params)
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), "--format", "hf", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model_type"] == "hubert"
    hf = transformers.HubertModel.from_pretrained(out).eval()
    wav = torch.randn(2, 8000)
    with torch.no_grad():
        assert_states_match(ours(wav).hidden_states, hf_hidden_states(hf, wav), atol=1e-5)
    card = (out / "README.md").read_text()
    assert "| `probe/gtzan/accuracy` | 0.625 |" in card and run_id in card
    assert "## Training spec" in card and "name: transformer" in card


def test_export_refuses_a_non_empty_folder_and_an_unknown_backbone_format(tmp_path, tracking_uri, capsys):
    ckpt, _, _ = training_checkpoint(tmp_path, tracking_uri, {"preset": "tiny"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["export", str(ckpt), str(tmp_path / "full")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep me"

    from mertlab.toolkit.checkpoint import save_backbone

    conformer = get_registry().build("backbone", "conformer", {"preset": "tiny"})
    path = save_backbone(tmp_path / "conformer.pt", conformer)
    assert main(["export", str(path), str(tmp_path / "c")]) == 1
    assert "backbone 'conformer' has no Hugging Face format" in capsys.readouterr().err


def test_export_names_a_sharded_checkpoint_and_reads_checkpoints_weights_only(tmp_path, tracking_uri, capsys):
    folder = tmp_path / "sharded" / "last.ckpt"
    folder.mkdir(parents=True)
    torch.save({"global_step": 4}, folder / "meta.pt")
    assert main(["export", str(folder), str(tmp_path / "out")]) == 1
    assert "consolidate it into one file first" in capsys.readouterr().err

    ckpt, _, _ = training_checkpoint(tmp_path, tracking_uri, {"preset": "tiny"})
    state = torch.load(ckpt, weights_only=False)
    state["extra"] = print  # a Python object: could run code when unpickled
    torch.save(state, ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 1
    assert "refused to load" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "params, field",
    [({"preset": "tiny", "deepnorm": True}, "deepnorm"), ({"preset": "tiny", "frontend": "mel"}, "frontend")],
)
def test_export_refuses_what_hubert_model_cannot_represent(tmp_path, tracking_uri, capsys, params, field):
    ckpt, _, _ = training_checkpoint(tmp_path, tracking_uri, params)
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), "--format", "hf", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"backbone.params.{field}: " in err and "no Hugging Face HubertModel" in err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_every_transformer_field_is_either_exported_or_refused():
    """A new backbone field must be placed in the export mapping: an unknown one is refused."""
    from mertlab.plugins.backbones.transformer import hf
    from mertlab.plugins.backbones.transformer.params import TransformerParams

    groups = [set(hf.HF_CONFIG_KEYS), hf.CONVERTED_FIELDS, hf.NO_MODEL_EFFECT, set(hf.HUBERT_FIXED)]
    assert set.union(*map(set, groups)) == set(TransformerParams.model_fields)
    assert sum(map(len, groups)) == len(TransformerParams.model_fields)  # each in one group only
    assert hf.hubert_problem(TransformerParams(preset="large")) is None

    class Extended(TransformerParams):
        rotary: bool = False

    assert "backbone.params.rotary: the Hugging Face export does not know" in hf.hubert_problem(Extended())
