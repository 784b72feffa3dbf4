"""The job file: what a user writes, parsed and validated.

``JobSpec`` is the file as written (every field of DESIGN.md's example), with
quantities already in base units (bytes, millicores, seconds). ``resolve`` fills
what the file left out from the cluster's defaults for the job's class and
returns the same ``JobSpec`` with nothing left to default: the exact limits a job
will run under (what the store keeps). Unknown keys
are errors, so a typo can never silently drop a limit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from mlq.executor.request import memory_high_of
from mlq.executor.units import parse_cpus, parse_duration, parse_size
from mlq.executor.yamlfile import load_yaml
from mlq.scheduler.errors import InvalidInput, describe_validation_error
from mlq.scheduler.textcheck import problems as text_problems
from mlq.scheduler.webhooks import EVENTS, check_url
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

Bytes = Annotated[int, BeforeValidator(parse_size)]
# An int read from a file means CPUs (2 -> 2000 millicores); in JSON it is written
# back as "2000m" so that a stored spec parses to the same value again.
Millicores = Annotated[
    int, BeforeValidator(parse_cpus), PlainSerializer(lambda v: f"{v}m", when_used="json")
]
Seconds = Annotated[int, BeforeValidator(parse_duration)]

KINDS = ("training", "inference", "batch")
NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,62})$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MIG_PROFILE_RE = re.compile(r"^\d+g\.\d+gb(\+me)?$")
# The knobs a job may keep; everything else is dropped (see the executor's security docs).
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
    "CAP_IPC_LOCK",
    "CAP_SYS_NICE",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RESOURCE",
    "CAP_NET_ADMIN",
    "CAP_SYS_ADMIN",
)


# Caps that hold before anything is stored or run. A command line and environment
# are what the kernel takes at exec (ARG_MAX is about 2 MiB; one string at most
# 128 KiB); the rest bound what one job file may make mlq do.
MAX_ARGS, MAX_ENV, MAX_STRING = 1024, 1024, 128 * 1024
MAX_VOLUMES, MAX_DEPENDS, MAX_DEVICES, MAX_ID = 64, 1024, 64, 2**63 - 1
MAX_PATH = 4096
MAX_NODES = 1024  # the parts of one multi-node job
JobId = Annotated[int, Field(ge=1, le=MAX_ID)]
Arg = Annotated[str, Field(max_length=MAX_STRING)]


class Strict(BaseModel):
    """A model that refuses unknown keys and does not coerce across types loosely."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _abs_path(field: str):
    def check(v: object) -> object:
        if isinstance(v, str) and not v.startswith("/"):
            raise ValueError(f"is not an absolute path; {field} must start with /")
        return v

    return BeforeValidator(check)


AbsPath = Annotated[str, _abs_path("a path"), Field(max_length=MAX_PATH)]


class MigRequest(Strict):
    """``mig: {profile: 1g.10gb, count: 1}``."""

    profile: str
    count: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _profile_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("profile"), str):
            if not MIG_PROFILE_RE.fullmatch(data["profile"]):
                raise ValueError(
                    f'profile "{data["profile"]}" is not a MIG profile name; '
                    "use one like 1g.10gb, 3g.40gb, 7g.80gb"
                )
        return data


class Resources(Strict):
    """What the job asks for; ``None`` means "the class default"."""

    gpus: int = Field(0, ge=0, le=64)
    gpu_model: str | None = None
    mig: MigRequest | None = None
    cpus: Millicores | None = None
    memory: Bytes | None = None
    memory_high: Bytes | None = None
    swap: Bytes = 0
    shm: Bytes = 64 * 2**20
    pids: int = Field(4096, ge=1, le=4_194_304)
    io_weight: int = Field(100, ge=1, le=10000)
    # a multi-node job: this many parts, one per node, each with the resources above
    nodes: int = Field(1, ge=1, le=MAX_NODES)

    @model_validator(mode="after")
    def _consistent(self) -> Resources:
        if self.gpus and self.mig is not None:
            raise ValueError("gpus and mig are exclusive; ask for whole GPUs or MIG slices")
        if self.gpu_model and self.mig is not None:
            raise ValueError("gpu_model applies to whole GPUs; a MIG profile already names one")
        if self.memory is not None and self.memory <= 0:
            raise ValueError("memory must be more than zero")
        if (
            self.memory is not None
            and self.memory_high is not None
            and self.memory_high > self.memory
        ):
            raise ValueError("memory_high must not be above memory")
        return self


class Volume(Strict):
    source: AbsPath
    target: AbsPath
    readonly: bool = False


class Checkpoint(Strict):
    target: AbsPath = "/checkpoints"


class Preemption(Strict):
    grace_period: Seconds = 30
    requeue: bool | None = None  # None: true for training and batch, false for inference
    stop_signal: Literal["SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT"] = "SIGTERM"


class Notify(Strict):
    """``notify: {webhook: https://..., events: [end, preempt]}`` (or ``notify: URL``):
    told when the job ends (any final state) and when it is preempted
    (docs/notifications.md)."""

    webhook: Annotated[str, BeforeValidator(check_url)]
    events: list[Literal[EVENTS]] = Field(  # type: ignore[valid-type]
        list(EVENTS), min_length=1, max_length=len(EVENTS)
    )

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if isinstance(data, str):  # notify: URL
            return {"webhook": data}
        if isinstance(data, dict) and True in data:  # YAML 1.1 reads a bare on: as true
            raise ValueError('"on" reads as true in YAML; write events: [end, preempt]')
        return data


class Security(Strict):
    read_only_root: bool = False
    capabilities: list[Literal[CAPABILITIES]] = []  # type: ignore[valid-type]
    user_namespace: bool = False


def _env_value(v: object) -> object:
    if isinstance(v, (dict, list)):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return v


EnvValue = Annotated[str, BeforeValidator(_env_value), Field(max_length=MAX_STRING)]


# Slurm's dependency types (sbatch --dependency); a bare job ID is afterok
DEPENDENCY_TYPES = ("afterok", "afterany", "afternotok", "after")
_DEPENDENCY_HINT = (
    "use a job ID (afterok) or TYPE:ID[:ID...], TYPE one of afterok, afterany, "
    "afternotok, after (as sbatch --dependency)"
)


def parse_dependencies(value: object, where: str = "depends_on") -> list[int | str]:
    """``depends_on`` in its stored form: a job ID for each afterok dependency and
    ``"TYPE:ID"`` for each other one, sorted, each once. Accepts IDs, ``"12"``,
    ``"afterany:12:13"`` and, in one string, several joined by ``,`` as sbatch does."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_DEPENDS:
        raise ValueError(f"{where + ': ' if where else ''}more than {MAX_DEPENDS} dependencies")
    pairs: set[tuple[str, int]] = set()
    for n, item in enumerate(items):
        at = f"{where}[{n}]" if isinstance(value, list) else where
        at = f"{at}: " if at else f"[{n}]: " if isinstance(value, list) else ""
        if isinstance(item, int) and not isinstance(item, bool):
            words = [str(item)]
        elif isinstance(item, str) and len(item) <= 4096:
            words = [w.strip() for w in item.split(",")]
        else:
            raise ValueError(f"{at}{item!r} is not a dependency; {_DEPENDENCY_HINT}")
        for w in words:
            kind, ids = w.split(":", 1) if ":" in w else ("afterok", w)
            if kind not in DEPENDENCY_TYPES:
                raise ValueError(f'{at}"{w}" is not a dependency; {_DEPENDENCY_HINT}')
            for i in ids.split(":"):
                if not i.isdigit() or not 1 <= int(i) <= MAX_ID:
                    raise ValueError(f'{at}"{w}" is not a dependency; {_DEPENDENCY_HINT}')
                pairs.add((kind, int(i)))
    if len(pairs) > MAX_DEPENDS:
        raise ValueError(f"{where + ': ' if where else ''}more than {MAX_DEPENDS} dependencies")
    return [
        i if k == "afterok" else f"{k}:{i}" for k, i in sorted(pairs, key=lambda p: (p[1], p[0]))
    ]


def dependency_pairs(stored: list[int | str]) -> list[tuple[str, int]]:
    """(type, job ID) of each entry of a stored ``depends_on``."""
    out = []
    for d in stored:
        if isinstance(d, int):
            out.append(("afterok", d))
        else:
            kind, _, i = d.partition(":")
            out.append((kind, int(i)))
    return out


def _depends(v: object) -> object:
    # messages start "[N]: ", which describe_validation_error joins to the field
    return parse_dependencies(v if isinstance(v, list) or v is None else [v], where="")


def _array(v: object) -> object:
    if v is None or isinstance(v, list):
        return v
    return parse_array(v)


class JobSpec(Strict):
    """A job file as written."""

    name: str = Field(max_length=63)
    team: str = Field(max_length=63)
    kind: Literal["training", "inference", "batch"] = "batch"
    priority_class: str | None = Field(None, max_length=63)
    command: list[Arg] = Field(min_length=1, max_length=MAX_ARGS)
    image: str = Field("host", max_length=MAX_PATH)
    workdir: AbsPath | None = None  # unset: the submit directory on host, else / (in_dir)
    env: dict[str, EnvValue] = Field({}, max_length=MAX_ENV)
    resources: Resources = Resources()
    volumes: list[Volume] = Field([], max_length=MAX_VOLUMES)
    checkpoint: Checkpoint | None = None
    preemption: Preemption = Preemption()
    network: Literal["none", "bridge", "host"] = "none"
    time_limit: Seconds | None = None
    array: Annotated[list[int] | None, BeforeValidator(_array)] = None
    # at most this many of the array run at once: "array: 0-99%4" (Slurm's throttle)
    array_limit: int | None = Field(None, ge=1, le=MAX_ID)
    depends_on: Annotated[list[int | str], BeforeValidator(_depends)] = []
    security: Security = Security()
    # host device nodes beyond the GPUs; an admin grants them
    devices: list[AbsPath] = Field([], max_length=MAX_DEVICES)
    notify: Notify | None = None
    # mlq submit -i: the job waits, once started, for the command mlq submit runs in
    # it with the submitter's terminal (cli/jobs.py); it ends as that command does
    interactive: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shapes(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a job file is a mapping of keys such as name, team, command")
        if isinstance(data.get("array"), str) and "%" in data["array"]:
            indices, limit = split_throttle(data["array"])
            if data.get("array_limit") not in (None, limit):
                raise ValueError(
                    f'array: "{data["array"]}" sets a throttle of {limit} and array_limit '
                    f"{data['array_limit']}; give one"
                )
            data = {**data, "array": indices, "array_limit": limit}
        if isinstance(data.get("command"), str):
            raise ValueError(
                f'command: "{data["command"]}" is a string; use a list, e.g. [python, train.py]'
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(
                f'name: "{self.name}" is not allowed; use 1-63 letters, digits, "-", "_" or "."'
                " starting with a letter or digit"
            )
        for key in self.env:
            if not ENV_RE.fullmatch(key):
                raise ValueError(f'env.{key}: not a variable name; use letters, digits and "_"')
            if key.startswith("MLQ_"):
                raise ValueError(f"env.{key}: MLQ_ variables are set by mlq; choose another name")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("devices: a device is listed twice")
        if len({v.target for v in self.volumes}) != len(self.volumes):
            raise ValueError("volumes: two volumes share a target; each needs its own")
        if self.resources.nodes > 1 and self.network != "host":
            raise ValueError(
                f"resources.nodes: {self.resources.nodes} parts reach each other over the "
                "nodes' own network; set network: host (an mlq admin grants it: "
                "mlq grant set team:<team> --networks host)"
            )
        if self.resources.nodes > 1 and self.array is not None:
            raise ValueError("resources.nodes: an array of multi-node jobs is not supported")
        if self.interactive and (self.array is not None or self.resources.nodes > 1):
            raise ValueError(
                "interactive: one terminal drives one job; not an array or a multi-node job"
            )
        argv = sum(len(a.encode()) + 1 for a in self.command)
        envp = sum(len(k) + len(v.encode()) + 2 for k, v in self.env.items())
        if argv + envp > 1 << 20:
            raise ValueError(
                f"command and env: {argv + envp} bytes together; at most 1 MiB reaches exec"
            )
        return self

    def in_dir(self, submit_dir: str | None) -> JobSpec:
        """The spec with its workdir set: the file's, else the directory it was
        submitted from on ``image: host`` (as sbatch runs a job where it was
        submitted), else ``/``: on another image (its own tree has no such
        directory), or where the submit directory is under what every job has of its
        own (``/tmp``: the job would not find it), as mlq did before."""
        from mlq.executor.request import JOB_PRIVATE_DIRS

        if self.workdir is not None:
            return self
        here = submit_dir if self.image == "host" and submit_dir else "/"
        if any(here == d or here.startswith(d + "/") for d in JOB_PRIVATE_DIRS):
            here = "/"
        return self.model_copy(update={"workdir": here})

    @property
    def requeue(self) -> bool:
        if self.preemption.requeue is not None:
            return self.preemption.requeue
        return self.kind != "inference"


MAX_ARRAY = 10_000


def split_throttle(value: str) -> tuple[str, int]:
    """``"0-99%4"`` -> ``("0-99", 4)``: the indices, and how many may run at once."""
    head, _, tail = value.rpartition("%")
    if not tail.isdigit() or int(tail) < 1 or not head:
        raise ValueError(
            f'array: "{value}" has a throttle that is not a count; use 0-99%4 (4 at a time)'
        )
    return head, int(tail)


def parse_array(value: object) -> list[int]:
    """Indices from Slurm-style ``0-99``, ``0-99:2`` or ``1,3,5-7``.

    The count is known before any index is made: ``0-999999999`` is refused at
    once, not after a billion-entry list has been built."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_ID:
            raise ValueError("is not an array index; use 0 or more")
        return [value]
    if not isinstance(value, str) or len(value) > 4096:
        raise ValueError("is not an array range; use 0-99, 0-99:2 or 1,3,5")
    ranges: list[tuple[int, int, int]] = []
    count = 0
    try:
        for part in value.split(","):
            part = part.strip()
            step = 1
            if ":" in part:
                part, s = part.split(":", 1)
                step = int(s)
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
            else:
                lo = hi = int(part)
            if lo < 0 or hi < lo or step < 1 or hi > MAX_ID:
                raise ValueError
            ranges.append((lo, hi, step))
            count += (hi - lo) // step + 1
            if count > MAX_ARRAY:
                raise OverflowError
    except OverflowError:
        raise ValueError(f"has more than {MAX_ARRAY} indices; split the sweep") from None
    except ValueError:
        raise ValueError("is not an array range; use 0-99, 0-99:2 or 1,3,5") from None
    return sorted({i for lo, hi, step in ranges for i in range(lo, hi + 1, step)})


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The keys allowed where an unknown key ``loc`` was found, for the error message."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        for cand in getattr(ann, "__args__", ()) + (ann,):
            inner = getattr(cand, "__args__", ())
            for c in (cand, *inner):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    current = c
                    break
            else:
                continue
            break
    fields = getattr(current, "model_fields", None)
    return ", ".join(fields) if fields else None


def validation_problems(
    exc: ValidationError, model: type[BaseModel], prefix: str = ""
) -> list[str]:
    """Readable problems, with the allowed keys listed for an unknown key."""
    lines = describe_validation_error(exc, prefix)
    out = []
    for line, err in zip(lines, exc.errors(), strict=True):
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(err["loc"]))
            if allowed:
                line = f"{line}; allowed: {allowed}"
        out.append(line)
    return out


def parse_spec(data: Any, source: str | None = None) -> JobSpec:
    """Validate a loaded job file; raises ``InvalidInput`` listing every problem."""
    bad_text = text_problems(data)
    if bad_text:
        raise InvalidInput(bad_text, source)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc, JobSpec), source) from None


def load_spec(path: str | Path) -> JobSpec:
    return parse_spec(load_yaml(path), str(path))


def resolve(spec: JobSpec, classes: list[Any]) -> JobSpec:
    """Fill what the file left out from its class's defaults; never unlimited.

    ``classes`` are the cluster's ``PriorityClass`` entries. The class is the
    file's ``priority_class``, else the one named after its ``kind``.
    """
    by_name = {c.name: c for c in classes}
    cls_name = spec.priority_class or spec.kind
    cls = by_name.get(cls_name)
    if cls is None:
        field = "priority_class" if spec.priority_class else "kind"
        raise InvalidInput(
            f'{field}: "{cls_name}" is not a priority class of this cluster; '
            f"known: {', '.join(sorted(by_name))}"
        )
    r = spec.resources
    cpus = r.cpus if r.cpus is not None else cls.defaults.cpus
    memory = r.memory if r.memory is not None else cls.defaults.memory
    high = r.memory_high if r.memory_high is not None else memory_high_of(memory)
    if high > memory:
        raise InvalidInput(
            f"resources.memory_high: {high} is above resources.memory {memory}; lower it or raise memory"
        )
    time_limit = spec.time_limit if spec.time_limit is not None else cls.defaults.time_limit
    return spec.model_copy(
        update={
            "priority_class": cls.name,
            "resources": r.model_copy(update={"cpus": cpus, "memory": memory, "memory_high": high}),
            "time_limit": time_limit,
            "preemption": spec.preemption.model_copy(update={"requeue": spec.requeue}),
        }
    )
