"""Train step of our ``transformer`` backbone vs ``transformers.HubertModel`` of the same config.

The HF model is built from ``hf_config_from_params`` of our params (the mapping ``mertlab
export --format hf`` uses) and loads our weights, so both compute the same function (checked in
eval mode). Each step: forward of a batch of audio, loss = mean square of the last hidden state,
backward, AdamW; fp32 on CPU, layer drop off and HF's SpecAugment off (``mask_time_prob=0``) so
both do the same work every step. Peak memory: the resident-set growth during one step.

Target: >= 1.2x HF at small and base with peak memory <= HF's.

    .venv/bin/python bench/backbone_step.py [--quick] [--presets tiny,small] [--base] [--repeats 5] [--profile]
"""

from __future__ import annotations

import torch

from _timing import interleaved, parser, peak_rss_delta, ratio_line, setup, table, top_ops, train_step
from mertlab.plugin_system.registry import get_registry

#: (clips, seconds) per preset
BATCHES = {"tiny": (2, 2.0), "small": (2, 5.0), "base": (1, 5.0)}


def transformer_pair(preset: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(ours, hf)``: our backbone built by name as the CLI does, and a HubertModel of the same
    config holding the same weights."""
    import transformers

    from mertlab.plugins.backbones.transformer.hf import hf_config_from_params

    ours = get_registry().build("backbone", "transformer", {"preset": preset, "layer_drop": 0.0})
    config = transformers.HubertConfig(**hf_config_from_params(ours.params), mask_time_prob=0.0)
    hf = transformers.HubertModel(config)
    # HubertModel has no mask embedding when its own masking is off (ours masks in the train loop)
    state = {k: v for k, v in ours.state_dict().items() if k != "masked_spec_embed"}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map: missing {missing[:3]}, unexpected {unexpected[:3]}")
    ours.eval(), hf.eval()
    with torch.no_grad():
        wav = torch.randn(1, 16000)
        diff = (ours(wav).hidden_states[-1] - hf(wav).last_hidden_state).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"our backbone and HubertModel disagree by {diff:.2e}")
    return ours.train(), hf.train()


def steps(ours: torch.nn.Module, hf: torch.nn.Module, wav: torch.Tensor) -> dict[str, callable]:
    """Train-step closures of both, on the same batch."""
    return {
        "ours": train_step(ours, lambda: ours(wav).hidden_states[-1].pow(2).mean()),
        "hf": train_step(hf, lambda: hf(wav).last_hidden_state.pow(2).mean()),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--presets", default="tiny,small", help="Comma-separated presets (tiny, small, base).")
    p.add_argument("--base", action="store_true", help="Also the base preset (MERT-95M; slow on CPU).")
    p.add_argument("--profile", action="store_true", help="Also print torch.profiler's top ops of each step.")
    args = p.parse_args()
    setup(args)
    presets = ["tiny"] if args.quick else args.presets.split(",") + (["base"] if args.base else [])
    rows = []
    for preset in presets:
        clips, seconds = (1, 1.0) if args.quick else BATCHES[preset]
        ours, hf = transformer_pair(preset)
        wav = torch.randn(clips, int(seconds * ours.sample_rate))
        contenders = steps(ours, hf, wav)
        t = interleaved(contenders, args.repeats)
        memory = {name: peak_rss_delta(fn)[1] / 2**20 for name, fn in contenders.items()}
        if args.profile:
            for name, fn in contenders.items():
                top_ops(fn, f"{name}, {preset}")
        rows.append([preset, f"{clips} x {seconds:g} s", t["ours"], t["hf"], memory["ours"], memory["hf"]])
        ratio_line(f"transformer train step vs HubertModel, {preset}", t["ours"], t["hf"], target=1.2)
        print(
            f"RATIO peak memory HubertModel / ours, {preset}: {memory['hf'] / max(memory['ours'], 1e-9):.2f}x "
            f"(ours {memory['ours']:.0f} MiB, HF {memory['hf']:.0f} MiB; >= 1: ours uses no more)"
        )
    print()
    table(["preset", "batch", "ours s/step", "HF s/step", "ours peak MiB", "HF peak MiB"], rows)


if __name__ == "__main__":
    main()
