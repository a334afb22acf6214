"""``mertlab export CKPT --format hf OUT``: share a pre-trained backbone as a Hugging Face model.

The backbone writes its own format (:meth:`Backbone.save_hf`: ``config.json`` +
``model.safetensors`` for the ``transformer``, loadable by ``transformers.HubertModel``); this
module adds the model card (``README.md``): the resolved spec and the probe scores
(``probe/*`` metrics) found on the checkpoint's MLflow run. The checkpoint (a training
checkpoint or a backbone file) is read weights-only (:mod:`mertlab.toolkit.safe_load`): exporting a
file from elsewhere never runs code hidden in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mertlab.errors import MertlabError
from mertlab.probe.run import checkpoint_tracking
from mertlab.toolkit.atomic import atomic_write
from mertlab.toolkit.checkpoint import check_not_sharded, hf_directory, load_backbone, load_checkpoint_file
from mertlab.toolkit.safe_load import is_safetensors

FORMATS = ("hf",)


def probe_scores(checkpoint: Path) -> dict[str, float]:
    """The ``probe/*`` metrics of the checkpoint's MLflow run ({} when it has no run or store)."""

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


def training_details(checkpoint: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(resolved spec, MLflow run id)`` of a training checkpoint; ``(None, None)`` for a
    backbone file. Read weights-only and memory-mapped (the weights are not read)."""
    if is_safetensors(checkpoint):  # a backbone file (save_backbone): no spec, no run
        return None, None
    ckpt = load_checkpoint_file(checkpoint, mmap=True)
    if not isinstance(ckpt, dict):
        return None, None
    spec, run_id = ckpt.get("mertlab_spec"), ckpt.get("mlflow_run_id")
    return (spec if isinstance(spec, dict) else None), (run_id if isinstance(run_id, str) else None)


def model_card(spec_yaml: str | None, scores: dict[str, float], run_id: str | None) -> str:
    """README.md of the exported directory: what it is, how to load it, the spec, the scores."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [audio, music, self-supervised, mert, hubert]",
        "---",
        "",
        "# mertlab pre-trained music-audio backbone",
        "",
        "A `HubertModel`-compatible encoder pre-trained with mertlab in the style of "
        "MERT (Li et al., 2023, https://arxiv.org/abs/2306.00107).",
        "",
        "```python",
        "from transformers import HubertModel",
        'model = HubertModel.from_pretrained("path/to/this/folder")',
        "hidden = model(wav, output_hidden_states=True).hidden_states  # wav: [batch, samples] at config.sample_rate",
        "```",
        "",
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


def check_finite_weights(state: dict[str, Any], checkpoint: Path) -> None:
    """One error naming ``checkpoint`` when a weight holds NaN or inf (a diverged run): such a
    model would be shared silently broken."""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in state.items() if t.is_floating_point()}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        first = next(iter(bad))
        raise MertlabError(
            f"{checkpoint}: {sum(bad.values())} non-finite backbone weight(s) in {len(bad)} tensor(s) (e.g. {first}); "
            "not exported -- export an earlier checkpoint of the run"
        )


def export(checkpoint: str | Path, out: str | Path, fmt: str = "hf", registry: Any = None) -> Path:
    """Export the backbone of ``checkpoint`` (training checkpoint or backbone file) to ``out``."""
    if fmt not in FORMATS:
        raise MertlabError(f"--format: {fmt!r} is not supported (expected one of {', '.join(FORMATS)})")
    checkpoint, out = Path(checkpoint), Path(out)
    check_not_sharded(checkpoint)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MertlabError(f"{out}: not empty; export into a new folder")
    backbone = load_backbone(checkpoint, registry=registry)
    check_finite_weights(backbone.state_dict(), checkpoint)
    # an hf:DIR source (see load_backbone) has no training spec or run
    spec, run_id = training_details(checkpoint) if hf_directory(checkpoint) is None else (None, None)
    spec_yaml = None
    if spec is not None:
        import yaml

        spec_yaml = yaml.safe_dump(spec, sort_keys=False)
    backbone.save_hf(out)
    scores = probe_scores(checkpoint) if run_id else {}
    card = model_card(spec_yaml, scores, run_id).encode()
    atomic_write(out / "README.md", lambda f: f.write(card))
    return out
