"""The real-music development set (``mertlab dev-data``), built from Debian packages:

* :mod:`.sources`    -- the packages (recordings, soundfont), their licences and origins;
* :mod:`.recordings` -- game soundtracks decoded to 24 kHz mono and cut into pieces (pre-training);
* :mod:`.gm`         -- General MIDI facts (program names, families, ranges, drum keys);
* :mod:`.midi`       -- the probe tasks' clips as MIDI notes, with their labels and splits;
* :mod:`.render`     -- FluidSynth renders a clip with the soundfont;
* :mod:`.tasks`      -- a task's clips and CSV (the format ``mertlab probe`` reads);
* :mod:`.build`      -- all of it into one folder, with a README stating each licence.
"""
