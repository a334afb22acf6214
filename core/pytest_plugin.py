"""mertlab's pytest plugin (entry point ``pytest11``), loaded by pytest wherever mertlab is installed.

It stays light (nothing heavy is imported until a fixture is used) and gives plugin packages:

* the ``mertlab_registry`` fixture: a freshly built registry of the installed components;
* the ``contract_audio`` fixture: ``contract_audio(seconds, sample_rate, seed=0)``, the generated
  music the contract checks run on (:func:`mertlab.testing.contract_audio`);
* a report header line with the mertlab version.

The contract tests themselves are one line in a test module (see :mod:`mertlab.testing`)::

    from mertlab.testing import contract_tests
    test_my_teacher = contract_tests("teacher", "my_teacher")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def pytest_report_header(config: pytest.Config) -> str:
    from mertlab import __version__

    return f"mertlab {__version__} (contract tests: mertlab.testing)"


@pytest.fixture
def mertlab_registry() -> Any:
    """The registry of built-in and installed components, built fresh for the test."""
    from mertlab.plugin_system.registry import get_registry, reset_registry

    reset_registry()
    yield get_registry()
    reset_registry()


@pytest.fixture
def contract_audio() -> Callable[..., Any]:
    """``contract_audio(seconds, sample_rate, seed=0) -> [S]`` generated music (tones, onsets,
    drums, clicks, a noise burst)."""
    from mertlab.testing import contract_audio as make

    return make
