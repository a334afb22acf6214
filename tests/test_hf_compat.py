"""Hugging Face compatibility of the ``transformer`` backbone against real ``transformers.HubertModel``s:
same state_dict keys, same hidden states after loading a saved directory, same parameter counts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_support import tiny_hubert
from mertlab.errors import MertlabError
from mertlab.plugins.backbones.transformer import TransformerBackbone, TransformerParams
from mertlab.plugins.backbones.transformer.hf import (
    HF_DEFAULTS,
    hf_config_from_params,
    params_from_hf_config,
)

transformers = pytest.importorskip("transformers")
HubertConfig, HubertModel = transformers.HubertConfig, transformers.HubertModel


def tiny_hf(tmp_path, **config) -> tuple[HubertModel, TransformerBackbone]:
    """A random tiny HubertModel saved to ``tmp_path`` and our backbone loaded from it."""
    hf = tiny_hubert(**config)
    with torch.no_grad():  # non-trivial norms/biases so a mismatched tensor cannot hide
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    return hf, TransformerBackbone.load_hf(tmp_path)


def hf_hidden_states(hf: HubertModel, wav, **kwargs) -> list[torch.Tensor]:
    """HF's output_hidden_states with the last entry = last_hidden_state (equal for post-LN;
    for pre-LN it adds the final LayerNorm, which our last hidden state includes)."""
    out = hf(wav, output_hidden_states=True, **kwargs)
    states = list(out.hidden_states)
    if not hf.config.do_stable_layer_norm:
        torch.testing.assert_close(states[-1], out.last_hidden_state, atol=0, rtol=0)
    states[-1] = out.last_hidden_state
    return states


def assert_states_match(ours, theirs, atol=1e-5):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5, msg=lambda m, i=i: f"hidden state {i}: {m}")


CASES = [(False, "group"), (False, "layer"), (True, "layer"), (True, "group")]


@pytest.mark.parametrize(("stable", "norm"), CASES, ids=[f"stable={s}-{n}" for s, n in CASES])
def test_loaded_hf_model_gives_identical_hidden_states(tmp_path, stable, norm):
    hf, ours = tiny_hf(tmp_path, do_stable_layer_norm=stable, feat_extract_norm=norm)
    assert list(ours.state_dict()) == list(hf.state_dict())
    assert ours.params.layer_norm_first is stable
    assert ours.params.extractor_mode == {"group": "group_norm", "layer": "layer_norm"}[norm]
    torch.manual_seed(1)
    wav = torch.randn(3, 8000)
    lengths = torch.tensor([8000, 6100, 4000])
    attention_mask = (torch.arange(8000)[None, :] < lengths[:, None]).long()
    frame_mask = torch.rand(3, ours.num_frames(8000)) < 0.4
    with torch.no_grad():
        assert_states_match(ours(wav).hidden_states, hf_hidden_states(hf, wav))
        # Padded batch: HF's attention_mask <-> our lengths (padded frames zeroed, keys masked).
        assert_states_match(ours(wav, lengths).hidden_states, hf_hidden_states(hf, wav, attention_mask=attention_mask))
        # Mask embedding: HF's mask_time_indices <-> our frame_mask.
        assert_states_match(
            ours(wav, lengths, frame_mask).hidden_states,
            hf_hidden_states(hf, wav, attention_mask=attention_mask, mask_time_indices=frame_mask),
        )


def test_mert_attention_relax_config_loads_relaxed_and_matches(tmp_path):
    # MERT-330M's config.json carries attention_relax=32; HubertModel ignores it, and relaxed
    # attention is exactly equivalent in fp32, so outputs must still match.
    hf, _ = tiny_hf(tmp_path, do_stable_layer_norm=True, feat_extract_norm="layer")
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(attention_relax=32.0, sample_rate=16000)
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = TransformerBackbone.load_hf(tmp_path)
    assert ours.params.attention_relax == 32.0 and ours.frame_rate == 50.0
    wav = torch.randn(2, 6000)
    with torch.no_grad():
        assert_states_match(ours(wav).hidden_states, hf_hidden_states(hf, wav))


def test_legacy_weight_norm_keys_task_prefix_and_bin_format(tmp_path):
    hf, _ = tiny_hf(tmp_path / "base")
    state = load_file(tmp_path / "base" / "model.safetensors")
    legacy = {}
    for key, value in state.items():
        key = key.replace("conv.parametrizations.weight.original0", "conv.weight_g")
        key = key.replace("conv.parametrizations.weight.original1", "conv.weight_v")
        legacy["hubert." + key] = value  # as a HubertForCTC checkpoint stores it
    legacy["lm_head.weight"] = torch.zeros(32, 32)
    (tmp_path / "legacy").mkdir()
    torch.save(legacy, tmp_path / "legacy" / "pytorch_model.bin")
    (tmp_path / "legacy" / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    ours = TransformerBackbone.load_hf(tmp_path / "legacy")
    wav = torch.randn(1, 5000)
    with torch.no_grad():
        assert_states_match(ours(wav).hidden_states, hf_hidden_states(hf, wav))


def test_sharded_checkpoint_and_missing_mask_embedding(tmp_path):
    # mask_time_prob=0: HF builds no masked_spec_embed; loading keeps ours initialised.
    hf = tiny_hubert(mask_time_prob=0.0)
    assert "masked_spec_embed" not in hf.state_dict()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = TransformerBackbone.load_hf(tmp_path)
    wav = torch.randn(1, 5000)
    with torch.no_grad():
        assert_states_match(ours(wav).hidden_states, hf_hidden_states(hf, wav))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(MertlabError, match="no config.json"):
        TransformerBackbone.load_hf(tmp_path)
    tiny_hf(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "conv_pos_batch_norm": True}))
    with pytest.raises(MertlabError, match="conv_pos_batch_norm=True is not supported"):
        TransformerBackbone.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(MertlabError, match="weights do not fit the config"):
        TransformerBackbone.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_attention_heads": 5}))
    with pytest.raises(MertlabError, match="num_heads \\(5\\) must divide hidden_dim \\(32\\)"):
        TransformerBackbone.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(MertlabError, match="no model.safetensors or pytorch_model.bin"):
        TransformerBackbone.load_hf(tmp_path)


def test_hf_defaults_table_matches_transformers():
    config = HubertConfig()
    for key, value in HF_DEFAULTS.items():
        actual = getattr(config, key)
        assert (tuple(actual) if isinstance(actual, list) else actual) == value, key


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "large"])
def test_config_mapping_round_trips(preset):
    params = TransformerParams(preset=preset, deepnorm=preset == "small", activation="gelu_tanh")
    back = params_from_hf_config(hf_config_from_params(params))
    assert back.model_dump(exclude={"preset"}) == params.model_dump(exclude={"preset"})


@pytest.mark.parametrize("preset", ["base", "large"])
def test_preset_parameter_counts_equal_hubert_model(preset):
    params = TransformerParams(preset=preset)
    with torch.device("meta"):
        hf = HubertModel(HubertConfig(**hf_config_from_params(params)))
        ours = TransformerBackbone(params)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf.parameters())
    assert list(ours.state_dict()) == list(hf.state_dict())
    # MERT-95M / MERT-330M scale (HF layout, counting the mask embedding).
    assert (
        {"base": 94_000_000, "large": 315_000_000}[preset] < count < {"base": 95_000_000, "large": 316_000_000}[preset]
    )
