"""The audio & target toolkit that plugins build on (built-in and third-party alike).

Depends only on the public modules (:mod:`mertlab.contracts`, :mod:`mertlab.errors`), the
registry (to build a saved backbone, to name a component in an error), torch and the audio
libraries -- never on the experiment layer, the data pipeline or the training loop.

* targets & frames: :mod:`.frame_features`, :mod:`.align`, :mod:`.teacher_output`, :mod:`.log_mel`;
* quantisers: :mod:`.kmeans`, :mod:`.rvq`, :mod:`.codec_support` (neural-codec teachers);
* objectives: :mod:`.masked_loss`;
* files: :mod:`.teacher_state` (fitted teachers), :mod:`.checkpoint` (backbones),
  :mod:`.checkpoint_sidecar` (checkpoint checksums),
  :mod:`.safe_load`, :mod:`.atomic`, :mod:`.paths`;
* params: :mod:`.presets` (named presets of a component's params);
* randomness: :mod:`.seeding` (seeds derived from position, never from history).
* time: :mod:`.timing` (wall and CPU seconds per phase of a run).
"""
