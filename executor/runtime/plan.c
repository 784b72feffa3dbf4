/*
 * The plan (executor/plan.py writes it): the first line "mlq-plan 1", then one step a
 * line, its fields tab-separated, with "\\", "\t" and "\n" escaped.  Every step has a
 * fixed number of fields of a fixed kind (the table below; docs/executor.md prints
 * it).  The plan is read whole before anything is made, and refused whole, with one
 * "line N: ..." message, if any line is not exactly what this helper executes: a
 * missing or other version, an unknown step, a wrong number of fields, a field of
 * the wrong kind, a second copy of a step that is taken once, or a value past what
 * the kernel would take without cutting it short.  A step this helper does not know
 * would be a step not taken; a line dropped to fit would launch another job.
 */
#include "runtime.h"

#include <sys/mount.h>

/* The kinds of field: P a path (not empty, shorter than PATH_MAX), S any text,
 * N a whole number (0 or more), B 0 or 1. */
enum step_id {
    S_RUNDIR, S_STATUS, S_CONTROL, S_STDOUT, S_STDERR, S_LOGCUT, S_LOG_LIMIT, S_TRACE,
    S_ROOTFS, S_OVERLAY, S_LOWER_ASUSER, S_READONLY_ROOT, S_MOUNT, S_CGROUPNS_MOUNTS,
    S_SYMLINK, S_MASK, S_ROPATH,
    S_HOSTNAME, S_NETNS, S_NEWNET, S_USERNS,
    S_CGROUP, S_CGROUP_PROCS, S_CGROUP_KILL, S_SELF_JOIN, S_OOM, S_PEAK, S_STAT, S_V1_HIGH,
    S_ARG, S_ENV, S_CWD, S_USER, S_GROUP, S_CAPS, S_NO_NEW_PRIVS, S_SECCOMP,
    S_OPENER, S_PATHRULE,
    S_STOP_SIGNAL, S_GRACE_MS, S_TIME_LIMIT_MS, S_ALIVE,
    S_RMTREE, S_UNLINK,
    S_COUNT
};

#define MAX_FIELDS 5

static const struct step_def {
    const char *name;
    const char *kinds;                /* one letter a field (see above) */
    const char *fields[MAX_FIELDS];   /* their names, for messages */
    int many;                         /* a list: the step may repeat */
    int required;
} STEPS[S_COUNT] = {
    /* the run directory and its files */
    [S_RUNDIR] = {"rundir", "P", {"DIR"}, 0, 1},
    [S_STATUS] = {"status", "P", {"PATH"}, 0, 1},
    [S_CONTROL] = {"control", "P", {"PATH"}, 0, 0},
    [S_STDOUT] = {"stdout", "P", {"PATH"}, 0, 1},
    [S_STDERR] = {"stderr", "P", {"PATH"}, 0, 1},
    [S_LOGCUT] = {"logcut", "P", {"PATH"}, 0, 1},
    [S_LOG_LIMIT] = {"log_limit", "N", {"BYTES"}, 0, 0},
    [S_TRACE] = {"trace", "P", {"PATH"}, 0, 0},
    /* the root */
    [S_ROOTFS] = {"rootfs", "P", {"DIR"}, 0, 1},
    [S_OVERLAY] = {"overlay", "SSS", {"LOWERDIRS", "UPPER", "WORK"}, 0, 1},
    [S_LOWER_ASUSER] = {"lower_asuser", "B", {"0|1"}, 0, 0},
    [S_READONLY_ROOT] = {"readonly_root", "B", {"0|1"}, 0, 0},
    [S_MOUNT] = {"mount", "SPSSS", {"SOURCE", "TARGET", "TYPE", "FLAGS", "DATA"}, 1, 0},
    [S_CGROUPNS_MOUNTS] = {"cgroupns_mounts", "", {0}, 0, 0},
    [S_SYMLINK] = {"symlink", "SP", {"TARGET", "PATH"}, 1, 0},
    [S_MASK] = {"mask", "P", {"PATH"}, 1, 0},
    [S_ROPATH] = {"ropath", "P", {"PATH"}, 1, 0},
    /* namespaces */
    [S_HOSTNAME] = {"hostname", "S", {"NAME"}, 0, 0},
    [S_NETNS] = {"netns", "P", {"PATH"}, 0, 0},
    [S_NEWNET] = {"newnet", "B", {"0|1"}, 0, 0},
    [S_USERNS] = {"userns", "SS", {"UID_MAP", "GID_MAP"}, 0, 0},
    /* the cgroup */
    [S_CGROUP] = {"cgroup", "P", {"DIR"}, 1, 1},
    [S_CGROUP_PROCS] = {"cgroup_procs", "P", {"PATH"}, 0, 0},
    [S_CGROUP_KILL] = {"cgroup_kill", "P", {"PATH"}, 0, 0},
    [S_SELF_JOIN] = {"self_join", "B", {"0|1"}, 0, 0},
    [S_OOM] = {"oom", "PS", {"PATH", "KEY"}, 0, 0},
    [S_PEAK] = {"peak", "P", {"PATH"}, 0, 0},
    [S_STAT] = {"stat", "SP", {"NAME", "PATH"}, 1, 0},
    [S_V1_HIGH] = {"v1_high", "PPNP", {"USAGE", "EVENT_CONTROL", "BYTES", "COUNT_FILE"}, 0, 0},
    /* the command */
    [S_ARG] = {"arg", "S", {"ARG"}, 1, 1},
    [S_ENV] = {"env", "S", {"K=V"}, 1, 0},
    [S_CWD] = {"cwd", "P", {"DIR"}, 0, 0},
    [S_USER] = {"user", "NN", {"UID", "GID"}, 0, 0},
    [S_GROUP] = {"group", "N", {"GID"}, 1, 0},
    [S_CAPS] = {"caps", "N", {"MASK"}, 0, 0},
    [S_NO_NEW_PRIVS] = {"no_new_privs", "B", {"0|1"}, 0, 0},
    [S_SECCOMP] = {"seccomp", "B", {"0|1"}, 0, 0},
    [S_OPENER] = {"opener", "NNS", {"UID", "GID", "GIDS"}, 0, 0},
    [S_PATHRULE] = {"pathrule", "SP", {"allow|deny", "PATH"}, 1, 0},
    /* stopping */
    [S_STOP_SIGNAL] = {"stop_signal", "N", {"SIGNUM"}, 0, 0},
    [S_GRACE_MS] = {"grace_ms", "N", {"MS"}, 0, 0},
    [S_TIME_LIMIT_MS] = {"time_limit_ms", "N", {"MS"}, 0, 0},
    [S_ALIVE] = {"alive", "PN", {"PATH", "MS"}, 0, 0},
    /* the end */
    [S_RMTREE] = {"rmtree", "P", {"DIR"}, 1, 0},
    [S_UNLINK] = {"unlink", "P", {"PATH"}, 1, 0},
};

/* where a line of the plan is, for its messages */
struct at {
    struct rt_err *err;
    int line;
};

static int bad(struct at *at, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct at *at, const char *fmt, ...)
{
    char what[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return fail(at->err, "read plan", 0, "line %d: %s", at->line, what);
}

/* "\\", "\t", "\n" and nothing else: anything else is not what plan.py writes */
static int unescape(struct at *at, char *s)
{
    char *o = s, *r = s;
    while (*r) {
        if (*r != '\\') {
            *o++ = *r++;
            continue;
        }
        char c = r[1];
        if (c != '\\' && c != 't' && c != 'n')
            return bad(at, "an unknown escape \"\\%c\"", c ? c : ' ');
        *o++ = c == 'n' ? '\n' : c == 't' ? '\t' : '\\';
        r += 2;
    }
    *o = 0;
    return 0;
}

static int whole_number(const char *s, long long *out)
{
    if (!*s)
        return -1;
    for (const char *c = s; *c; c++)
        if (*c < '0' || *c > '9')
            return -1;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno)
        return -1;
    *out = v;
    return 0;
}

static int id_number(struct at *at, const char *step, const char *field, long long v)
{
    if (v > 0xfffffffeLL) /* (uid_t)-1 means "no change" to the kernel */
        return bad(at, "\"%s\" %s %lld is not a user or group id", step, field, v);
    return 0;
}

static int mount_flags(struct at *at, char *spec, struct mnt *m)
{
    unsigned long f = 0;
    char *save = NULL;
    for (char *tok = strtok_r(spec, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "bind"))
            f |= MS_BIND;
        else if (!strcmp(tok, "rbind"))
            f |= MS_BIND | MS_REC;
        else if (!strcmp(tok, "ro"))
            f |= MS_RDONLY;
        else if (!strcmp(tok, "nosuid"))
            f |= MS_NOSUID;
        else if (!strcmp(tok, "nodev"))
            f |= MS_NODEV;
        else if (!strcmp(tok, "noexec"))
            f |= MS_NOEXEC;
        else if (!strcmp(tok, "relatime"))
            f |= MS_RELATIME;
        else if (!strcmp(tok, "asuser"))
            m->asuser = 1;
        else if (!strcmp(tok, "file"))
            m->is_file = 1;
        else
            return bad(at, "\"mount\" of `%s`: an unknown flag \"%s\"", m->dst, tok);
    }
    if ((f & MS_BIND) && (f & MS_RDONLY)) {
        /* a bind mount ignores MS_RDONLY; it takes a second step */
        m->ro_bind = 1;
        f &= ~MS_RDONLY;
    }
    m->flags = f;
    if (f & MS_BIND)
        m->lock = (m->ro_bind ? MS_RDONLY : 0) | (f & (MS_NOSUID | MS_NODEV | MS_NOEXEC));
    return 0;
}

/* A user or group id map for /proc/PID/[ug]id_map: written in one write, which the
 * kernel takes if shorter than a page and of at most 340 lines. */
static int id_map(struct at *at, const char *which, const char *map)
{
    int lines = 1;
    for (const char *c = map; *c; c++)
        lines += *c == '\n';
    if (strlen(map) + 1 > MOUNT_DATA_MAX || lines > 340)
        return bad(at, "\"userns\" %s of %zu bytes and %d lines; the kernel takes %d bytes and 340 lines at most",
                   which, strlen(map), lines, MOUNT_DATA_MAX - 1);
    return 0;
}

#define ADD(list, value)                                                           \
    do {                                                                           \
        __typeof__((list).v) slot_ = LIST_PUSH(list);                              \
        if (!slot_)                                                                \
            return bad(at, "no memory for another \"%s\" step", def->name);        \
        *slot_ = (value);                                                          \
    } while (0)

/* One step: its fields (F, already checked against the step's kinds; N: their
 * numbers) into the plan. */
static int take(struct plan *p, enum step_id id, char **f, const long long *n, struct at *at)
{
    const struct step_def *def = &STEPS[id];
    switch (id) {
    case S_RUNDIR: p->rundir = f[0]; break;
    case S_STATUS: p->status = f[0]; break;
    case S_CONTROL: p->control = f[0]; break;
    case S_STDOUT: p->out = f[0]; break;
    case S_STDERR: p->err = f[0]; break;
    case S_LOGCUT: p->logcut = f[0]; break;
    case S_LOG_LIMIT: p->log_limit = n[0]; break;
    case S_TRACE: p->trace = f[0]; break;
    case S_ROOTFS: p->rootfs = f[0]; break;
    case S_OVERLAY:
        p->lower = f[0];
        p->upper = f[1];
        p->work = f[2];
        if (*p->upper && strlen("lowerdir=,upperdir=,workdir=,volatile") + strlen(f[0]) + strlen(f[1]) +
                                 strlen(f[2]) > MOUNT_DATA_MAX)
            return bad(at, "\"overlay\" options of more than %d bytes, which mount(2) would cut short",
                       MOUNT_DATA_MAX);
        break;
    case S_LOWER_ASUSER: p->lower_asuser = (int)n[0]; break;
    case S_READONLY_ROOT: p->readonly_root = (int)n[0]; break;
    case S_MOUNT: {
        if (strlen(f[4]) > MOUNT_DATA_MAX)
            return bad(at, "\"mount\" of `%s`: DATA of %zu bytes; mount(2) reads %d at most", f[1], strlen(f[4]),
                       MOUNT_DATA_MAX);
        struct mnt m = {.src = f[0], .dst = f[1], .type = f[2], .data = *f[4] ? f[4] : NULL};
        if (mount_flags(at, f[3], &m) < 0)
            return -1;
        ADD(p->mounts, m);
        break;
    }
    case S_CGROUPNS_MOUNTS: p->cg_mount_start = p->mounts.n; break;
    case S_SYMLINK: ADD(p->links, ((struct pair){f[0], f[1]})); break;
    case S_MASK: ADD(p->masks, f[0]); break;
    case S_ROPATH: ADD(p->ropaths, f[0]); break;
    case S_HOSTNAME:
        if (strlen(f[0]) > HOST_NAME_MAX)
            return bad(at, "\"hostname\" of %zu bytes; the kernel takes %d at most", strlen(f[0]), HOST_NAME_MAX);
        p->hostname = f[0];
        break;
    case S_NETNS: p->netns = f[0]; break;
    case S_NEWNET: p->newnet = (int)n[0]; break;
    case S_USERNS:
        if (id_map(at, "UID_MAP", f[0]) < 0 || id_map(at, "GID_MAP", f[1]) < 0)
            return -1;
        p->userns = 1;
        p->uidmap = f[0];
        p->gidmap = f[1];
        break;
    case S_CGROUP: ADD(p->cgroups, f[0]); break;
    case S_CGROUP_PROCS: p->cg_procs = f[0]; break;
    case S_CGROUP_KILL: p->cg_kill = f[0]; break;
    case S_SELF_JOIN: p->self_join = (int)n[0]; break;
    case S_OOM:
        p->oomfile = f[0];
        p->oomkey = f[1];
        break;
    case S_PEAK: p->peakfile = f[0]; break;
    case S_STAT: ADD(p->stats, ((struct pair){f[0], f[1]})); break;
    case S_V1_HIGH:
        p->v1_usage = f[0];
        p->v1_evctl = f[1];
        p->v1_high = n[2];
        p->high_file = f[3];
        break;
    case S_ARG: ADD(p->args, f[0]); break;
    case S_ENV: ADD(p->env, f[0]); break;
    case S_CWD: p->cwd = f[0]; break;
    case S_USER:
        if (id_number(at, def->name, "UID", n[0]) < 0 || id_number(at, def->name, "GID", n[1]) < 0)
            return -1;
        p->uid = (uid_t)n[0];
        p->gid = (gid_t)n[1];
        break;
    case S_GROUP:
        if (id_number(at, def->name, "GID", n[0]) < 0)
            return -1;
        ADD(p->groups, (gid_t)n[0]);
        break;
    case S_CAPS: p->caps = (unsigned long long)n[0]; break;
    case S_NO_NEW_PRIVS: p->nnp = (int)n[0]; break;
    case S_SECCOMP: p->seccomp = (int)n[0]; break;
    case S_OPENER: {
        if (id_number(at, def->name, "UID", n[0]) < 0 || id_number(at, def->name, "GID", n[1]) < 0)
            return -1;
        p->have_opener = 1;
        p->op_uid = (uid_t)n[0];
        p->op_gid = (gid_t)n[1];
        char *save = NULL;
        for (char *g = strtok_r(f[2], ",", &save); g; g = strtok_r(NULL, ",", &save)) {
            long long v;
            if (whole_number(g, &v) < 0 || id_number(at, def->name, "GIDS", v) < 0)
                return bad(at, "\"opener\" GIDS: \"%s\" is not a group id", g);
            ADD(p->op_groups, (gid_t)v);
        }
        break;
    }
    case S_PATHRULE:
        if (!strcmp(f[0], "allow"))
            ADD(p->allow, f[1]);
        else if (!strcmp(f[0], "deny"))
            ADD(p->deny, f[1]);
        else
            return bad(at, "\"pathrule\" \"%s\" is neither allow nor deny", f[0]);
        break;
    case S_STOP_SIGNAL:
        if (n[0] < 1 || n[0] >= NSIG)
            return bad(at, "\"stop_signal\" %lld is not a signal", n[0]);
        p->stop_sig = (int)n[0];
        break;
    case S_GRACE_MS: p->grace_ms = (long)n[0]; break;
    case S_TIME_LIMIT_MS: p->time_limit_ms = (long)n[0]; break;
    case S_ALIVE:
        if (n[1] < 1)
            return bad(at, "\"alive\" MS: %lld is not a duration (1 ms or more)", n[1]);
        p->alive = f[0];
        p->alive_ms = (long)n[1];
        break;
    case S_RMTREE: ADD(p->rmtrees, f[0]); break;
    case S_UNLINK: ADD(p->unlinks, f[0]); break;
    case S_COUNT: break;
    }
    return 0;
}

/* One line: the step, its number of fields, each field's kind, then take(). */
static int read_step(struct plan *p, char *line, int seen[S_COUNT], struct at *at)
{
    char *rest = strchr(line, '\t');
    if (rest)
        *rest++ = 0;
    int id = 0;
    while (id < S_COUNT && strcmp(STEPS[id].name, line))
        id++;
    if (id == S_COUNT)
        return bad(at, *line ? "an unknown step \"%.64s\"" : "an empty step%s", line);
    const struct step_def *def = &STEPS[id];
    int want = (int)strlen(def->kinds), nf = 0;
    if (rest) {
        nf = 1;
        for (const char *c = rest; *c; c++)
            nf += *c == '\t';
    }
    if (nf != want)
        return bad(at, "\"%s\" takes %d field%s, not %d", def->name, want, want == 1 ? "" : "s", nf);
    if (!def->many && seen[id])
        return bad(at, "a second \"%s\" step (the first is line %d)", def->name, seen[id]);
    seen[id] = at->line;
    char *f[MAX_FIELDS] = {0};
    long long n[MAX_FIELDS] = {0};
    for (int i = 0; i < nf; i++) {
        f[i] = rest;
        rest = strchr(rest, '\t');
        if (rest)
            *rest++ = 0;
        if (unescape(at, f[i]) < 0)
            return -1;
        const char *name = def->fields[i];
        switch (def->kinds[i]) {
        case 'P':
            if (!*f[i])
                return bad(at, "\"%s\" %s is empty", def->name, name);
            if (strlen(f[i]) >= PATH_MAX)
                return bad(at, "\"%s\" %s of %zu bytes; a path has less than %d", def->name, name, strlen(f[i]),
                           PATH_MAX);
            break;
        case 'N':
            if (whole_number(f[i], &n[i]) < 0)
                return bad(at, "\"%s\" %s \"%.64s\" is not a whole number", def->name, name, f[i]);
            break;
        case 'B':
            if (strcmp(f[i], "0") && strcmp(f[i], "1"))
                return bad(at, "\"%s\" \"%.64s\" is neither 0 nor 1", def->name, f[i]);
            n[i] = f[i][0] == '1';
            break;
        }
    }
    return take(p, (enum step_id)id, f, n, at);
}

int plan_read(struct plan *p, const char *path, struct rt_err *err)
{
    memset(p, 0, sizeof *p);
    p->path = path;
    p->trace_fd = -1;
    p->stop_sig = SIGTERM;
    p->grace_ms = 30000;
    p->cg_mount_start = -1;
    size_t len;
    /* the plan stays in memory for the life of the process: every field points into it */
    char *buf = read_all(path, &len);
    if (!buf)
        return fail(err, "read plan", errno, "read `%s`", path);
    struct at at = {err, 1};
    const char *nul = memchr(buf, 0, len);
    if (nul) {
        for (const char *c = buf; c < nul; c++)
            at.line += *c == '\n';
        return bad(&at, "a NUL byte");
    }
    char version[32];
    snprintf(version, sizeof version, "mlq-plan %d", PLAN_VERSION);
    if (strncmp(buf, "mlq-plan ", 9))
        return bad(&at, "not an mlq plan: the first line must be \"%s\"", version);
    if (len == 0 || buf[len - 1] != '\n') {
        for (const char *c = buf; c < buf + len; c++)
            at.line += *c == '\n';
        return bad(&at, "the plan ends in the middle of a line (cut short?)");
    }
    int seen[S_COUNT] = {0};
    at.line = 0;
    for (char *line = buf; line < buf + len;) {
        char *nl = memchr(line, '\n', buf + len - line); /* found: the plan ends with one */
        *nl = 0;
        at.line++;
        if (at.line == 1) {
            if (strcmp(line, version))
                return bad(&at, "plan version %.16s, but this mlq-runtime reads version %d (run "
                                "scripts/install-venv)",
                           line + 9, PLAN_VERSION);
        } else if (read_step(p, line, seen, &at) < 0) {
            return -1;
        }
        line = nl + 1;
    }
    for (int id = 0; id < S_COUNT; id++)
        if (STEPS[id].required && !seen[id])
            return bad(&at, "the plan ends without a \"%s\" step", STEPS[id].name);
    /* execve wants both lists NULL-terminated: the slot is made here, not after fork */
    char **end;
    if (!(end = LIST_PUSH(p->args)))
        return fail(err, "read plan", ENOMEM, "make room for the arguments");
    *end = NULL;
    p->args.n--;
    if (!(end = LIST_PUSH(p->env)))
        return fail(err, "read plan", ENOMEM, "make room for the environment");
    *end = NULL;
    p->env.n--;
    return 0;
}
