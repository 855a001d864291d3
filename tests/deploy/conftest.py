"""Fixtures shared by the tests of deploy/; plain helpers and constants are in common.py."""

from __future__ import annotations

import pytest
import yaml

from .common import DEPLOY


@pytest.fixture(scope="session")
def helm_values() -> dict:
    """deploy/helm/values.yaml, for the official Dagster chart (read-only: copy before changing)."""
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
