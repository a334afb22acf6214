"""Model FLOPs utilisation of a train step: FLOPs / step time / measured fp32 matmul peak.

FLOPs of one forward + backward are counted by ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions, attention); the step (with AdamW) is timed interleaved with the same
step of ``transformers.HubertModel`` built from the same config (bench/backbone_step.py), and
the peak is the best rate of a large fp32 ``torch.matmul`` measured in the same run. Both
backbones near the same fraction of the peak means a speed-up must come from doing less work
(fusion, fewer copies), not from better GEMMs.

    .venv/bin/python bench/mfu.py [--quick] [--preset small] [--repeats 5]
"""

from __future__ import annotations

import torch

from _timing import flops_of, interleaved, matmul_peak_flops, parser, ratio_line, ratio_value, setup, table
from backbone_step import BATCHES, steps, transformer_pair


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", default="small", help="transformer preset (tiny, small, base).")
    args = p.parse_args()
    setup(args)
    preset = "tiny" if args.quick else args.preset
    clips, seconds = (1, 1.0) if args.quick else BATCHES[preset]
    ours, hf = transformer_pair(preset)
    wav = torch.randn(clips, int(seconds * ours.sample_rate))
    contenders = steps(ours, hf, wav)
    peak = matmul_peak_flops(512 if args.quick else 2048)
    # FlopCounterMode does not count the in-place GEMMs (addmm_) of our CPU conv extractor
    # (plugins/backbones/transformer/channels_last.py): count the same function through its
    # nn.Conv1d path, so both models are credited the FLOPs of the computation they do.
    ours.feature_extractor.channels_last = False
    flops = {
        "ours": flops_of(lambda: ours(wav).hidden_states[-1].pow(2).mean().backward()),
        "hf": flops_of(lambda: hf(wav).last_hidden_state.pow(2).mean().backward()),
    }
    ours.feature_extractor.channels_last = True
    t = interleaved(contenders, args.repeats)
    peak = max(peak, matmul_peak_flops(512 if args.quick else 2048))  # again after the steps: same load
    rows = [
        [
            name,
            f"{flops[name] / 1e9:.2f}",
            t[name],
            f"{flops[name] / t[name] / 1e9:.1f}",
            f"{100 * flops[name] / t[name] / peak:.0f}%",
        ]
        for name in ("ours", "hf")
    ]
    print(f"{preset}, {clips} x {seconds:g} s, fp32; measured matmul peak {peak / 1e9:.1f} GFLOP/s")
    table(["model", "GFLOP/step", "s/step", "GFLOP/s", "MFU"], rows)
    mfu = {name: flops[name] / t[name] / peak for name in ("ours", "hf")}
    ratio_value(
        f"MFU ours / HubertModel, {preset}",
        mfu["ours"] / mfu["hf"],
        f"ours {100 * mfu['ours']:.0f}%, HF {100 * mfu['hf']:.0f}% of the matmul peak",
    )
    ratio_line(f"train step vs HubertModel, {preset}", t["ours"], t["hf"])


if __name__ == "__main__":
    main()
