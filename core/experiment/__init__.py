"""The experiment layer: what a run is and how runs are organised, tracked and compared.

* :mod:`.spec` -- YAML -> validated :class:`~mertlab.experiment.spec.ExperimentSpec` (bases, overrides);
* :mod:`.sweep`, :mod:`.slurm` -- a spec's variants as MLflow child runs (local or a SLURM array);
* :mod:`.tracking`, :mod:`.metric_names` -- where runs go, their tags, every logged metric name;
* :mod:`.mlflow_ui` -- links into the MLflow UI's model-training view, each experiment's comparison view;
* :mod:`.run_summary`, :mod:`.compare`, :mod:`.plotting` -- per-run summaries, sweep comparison;
* :mod:`.model_info` -- size and frame rate of a spec's backbone;
* :mod:`.export` -- a trained run's backbone as a Hugging Face model (with its spec and probe scores).
"""
