"""Downstream probing of frozen backbone features (MARBLE protocol).

* :mod:`.extract` -- clip-level features per layer (windowed, mean-pooled), saved as ``.npz``;
* :mod:`.task`    -- the user's labelled audio: a CSV ``path,label[,split]`` (or a YAML pointing to one);
* :mod:`.fit`     -- MLP probes per layer and on a learnable weighted sum of layers;
* :mod:`.metrics` -- accuracy, ROC-AUC / average precision, R², and the input-independent baseline;
* :mod:`.baselines` -- handcrafted clip features (MFCC, chroma, CQT) probed like a layer;
* :mod:`.frames`  -- frame features of whole files, window by window, and their clip pooling;
* :mod:`.cache`   -- the on-disk feature cache (checkpoint content hash + audio + window);
* :mod:`.plots`   -- score-by-layer figures (one run; all children of a sweep);
* :mod:`.run`     -- ``mertlab probe``: all of the above, a report table and MLflow logging;
* :mod:`.experiment` -- a spec's ``probe:`` section (``probe_spec_tasks``), for train and sweep.
"""
from mertlab.probe.extract import FeatureSet, extract_features
from mertlab.probe.fit import ProbeParams, ProbeReport, ProbeResult, probe_task
from mertlab.probe.task import Task, TaskError, load_task

__all__ = [
    "FeatureSet", "ProbeParams", "ProbeReport", "ProbeResult", "Task", "TaskError",
    "extract_features", "load_task", "probe_task",
]
