"""Admin grants: the only way a job gets more than its user has on the host.

A job runs as its submitter, with no capabilities, and may bind-mount host paths
only from under the volume paths granted to everyone. Anything more, an mlq
admin grants to a team (``team:nlp``), a priority class (``class:inference``) or
everyone (``*``): capabilities, more volume paths, device nodes. A job gets the
union of the grants to ``*``, its team and its class. Some paths no grant opens:
``/proc``, ``/sys``, ``/dev``, the daemon's state dir and its socket's dir.

Pure rules over a job file and the grants; the daemon checks them at submit
(refused, exit 3, naming the field, what was asked and who can allow it) and
again at start, since a grant may have been taken back meanwhile.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

SUBJECT_RE = re.compile(
    r"^(\*|team:[a-z0-9][a-z0-9_-]{0,62}|class:[A-Za-z0-9][A-Za-z0-9_.-]{0,62})$"
)
SUBJECT_HELP = 'use "*" (everyone), team:<name> or class:<name>'
# Where anyone's volumes may come from, unless the cluster config says otherwise.
DEFAULT_VOLUME_PATHS = ("/home", "/srv", "/data", "/scratch", "/mnt", "/tmp", "/var/tmp")
# Network modes a job gets only by a grant (none and bridge are everyone's).
GRANTED_NETWORKS = ("host",)
# Never mounted into a job, whoever asks (the daemon adds its state and socket dirs).
FORBIDDEN_PATHS = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class Grant:
    """What one subject is granted."""

    subject: str
    capabilities: tuple[str, ...] = ()
    volume_paths: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()  # network modes beyond none and bridge: "host"


@dataclass(frozen=True)
class Allowed:
    """What one job may have: the union of the grants that apply to it."""

    capabilities: frozenset[str] = frozenset()
    volume_paths: tuple[str, ...] = ()
    devices: frozenset[str] = frozenset()
    sources: dict[str, list[str]] = field(default_factory=dict, compare=False)
    networks: frozenset[str] = frozenset()


def subjects_for(team: str, klass: str) -> tuple[str, str, str]:
    return ("*", f"team:{team}", f"class:{klass}")


def allowed_for(grants: Iterable[Grant], team: str, klass: str) -> Allowed:
    wanted = subjects_for(team, klass)
    caps: set[str] = set()
    paths: list[str] = []
    devs: set[str] = set()
    nets: set[str] = set()
    for g in grants:
        if g.subject in wanted:
            caps.update(g.capabilities)
            paths.extend(p for p in g.volume_paths if p not in paths)
            devs.update(g.devices)
            nets.update(g.networks)
    return Allowed(frozenset(caps), tuple(paths), frozenset(devs), networks=frozenset(nets))


def under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def forbidden_paths(state_dir: str | None, socket_path: str | None) -> tuple[str, ...]:
    extra = [
        os.path.realpath(p) for p in (state_dir, socket_path and os.path.dirname(socket_path)) if p
    ]
    return tuple(dict.fromkeys([*FORBIDDEN_PATHS, *extra]))


def check(
    spec: object,
    team: str,
    klass: str,
    grants: Iterable[Grant],
    forbidden: Iterable[str],
    is_root: bool,
) -> list[str]:
    """Each request of ``spec`` beyond what its team and class are granted, as a line
    naming the field, what was asked and who can allow it. Root is refused only the
    forbidden paths: it already has every other power on the host."""
    security = spec.security  # type: ignore[attr-defined]
    problems: list[str] = []
    how = f"an mlq admin can grant it with: mlq grant set team:{team}"
    for i, v in enumerate(spec.volumes):  # type: ignore[attr-defined]
        src = os.path.normpath(v.source)
        bad = next((f for f in forbidden if under(src, f)), None)
        if bad is not None:
            problems.append(
                f"volumes[{i}].source: {v.source} is under {bad}, which no job may mount"
            )
    if is_root:
        return problems
    allowed = allowed_for(grants, team, klass)
    # inside a user namespace that maps only the submitter, capabilities reach
    # nothing the submitter does not own (see docs/security.md): no grant needed
    if not security.user_namespace:
        for cap in security.capabilities:
            if cap not in allowed.capabilities:
                problems.append(
                    f"security.capabilities: {cap} is not granted to team {team} or class "
                    f"{klass}; {how} --capabilities {cap} (or use security.user_namespace: true)"
                )
    for i, v in enumerate(spec.volumes):  # type: ignore[attr-defined]
        src = os.path.normpath(v.source)
        if not any(under(src, p) for p in allowed.volume_paths):
            shown = ", ".join(allowed.volume_paths) or "none"
            problems.append(
                f"volumes[{i}].source: {v.source} is outside the volume paths granted to team "
                f"{team} and class {klass} ({shown}); {how} --volume-paths {src}"
            )
    network = spec.network  # type: ignore[attr-defined]
    if network in GRANTED_NETWORKS and network not in allowed.networks:
        problems.append(
            f"network: {network} shares the node's network namespace (its ports, addresses "
            f"and abstract sockets) and is not granted to team {team} or class {klass}; "
            f"{how} --networks {network}"
        )
    for i, d in enumerate(spec.devices):  # type: ignore[attr-defined]
        if d not in allowed.devices:
            problems.append(
                f"devices[{i}]: {d} is not granted to team {team} or class {klass}; "
                f"{how} --devices {d}"
            )
    return problems
