"""Fixtures for the GPU tests: fake NVML inventories and their device files."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlq.executor import fakenvml, nvml

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "gpus"


def _inventory(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


@pytest.fixture
def inventory():
    """``inventory("h100-8-mig")`` -> the path of configs/gpus/h100-8-mig.yaml."""
    return _inventory


@pytest.fixture
def fake_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Materialize an inventory's device nodes and mig-minors, and point mlq at them.

    Returns a function: ``fake_node("h100-8-mig")`` -> the FakeFiles written.
    """

    def make(name: str) -> fakenvml.FakeFiles:
        path = _inventory(name)
        files = fakenvml.materialize(fakenvml.load_inventory(path), tmp_path / "fake", path)
        for key, value in files.env().items():
            monkeypatch.setenv(key, value)
        return files

    return make


@pytest.fixture(autouse=True)
def _no_outside_env(monkeypatch: pytest.MonkeyPatch):
    # A developer's shell may export these; each test sets what it needs.
    for key in (nvml.ENV_FAKE, nvml.ENV_DEV_ROOT, nvml.ENV_CAPS_FILE):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True, scope="session")
def _release_cgroup_parents():
    """At the end, as any user of the executor that stops launching does."""
    yield
    from mlq.executor.cgroups import release_parents

    release_parents()
