"""Every metric name mertlab logs, in one place, so dashboards and comparisons stay stable.

Objective metrics: an objective returns keys like ``"acc/cb0"``; they are logged as
``"acc/<objective alias>/cb0"`` (see :func:`objective_metric`). Validation metrics carry the
``val/`` prefix.
"""

from __future__ import annotations

LOSS_TOTAL = "loss/total"
LR = "lr"
GRAD_NORM_TOTAL = "grad_norm/total"
UPDATE_RATIO_TOTAL = "update_ratio/total"
NONFINITE_STEPS = "stability/nonfinite_steps"
SKIPPED_STEPS = "stability/skipped_steps"
#: steps whose optimizer update left a parameter non-finite and was undone (also in the two above)
NONFINITE_UPDATES = "stability/nonfinite_updates"
LOSS_SPIKE_Z = "stability/loss_spike_z"
LOSS_SPIKES = "stability/loss_spikes"
SPIKE_SKIPS = "stability/spike_skips"
ROLLBACKS = "stability/rollbacks"
SKIPPED_FILES = "data/skipped_files"
AUDIO_SECONDS_PER_S = "throughput/audio_seconds_per_s"
SAMPLES_PER_S = "throughput/samples_per_s"
FEATURE_PENALTY = "loss/feature_penalty"
VAL_PREFIX = "val/"


def loss(alias: str) -> str:
    return f"loss/{alias}"


def weighted_loss(alias: str) -> str:
    """``weight x loss`` of one objective: its contribution to ``loss/total``, so an objective
    that dominates the gradient is visible at a glance."""
    return f"loss/{alias}/weighted"


def objective_metric(alias: str, key: str) -> str:
    """``("rvq", "acc/cb0") -> "acc/rvq/cb0"``; a key without a family becomes ``"<key>/<alias>"``."""
    family, _, rest = key.partition("/")
    return f"{family}/{alias}/{rest}" if rest else f"{family}/{alias}"


def grad_norm(block: str) -> str:
    return f"grad_norm/{block}"


def attn_max_logit(layer: int) -> str:
    return f"attn/max_logit/layer{layer}"


def act_rms(layer: int) -> str:
    return f"act_rms/layer{layer}"


def code_perplexity(alias: str, codebook: int) -> str:
    return f"teacher/{alias}/code_perplexity/cb{codebook}"


def val(name: str) -> str:
    return VAL_PREFIX + name


# Per-run summary, logged once at the end of training (mertlab.experiment.run_summary) so MLflow's run
# comparison view can sort runs by them; `mertlab compare` shows the same numbers.
SUMMARY_PREFIX = "summary/"
SUMMARY_FINAL_LOSS = "summary/final_loss"
SUMMARY_BEST_VAL_LOSS = "summary/best_val_loss"
SUMMARY_MAX_GRAD_NORM = "summary/max_grad_norm"
SUMMARY_LOSS_SPIKES = "summary/loss_spikes"
SUMMARY_NONFINITE_STEPS = "summary/nonfinite_steps"
SUMMARY_SKIPPED_STEPS = "summary/skipped_steps"
SUMMARY_MAX_ATTN_LOGIT = "summary/max_attn_logit"
ATTN_MAX_LOGIT_PREFIX = "attn/max_logit/"


def probe(task: str, metric: str, probe_name: str | None = None) -> str:
    """Downstream probe score on the test split: ``probe/<task>/<metric>`` for the best probe
    (chosen on valid), ``probe/<task>/<probe_name>/<metric>`` for one probe (``layer<i>``,
    ``weighted``, ``majority``/``chance``, ``random_init``)."""
    return f"probe/{task}/{probe_name}/{metric}" if probe_name else f"probe/{task}/{metric}"


def probe_strongest_baseline_tag(task: str) -> str:
    """Run tag naming the baseline a task's probe verdict compares against (the best on valid),
    e.g. ``baseline_chroma``: its scores are ``probe/<task>/<that name>/<metric>``."""
    return f"probe/{task}/strongest_baseline"


# Uncertainty of probe scores (mertlab.probe.uncertainty): each score's 95% bootstrap interval
# over the test clips, the paired test's p-value of the best probe against random init and
# against the strongest baseline, and the spread over probe seeds (--seeds).
CI_LOW = "_ci_low"
CI_HIGH = "_ci_high"
P_VS_RANDOM = "_p_vs_random"
P_VS_BASELINE = "_p_vs_baseline"
SEED_MEAN = "_seed_mean"
SEED_STD = "_seed_std"
#: Suffixes of the names that accompany a probe score rather than being one.
PROBE_SCORE_COMPANIONS = (CI_LOW, CI_HIGH, P_VS_RANDOM, P_VS_BASELINE, SEED_MEAN, SEED_STD)


def probe_companion(task: str, metric: str, suffix: str, probe_name: str | None = None) -> str:
    """A number that goes with probe score ``probe(task, metric, probe_name)``:
    ``probe/<task>[/<probe>]/<metric><suffix>``, e.g. ``probe/pitch/accuracy_ci_low``."""
    return probe(task, metric + suffix, probe_name)


def probe_score_of(name: str) -> tuple[str, str] | None:
    """``(score name, suffix)`` when ``name`` accompanies a probe score (see
    :func:`probe_companion`), else None."""
    if not name.startswith("probe/"):
        return None
    for suffix in PROBE_SCORE_COMPANIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


# Where a run's time went (mertlab.toolkit.timing), logged once at its end: wall and CPU seconds
# per phase, each phase's nested phases excluded, so the phases add up to time/total_s.
PHASE_STARTUP = "startup"
PHASE_DATA = "data"
PHASE_SETUP = "setup"
PHASE_TARGET_CACHE = "target_cache"
PHASE_TRAINING = "training"
PHASE_VALIDATION = "validation"
PHASE_PROBE_FEATURES = "probe_features"
PHASE_PROBE_FITS = "probe_fits"
PHASE_PROBE_BASELINES = "probe_baselines"
PHASE_PROBE_LOGGING = "probe_logging"
TIME_PREFIX = "time/"


def phase_time(phase: str) -> str:
    """Wall-clock seconds of a phase: ``time/<phase>_s`` (``time/total_s``, ``time/other_s`` too)."""
    return f"{TIME_PREFIX}{phase}_s"


def phase_cpu_time(phase: str) -> str:
    """CPU seconds of the process (all threads) in a phase: ``time/<phase>_cpu_s``."""
    return f"{TIME_PREFIX}{phase}_cpu_s"
