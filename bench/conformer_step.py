"""Train step of our ``conformer`` blocks vs ``torchaudio.models.Conformer`` of the same size.

Both stacks get the same ``[B, T, hidden]`` input (the frames our log-mel + conv subsampling
front end would give: 25 Hz at the presets' hop), the same depth, width, heads, feed-forward
width and depthwise kernel, dropout as configured; ours without rotary positions
(``pos_encoding: none``) since torchaudio's blocks have none. Forward, loss = mean square of
the output, backward, AdamW; fp32 on CPU; peak memory as the resident-set growth of one step.

    .venv/bin/python bench/conformer_step.py [--quick] [--presets tiny,small] [--repeats 5] [--profile]
"""

from __future__ import annotations

import torch

from _timing import interleaved, parser, peak_rss_delta, ratio_line, setup, table, top_ops, train_step
from mertlab.plugin_system.registry import get_registry


class OurBlocks(torch.nn.Module):
    """The conformer backbone's blocks alone (its front end is not part of the comparison)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.layers = backbone.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(x.shape[:2], dtype=torch.bool)
        for layer in self.layers:
            x, _ = layer(x, pad, None, False)
        return x


def main() -> None:
    import torchaudio

    p = parser(__doc__)
    p.add_argument("--presets", default="tiny,small", help="Comma-separated conformer presets (tiny, small, base).")
    p.add_argument("--profile", action="store_true", help="Also print torch.profiler's top ops of each step.")
    args = p.parse_args()
    setup(args)
    rows = []
    for preset in ["tiny"] if args.quick else args.presets.split(","):
        backbone = get_registry().build("backbone", "conformer", {"preset": preset, "pos_encoding": "none"})
        q = backbone.params
        ours = OurBlocks(backbone).train()
        peer = torchaudio.models.Conformer(
            input_dim=q.hidden_dim,
            num_heads=q.num_heads,
            ffn_dim=q.ffn_dim,
            num_layers=q.num_layers,
            depthwise_conv_kernel_size=q.conv_kernel,
            dropout=q.dropout,
        ).train()
        clips, seconds = (1, 2.0) if args.quick else (2, 10.0)
        frames = int(seconds * backbone.frame_rate)
        x = torch.randn(clips, frames, q.hidden_dim)
        lengths = torch.full((clips,), frames)
        contenders = {
            "ours": train_step(ours, lambda ours=ours, x=x: ours(x).pow(2).mean()),
            "torchaudio": train_step(peer, lambda peer=peer, x=x, lengths=lengths: peer(x, lengths)[0].pow(2).mean()),
        }
        t = interleaved(contenders, args.repeats)
        memory = {name: peak_rss_delta(fn)[1] / 2**20 for name, fn in contenders.items()}
        if args.profile:
            for name, fn in contenders.items():
                top_ops(fn, f"{name}, {preset}")
        params = {
            name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in (("ours", ours), ("torchaudio", peer))
        }
        rows.append(
            [
                preset,
                f"{clips} x {frames} frames",
                f"{params['ours']:.1f}M / {params['torchaudio']:.1f}M",
                t["ours"],
                t["torchaudio"],
                memory["ours"],
                memory["torchaudio"],
            ]
        )
        ratio_line(f"conformer train step vs torchaudio Conformer, {preset}", t["ours"], t["torchaudio"])
    print()
    table(
        ["preset", "input", "params ours / ta", "ours s/step", "torchaudio s/step", "ours peak MiB", "ta peak MiB"],
        rows,
    )


if __name__ == "__main__":
    main()
