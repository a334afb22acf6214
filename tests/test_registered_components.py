"""Every registered component, built-in or installed, is checked here for free (timm-style),
by the same contract checks plugin packages run from :mod:`mertlab.testing`."""

from __future__ import annotations

import pytest

from mertlab.plugin_system.plugin_manager import create_plugin_manager
from mertlab.plugin_system.registry import Registry
from mertlab.testing import all_contract_cases, assert_contract

REGISTRY = Registry(create_plugin_manager())  # built-ins and installed plugins alike
CASES = all_contract_cases(REGISTRY)


def test_every_kind_has_builtins():
    assert {kind for kind, _, _ in CASES} == {"teacher", "backbone", "objective", "masking", "augmentation", "callback"}


@pytest.mark.parametrize(("kind", "name", "check"), CASES, ids=[":".join(c) for c in CASES])
def test_contract(kind, name, check, one_thread):
    assert_contract(kind, name, check, REGISTRY)
