"""``mertlab export CKPT --format hf OUT``: share a pre-trained backbone as a Hugging Face model.

The backbone writes its own format (:meth:`Backbone.save_hf`: ``config.json`` +
``model.safetensors`` for the ``transformer``, loadable by ``transformers.HubertModel``); this
module adds the model card (``README.md``): the resolved spec and the probe scores
(``probe/*`` metrics) found on the checkpoint's MLflow run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mertlab.checkpoint import load_backbone
from mertlab.errors import MertlabError

FORMATS = ("hf",)


def probe_scores(checkpoint: Path) -> dict[str, float]:
    """The ``probe/*`` metrics of the checkpoint's MLflow run ({} when it has no run or store)."""
    from mertlab.probe.run import checkpoint_tracking

    run_id, tracking_uri, _ = checkpoint_tracking(checkpoint)
    if not run_id:
        return {}
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        metrics = MlflowClient(tracking_uri).get_run(run_id).data.metrics
    except MlflowException:
        return {}
    return {k: v for k, v in sorted(metrics.items()) if k.startswith("probe/")}


def model_card(spec_yaml: str | None, scores: dict[str, float], run_id: str | None) -> str:
    """README.md of the exported directory: what it is, how to load it, the spec, the scores."""
    lines = [
        "---", "library_name: transformers", "tags: [audio, music, self-supervised, mert, hubert]", "---", "",
        "# mertlab pre-trained music-audio backbone", "",
        "A `HubertModel`-compatible encoder pre-trained with mertlab in the style of "
        "MERT (Li et al., 2023, https://arxiv.org/abs/2306.00107).", "",
        "```python", "from transformers import HubertModel",
        "model = HubertModel.from_pretrained(\"path/to/this/folder\")",
        "hidden = model(wav, output_hidden_states=True).hidden_states  # wav: [batch, samples] at config.sample_rate",
        "```", "",
    ]
    if run_id:
        lines += [f"MLflow run: `{run_id}`.", ""]
    lines += ["## Probe scores", ""]
    if scores:
        lines += ["| metric | value |", "| --- | --- |", *(f"| `{k}` | {v:.4g} |" for k, v in scores.items()), ""]
    else:
        lines += ["No probe scores were found on the training run (`mertlab probe CKPT TASK` logs them).", ""]
    if spec_yaml:
        lines += ["## Training spec", "", "```yaml", spec_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def export(checkpoint: str | Path, out: str | Path, fmt: str = "hf", registry: Any = None) -> Path:
    """Export the backbone of ``checkpoint`` (training checkpoint or backbone file) to ``out``."""
    if fmt not in FORMATS:
        raise MertlabError(f"--format: {fmt!r} is not supported (expected one of {', '.join(FORMATS)})")
    checkpoint, out = Path(checkpoint), Path(out)
    if checkpoint.is_dir():
        raise MertlabError(
            f"{checkpoint}: a sharded (fsdp) checkpoint; consolidate it first: "
            f"python -m lightning.pytorch.utilities.consolidate_checkpoint {checkpoint}"
        )
    if out.exists() and any(out.iterdir()):
        raise MertlabError(f"{out}: not empty; export into a new folder")
    backbone = load_backbone(checkpoint, registry=registry)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    spec_yaml = None
    if "mertlab_spec" in ckpt:
        import yaml

        spec_yaml = yaml.safe_dump(ckpt["mertlab_spec"], sort_keys=False)
    backbone.save_hf(out)
    (out / "README.md").write_text(model_card(spec_yaml, probe_scores(checkpoint), ckpt.get("mlflow_run_id")))
    return out
