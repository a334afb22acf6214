"""The plugin system: finding plugins and turning their ``register_*`` hooks into components.

* :mod:`.plugin_manager` -- pluggy manager: built-in plugin modules and the ``mertlab``
  entry-point group, loaded through the same hooks;
* :mod:`.registry` -- kind -> {name: component}, filled by the hooks; builds components from spec
  sections and answers ``mertlab plugins`` / ``schema``;
* :mod:`.scaffold` -- ``mertlab new KIND NAME``: a ready third-party plugin package.

What plugins themselves import lives at the top of the package (the stable paths):
:mod:`mertlab.contracts`, :mod:`mertlab.hookspecs`, :mod:`mertlab.errors`, :mod:`mertlab.testing`.
"""
