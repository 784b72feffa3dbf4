"""The layers' rules are checked by tools that fail on a violation (docs/architecture.md).

``scripts/test`` runs ``lint-imports`` and ``mypy``; these tests show that each of
them, and the CLI's start-up rule, fails when the rule is broken.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _lint() -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )


def test_the_import_contracts_hold_and_fail_on_a_deliberate_violation():
    assert _lint().returncode == 0
    probe = ROOT / "executor" / "_layer_probe.py"
    probe.write_text('"""A deliberate violation (tests/policy/test_layers.py)."""\n'
                     "from mlq.scheduler import states  # noqa: F401\n")  # fmt: skip
    try:
        broken = _lint()
    finally:
        probe.unlink()
    assert broken.returncode != 0
    assert "The executor is a leaf" in broken.stdout and "BROKEN" in broken.stdout
    assert "mlq.executor._layer_probe -> mlq.scheduler.states" in broken.stdout


def test_the_policy_may_not_reach_the_store(tmp_path):
    probe = ROOT / "scheduler" / "_policy_probe.py"
    probe.write_text(
        '"""A deliberate violation."""\nfrom mlq.scheduler.store import Store  # noqa: F401\n'
    )
    target = ROOT / "scheduler" / "reasons.py"
    original = target.read_text()
    try:
        target.write_text(
            original + "\nfrom mlq.scheduler import _policy_probe  # noqa: E402,F401\n"
        )
        broken = _lint()
    finally:
        target.write_text(original)
        probe.unlink()
    assert broken.returncode != 0 and "The policy is pure" in broken.stdout


def test_the_seams_type_check_and_fail_on_an_any(tmp_path):
    ok = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    seam = tmp_path / "seam.py"  # checked with the seams' settings, outside the tree
    seam.write_text("from typing import Any\n\n\ndef leak(x: Any) -> None: ...\n")
    broken = subprocess.run(
        [str(BIN / "mypy"), "--config-file", str(ROOT / "pyproject.toml"), str(seam)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert broken.returncode != 0 and 'Explicit "Any" is not allowed' in broken.stdout


def test_the_cli_starts_without_the_servers_stack():
    """`mlq queue` pays for what it imports: no web framework, database or pydantic."""
    code = (
        "import sys, mlq.cli.main; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'sqlmodel', 'pydantic',"
        " 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
