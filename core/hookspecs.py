"""The whole contract with plugin authors: the hooks mertlab calls.

A plugin is any module (or object) with functions decorated by :data:`hookimpl` whose names
are the hooks below. Third-party plugins are found through the ``mertlab`` entry-point group::

    # your package's pyproject.toml
    [project.entry-points.mertlab]
    my_teacher = "my_package.my_teacher"

Each ``register_*`` hook receives a ``register`` callable; call it once per component class.
The component contracts (``name``, ``summary``, ``Params``, constructor) are documented in
:mod:`mertlab.contracts`. A plugin registers all its components or none: one that fails to
import, marks with ``@hookimpl`` a function that is no hook (``register_teacher``: "did
you mean 'register_teachers'?"), raises in a hook or registers something breaking the contract is
skipped with one warning naming it and its distribution, and the other plugins load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("mertlab")
hookimpl = pluggy.HookimplMarker("mertlab")

Register = Callable[[type], None]


@hookspec
def register_teachers(register: Register) -> None:
    """Register :class:`mertlab.contracts.Teacher` subclasses: ``register(MyTeacher)``."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register :class:`mertlab.contracts.Backbone` subclasses."""


@hookspec
def register_objectives(register: Register) -> None:
    """Register :class:`mertlab.contracts.Objective` subclasses."""


@hookspec
def register_maskings(register: Register) -> None:
    """Register :class:`mertlab.contracts.Masking` subclasses (frame-masking strategies)."""


@hookspec
def register_augmentations(register: Register) -> None:
    """Register :class:`mertlab.contracts.Augmentation` subclasses (student-input augmentations,
    e.g. the built-in ``mixup``), named by a spec's ``augment`` section."""


@hookspec
def register_callbacks(register: Register) -> None:
    """Register training callbacks: ``lightning.Callback`` subclasses with ``name``,
    ``summary`` and ``Params``, constructed as ``Callback(params)`` when a spec's
    ``callbacks`` section names them (e.g. extra metrics, probes, stability monitors)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``mertlab`` CLI. ``cli`` is the root ``click.Group``::

    @hookimpl
    def register_commands(cli):
        @cli.command()
        def hello():
            click.echo("hi")
    """
