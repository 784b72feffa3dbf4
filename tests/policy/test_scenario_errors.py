"""Bad scenarios get the same clear errors as job files: field, value, what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.scenario import parse_scenario

NODE = {"name": "n1", "cpus": 8, "memory": "64Gi", "gpus": [{"index": 0, "model": "H100-80GB"}]}


def problems(**over) -> list[str]:
    data = {"now": 100, "nodes": [NODE], **over}
    with pytest.raises(InvalidInput) as exc:
        parse_scenario(data, "s.yaml")
    return exc.value.problems


@pytest.mark.parametrize(
    ("over", "want"),
    [
        pytest.param(
            {"pending": [{"id": "p", "team": "t", "memory": "32GB!"}]},
            'pending[0].memory: "32GB!" is not a size; use a number of bytes or a unit: 512Mi, 32Gi, 32G',
            id="a bad size names the field, the value and the units allowed",
        ),
        pytest.param(
            {"pending": [{"id": "p", "team": "t", "kind": "serving"}]},
            'pending[0].kind: "serving" is not allowed',
            id="an unknown kind is refused",
        ),
        pytest.param(
            {"running": [{"id": "r", "team": "t", "node": "n9", "gpus": [0]}]},
            'running[0].node: "n9" is not a node; known: n1',
            id="a running job on an unknown node is refused",
        ),
        pytest.param(
            {
                "running": [
                    {"id": "a", "team": "t", "node": "n1", "gpus": [0]},
                    {"id": "b", "team": "t", "node": "n1", "gpus": [0]},
                ]
            },
            "running[1].gpus: GPU 0 of n1 is held by two jobs",
            id="a GPU held by two jobs is refused",
        ),
        pytest.param(
            {
                "nodes": [
                    {
                        **NODE,
                        "gpus": [
                            {
                                "index": 0,
                                "model": "H100-80GB",
                                "mig": [
                                    {"profile": "3g.40gb", "start": 0},
                                    {"profile": "4g.40gb", "start": 0},
                                ],
                            }
                        ],
                    }
                ]
            },
            "nodes[0].gpus[0].mig: 4g.40gb@0 overlaps 3g.40gb@0",
            id="carved slices that overlap break the MIG placement rules",
        ),
        pytest.param(
            {"pending": [{"id": "p", "team": "t", "mig": {"profile": "2g.50gb"}}]},
            'pending[0].mig.profile: "2g.50gb" is not a MIG profile of any GPU model',
            id="a MIG profile no GPU model has is refused",
        ),
        pytest.param(
            {"pending": [{"id": "p", "team": "t", "priority_class": "urgent"}]},
            'pending[0].priority_class: "urgent" is not a priority class; known: batch, inference, training',
            id="an unknown priority class is refused",
        ),
        pytest.param(
            {"pending": [{"id": "p", "team": "t", "gpu": 1}]},
            "pending[0].gpu: unknown key; allowed: id, team, kind",
            id="a typo in a key lists the keys allowed",
        ),
        pytest.param(
            {"teams": [{"name": "nlp", "limit": {"gpus": 4}}]},
            'teams[0].limit: "gpus" is not a quota resource',
            id="an unknown quota resource is refused",
        ),
    ],
)
def test_problem(over: dict, want: str) -> None:
    got = problems(**over)
    assert any(p.startswith(want) for p in got), got


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("now: 1\nnodes: []\n")
    mlq = Path(sys.executable).with_name("mlq")
    out = subprocess.run([str(mlq), "plan", str(bad), "--json"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stdout == ""
    assert (
        out.stderr.strip()
        == f"mlq: error: {bad}: nodes: List should have at least 1 item after validation, not 0"
    )
