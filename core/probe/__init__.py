"""Downstream probing of frozen backbone features (MARBLE protocol).

* :mod:`.extract` -- clip-level features per layer (windowed, mean-pooled), saved as ``.npz``;
* :mod:`.task`    -- the user's labelled audio: a CSV ``path,label[,split]`` (or a YAML pointing to one);
* :mod:`.fit`     -- MLP probes per layer and on a learnable weighted sum of layers;
* :mod:`.metrics` -- accuracy, ROC-AUC / average precision, R², and the input-independent baseline;
* :mod:`.uncertainty` -- bootstrap intervals over test clips, paired tests between probes (McNemar, bootstrap);
* :mod:`.baselines` -- handcrafted clip features (MFCC, chroma, CQT) probed like a layer;
* :mod:`.frames`  -- frame features of whole files, window by window, and their clip pooling;
* :mod:`.cache`   -- the on-disk feature cache (checkpoint content hash + audio + window);
* :mod:`.plots`   -- score-by-layer figures (one run; all children of a sweep);
* :mod:`.run`     -- ``mertlab probe``: all of the above, a report table and MLflow logging;
* :mod:`.experiment` -- a spec's ``probe:`` section (``probe_spec_tasks``), for train and sweep.
"""

from importlib import import_module
from typing import Any

#: Public names, imported on first use (PEP 562) so that `mertlab validate` of a spec with a
#: `probe:` section does not load the audio stack.
_EXPORTS = {
    "FeatureSet": "extract",
    "extract_features": "extract",
    "ProbeParams": "fit",
    "ProbeReport": "fit",
    "ProbeResult": "fit",
    "probe_task": "fit",
    "Task": "task",
    "TaskError": "task",
    "load_task": "task",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mertlab.probe' has no attribute {name!r}")
    return getattr(import_module(f"mertlab.probe.{_EXPORTS[name]}"), name)
