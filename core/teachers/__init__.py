"""Working with a spec's teachers outside the training step (the teachers themselves are plugins).

* :mod:`.fitting` -- ``mertlab teachers fit``: fit teachers that need it on the training audio;
* :mod:`.evaluation` -- ``mertlab teachers evaluate``: probe teacher targets on a labelled task;
* :mod:`.target_cache` -- ``mertlab targets build``: every teacher's targets on disk, read by training.
"""
