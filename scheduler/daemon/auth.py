"""Who may do what: rules over a caller and the store's membership (read through
the store, never changed here).

- A user submits only to a team they are a member of (as a user or via ``@group``).
- A user cancels (and reads the logs of) their own jobs; a team admin does so for
  any job of the team.
- Root, or a member of the configured admin group, manages teams, quotas and
  priority classes, and may submit to or cancel in any team.
Refusals say who asked for what and why not.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlq.scheduler.daemon.peer import Peer
from mlq.scheduler.errors import Refused
from mlq.scheduler.models import Job
from mlq.scheduler.store import Store


@dataclass(frozen=True)
class Caller:
    peer: Peer
    is_admin: bool
    # root on a node the cluster does not trust as root (its agent vouched for uid 0):
    # may read what any user may, and nothing more (docs/security.md, many machines)
    squashed_on: str | None = None

    @property
    def user(self) -> str:
        return self.peer.user

    @classmethod
    def of(cls, peer: Peer, admin_group: str) -> Caller:
        return cls(peer=peer, is_admin=peer.uid == 0 or admin_group in peer.groups)


def squashed(caller: Caller, action: str) -> Refused:
    return Refused(
        f"root on node {caller.squashed_on} is not root of the cluster: it may not {action}; "
        "act as a user there, or as root on the control plane (--admin-node trusts a node)"
    )


def require_admin(caller: Caller, action: str, admin_group: str) -> None:
    if caller.squashed_on:
        raise squashed(caller, action)
    if not caller.is_admin:
        raise Refused(
            f"{caller.user} may not {action}: only root or members of the "
            f'"{admin_group}" group (mlq admins) may'
        )


def is_team_admin(caller: Caller, team: str, store: Store) -> bool:
    """An mlq admin, or an admin of ``team`` (never root squashed on a node)."""
    if caller.squashed_on:
        return False
    return caller.is_admin or team in store.teams_of(caller.user, caller.peer.groups)[1]


def require_team_admin(
    caller: Caller, team: str, store: Store, admin_group: str, action: str
) -> None:
    """The team's admins and mlq admins may ``action`` the team."""
    what = f'{action} team "{team}"'
    if caller.squashed_on:
        raise squashed(caller, what)
    if not is_team_admin(caller, team, store):
        raise Refused(
            f"{caller.user} may not {what}: only its team admins and mlq admins (root or "
            f'members of the "{admin_group}" group) may'
        )


def require_member_manager(
    caller: Caller, team: str, name: str, role: str | None, store: Store, admin_group: str
) -> None:
    """Members of a team are managed by mlq admins and by the team's own admins, who
    may add and remove plain members (not admins: the admin role is an mlq admin's to
    give and take, as are quotas)."""
    require_team_admin(caller, team, store, admin_group, "change the members of")
    if caller.is_admin:
        return
    t = store.team(team)
    if role == "admin" or name in t.admins:
        raise Refused(
            f'{caller.user} may not make or unmake an admin of team "{team}": an mlq admin '
            f'(root or a member of the "{admin_group}" group) gives and takes the admin role'
        )


def require_submit(caller: Caller, team: str, store: Store) -> None:
    if caller.squashed_on:
        raise squashed(caller, f'submit to team "{team}"')
    if caller.is_admin:
        return
    member, _ = store.teams_of(caller.user, caller.peer.groups)
    if team not in member:
        mine = ", ".join(sorted(member)) or "none"
        raise Refused(
            f'{caller.user} may not submit to team "{team}": not a member '
            f"(your teams: {mine}; a team admin or mlq admin adds members)"
        )


def may_see_private(caller: Caller, job: Job, store: Store) -> bool:
    """The job's owner, its team's admins and mlq admins: who may cancel it, read its
    logs and see its environment and command line."""
    if caller.squashed_on:
        return False
    if caller.is_admin or job.user == caller.user:
        return True
    _, admin = store.teams_of(caller.user, caller.peer.groups)
    return job.team in admin


def require_owner(caller: Caller, job: Job, store: Store, action: str = "cancel") -> None:
    """The job's owner, its team's admins and mlq admins may ``action`` it."""
    if may_see_private(caller, job, store):
        return
    raise Refused(
        f"{caller.user} may not {action} job {job.id}: it belongs to {job.user} "
        f'and you are not an admin of team "{job.team}"'
    )
