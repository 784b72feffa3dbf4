/*
 * mlq-runtime: the supervisor and the PID 1 of one mlq job.
 *
 * The Python launcher (executor/runner.py) prepares everything that is slow to get
 * right and cheap to do ahead (cgroup with its limits, image layers, veth, the plan
 * file) and then posix_spawns this small program with the plan's path.  This
 * process becomes the job's SUPERVISOR (like containerd's shim): it clones the job's
 * init into new namespaces, puts it in the job's cgroup before it runs anything,
 * reports "ok" or "error <step>: <why>" on fd 3, and from then on owns the job:
 * its output (pipes copied into log files, capped and rotated), stop requests, grace
 * period, SIGKILL of the whole cgroup, time limit, the durable status.json, and the
 * cleanup - whether or not the launcher is still alive.
 *
 * The cloned child is mlq's init (PID 1 inside): it builds the root filesystem
 * (overlay, /proc, /sys, /dev, volumes, devices, masked paths), pivots into it,
 * forks the command (ids, capabilities, no_new_privs, seccomp, exec), forwards
 * signals to it, reaps orphans and reports the command's wait status.
 *
 * One file per concern:
 *   plan.c        the plan file, read whole or refused (docs/executor.md has its table)
 *   supervisor.c  main: clone, the report protocol, the supervision loop, the outcome
 *   init.c        PID 1 inside, and the command from fork to exec
 *   mounts.c      the root: overlay, mounts, pivot, masked and read-only paths
 *   cgroup.c      joining, killing, removal; OOM kills, peak and stat files; v1 high mark
 *   security.c    capabilities, seccomp, no_new_privs, ids, user namespace maps
 *   logs.c        the job's output pipes, copied into capped and rotated files
 *   status.c      status.json, logcut.json, supervisor.json
 *   util.c        errors, the supervisor's log, small file helpers, the trace
 *   exec.c        `mlq-runtime exec`: a command inside a running job (mlq exec)
 *
 * There is no global state: the plan (read-only once read) and each part's state
 * are passed explicitly.  Signals need none either: the supervisor reads them from a
 * signalfd and init with sigwaitinfo, so no handler ever runs.
 */
#ifndef MLQ_RUNTIME_H
#define MLQ_RUNTIME_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* The plan's first line is "mlq-plan 1"; executor/plan.py writes the same number. */
#define PLAN_VERSION 1

/* Every path in a plan is shorter than PATH_MAX (plan.c refuses longer ones, which
 * the kernel would refuse anyway), so a name made from one with a short suffix
 * (".tmp", ".1", "/tasks", "/cgroup.procs", "/supervisor.log") fits PATH_BUF. */
#define PATH_BUF (PATH_MAX + 64)

/* mount(2) reads one page of options and silently drops the rest */
#define MOUNT_DATA_MAX 4095

/* ---------- errors: the step, the operation and the object, crun-style ---------- */

/* A failed step: "mount", "cgroup", ... (what the launcher reports as LaunchError's
 * step) and a message of the shape "op `object`: strerror". */
struct rt_err {
    const char *step;
    char msg[2048];
};

/* Fill ERR and return -1.  ERRNUM 0: the message has no strerror part. */
int fail(struct rt_err *err, const char *step, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* "error STEP: MSG\n" on FD, as one write (lines of init and the command never mix) */
void report(int fd, const struct rt_err *err);

/* Cleanup owned by scope (crun's cleanup_close / cleanup_free): the variable is
 * closed or freed when it goes out of scope, unless handed over with TAKE_FD /
 * TAKE_PTR after the last step that could fail. */
static inline void close_fdp(int *fd)
{
    if (*fd >= 0) {
        int e = errno;
        close(*fd);
        errno = e;
    }
}
static inline void free_p(void *p)
{
    free(*(void **)p);
}
#define AUTO_CLOSE __attribute__((cleanup(close_fdp)))
#define AUTO_FREE __attribute__((cleanup(free_p)))
static inline int take_fd(int *fd)
{
    int r = *fd;
    *fd = -1;
    return r;
}
#define TAKE_FD(fd) take_fd(&(fd))

/* ---------- the plan ---------- */

/* A list of the plan: it grows as it is read (a job may set 2,000 env entries or
 * have 100 groups), and a line dropped to fit would launch another job. */
#define LIST(type)     \
    struct {           \
        type *v;       \
        int n, cap;    \
    }
void *list_slot(void **v, int *n, int *cap, size_t size); /* NULL: out of memory */
#define LIST_PUSH(l) ((__typeof__((l).v))list_slot((void **)&(l).v, &(l).n, &(l).cap, sizeof *(l).v))

struct mnt {
    char *src, *dst, *type, *data;
    unsigned long flags;
    int ro_bind;        /* "bind,ro": a bind ignores MS_RDONLY, it takes a second step */
    int is_file;        /* the target is a file (binds: decided by the source) */
    int asuser;         /* a host path the job's user named: opened with their credentials */
    unsigned long lock; /* MS_RDONLY/NOSUID/NODEV/NOEXEC applied to a bind after it is made */
};

struct pair {
    char *a, *b;
};

/* Everything the plan says, read once by plan_read and read-only afterwards. */
struct plan {
    const char *path; /* the plan file itself */
    /* the run directory and its files */
    char *rundir, *status, *control, *out, *err, *logcut, *trace;
    long long log_limit; /* bytes kept of each of stdout and stderr; 0: all */
    /* the root */
    char *rootfs, *lower, *upper, *work;
    int readonly_root, lower_asuser;
    LIST(struct mnt) mounts;
    int cg_mount_start; /* mounts from this index on need the cgroup namespace; -1: none */
    LIST(struct pair) links; /* target, path */
    LIST(char *) masks;
    LIST(char *) ropaths;
    /* namespaces */
    char *hostname, *netns, *uidmap, *gidmap;
    int newnet, userns;
    /* the cgroup (v1: one directory per hierarchy) */
    LIST(char *) cgroups;
    char *cg_procs, *cg_kill, *oomfile, *oomkey, *peakfile;
    int self_join;
    char *v1_usage, *v1_evctl, *high_file;
    long long v1_high;
    LIST(struct pair) stats; /* name, file */
    /* the command */
    LIST(char *) args; /* NULL-terminated once read, for execve */
    LIST(char *) env;  /* NULL-terminated once read */
    char *cwd;
    uid_t uid;
    gid_t gid;
    LIST(gid_t) groups;
    unsigned long long caps;
    int nnp, seccomp;
    /* whom user-named host paths are opened as ("opener"), and where they may lead */
    int have_opener;
    uid_t op_uid;
    gid_t op_gid;
    LIST(gid_t) op_groups;
    LIST(char *) allow;
    LIST(char *) deny;
    /* stopping */
    int stop_sig;
    long grace_ms, time_limit_ms;
    /* "alive PATH MS": a dead man's switch; the job is killed once PATH's mtime is
     * older than MS (a node agent touches it on every answer from its control plane) */
    char *alive;
    long alive_ms;
    /* what the supervisor removes at the end */
    LIST(char *) rmtrees;
    LIST(char *) unlinks;
    /* "trace PATH": per-step timings (bench/launch); opened once the plan is read */
    int trace_fd;
};

/* exec.c: `mlq-runtime exec PLAN INIT_PID [--tty] [--env K=V]... -- ARGS...` */
int exec_main(int argc, char **argv);

/* plan.c: read the whole plan or nothing; ERR's message names the line. */
int plan_read(struct plan *p, const char *path, struct rt_err *err);

/* ---------- util.c ---------- */

/* The supervisor's own log, <run>/supervisor.log, for what fails once the job runs
 * (the supervisor's stderr is /dev/null by then). Opened on the first note only:
 * a run where nothing failed has none. */
struct logbook {
    const char *dir;
    int fd;
};
void note(struct logbook *lb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "PID SECONDS LABEL" to the plan's trace file, if any */
void trace(const struct plan *p, const char *label);
/* snprintf that fails (ENAMETOOLONG) rather than cut a name short */
int pathf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
double now_wall(void);
long long now_ms(void);
int write_all(int fd, const char *p, size_t len);
int write_file(const char *path, const char *s);
/* the whole file, NUL-terminated, in a malloc'd buffer; NULL on failure */
char *read_all(const char *path, size_t *len);
/* a file of one number; -1 when absent or unreadable */
long long read_number(const char *path);
/* the value of "key N" in a flat-keyed file, or -1 */
long long keyed_value(const char *path, const char *key);

/* ---------- mounts.c (init) ---------- */

int mount_root(const struct plan *p, int *rootfd, struct rt_err *err);
int mount_range(const struct plan *p, int rootfd, int from, int to, struct rt_err *err);
int finish_root(const struct plan *p, struct rt_err *err);
int pivot_into_root(const struct plan *p, struct rt_err *err);
int protect_paths(const struct plan *p, struct rt_err *err);
int loopback_up(struct rt_err *err);

/* ---------- cgroup.c ---------- */

int cgroup_join_self(const struct plan *p, struct rt_err *err);        /* init, v1 */
int cgroup_open_for_clone(const struct plan *p);                      /* v2: fd or -1 */
int cgroup_place(const struct plan *p, pid_t pid, struct rt_err *err); /* the fallback */
void cgroup_kill(const struct plan *p, pid_t init_pid, struct logbook *lb);
int cgroup_empty_wait(const struct plan *p, pid_t init_pid, int ms, struct logbook *lb);
void cgroup_remove(const struct plan *p, struct logbook *lb);
long long cgroup_oom_kills(const struct plan *p);
long long cgroup_peak(const struct plan *p);
void cgroup_stats_json(FILE *f, const struct plan *p);

/* v1 has no memory.high: crossings of the high mark are counted with a usage
 * threshold notification, registered by a thread (see cgroup.c). */
struct high_mark {
    const struct plan *p;
    int pipe[2];         /* the thread's one message */
    int efd;             /* the eventfd once registered, else -1 */
    int registered;
    long long events;
    int job_ended;       /* read by the thread: __atomic builtins */
};
void high_mark_start(struct high_mark *hm, const struct plan *p, struct logbook *lb);
void high_mark_message(struct high_mark *hm, struct logbook *lb);
void high_mark_event(struct high_mark *hm, struct logbook *lb);
void high_mark_finish(struct high_mark *hm, struct logbook *lb);

/* ---------- security.c (the command) ---------- */

int set_groups(const struct plan *p, struct rt_err *err);
int drop_bounding(const struct plan *p, struct rt_err *err);
int set_ids(const struct plan *p, struct rt_err *err);
int set_caps(const struct plan *p, struct rt_err *err);
int set_no_new_privs(struct rt_err *err);
int install_seccomp(const struct plan *p, struct rt_err *err);
/* bounding set, ids, seccomp (without no_new_privs), caps, cwd, no_new_privs */
int become_command(const struct plan *p, struct rt_err *err);
/* init.c: NAME as the job's PATH finds it (NAME itself if not found: exec says why) */
const char *find_exec(const struct plan *p, const char *name, char *buf, size_t size);
int write_id_maps(const struct plan *p, pid_t pid, struct rt_err *err);

/* ---------- logs.c (the supervisor) ---------- */

/* The job's fd 1 and 2 are pipes; the supervisor copies them into files. */
struct stream {
    const char *name; /* its key in logcut.json */
    const char *path;
    char old[PATH_BUF]; /* PATH.1 */
    int rfd;            /* the pipe's read end, non-blocking; -1 once closed */
    int wfd;            /* its write end, until init has it */
    int fd;             /* the current file; -1 when it could not be opened */
    int created;        /* this process made the file (a failed launch removes it) */
    int splice_ok;      /* splice() works into this file system */
    int write_errno;    /* the last failed write's errno, noted once per change */
    long long size, old_size, dropped;
};
struct logs {
    const struct plan *p;
    struct logbook *lb;
    struct stream s[2]; /* stdout, stderr */
    int cut_dirty;      /* logcut.json is behind the counts */
    long long cut_at;   /* when it was last written (ms) */
    char buf[65536];
};
int logs_open(struct logs *lg, const struct plan *p, struct logbook *lb, struct rt_err *err);
void logs_discard(struct logs *lg); /* a launch that failed: close, remove what was made */
void logs_pump(struct logs *lg, int i, long long budget);
void logs_flush_cut(struct logs *lg, int force);
void logs_drain(struct logs *lg);

/* ---------- status.c ---------- */

/* How a run ended, and why it was stopped if it was: the outcome is chosen from
 * these, never from the text written for them. */
enum outcome { OUTCOME_COMPLETED, OUTCOME_FAILED, OUTCOME_OUT_OF_MEMORY, OUTCOME_TIMEOUT, OUTCOME_STOPPED };
enum end_reason { END_EXITED, END_STOPPED, END_TIME_LIMIT };

struct run_end {
    enum end_reason reason;
    int raw;             /* the command's wait status (or init's) */
    double started, finished;
    long long oom_kills; /* -1: unknown */
    long long high_events;
    const char *error;   /* NULL: none */
};
enum outcome pick_outcome(const struct run_end *e);
/* How init came into its cgroup (supervisor.json's "cgroup_join"). */
enum cgroup_join { JOIN_CLONE_INTO_CGROUP, JOIN_TASKS, JOIN_CGROUP_PROCS };
int write_logcut(const char *path, long long out, long long err);
int write_supervisor_record(const struct plan *p, pid_t init_pid, double started, enum cgroup_join join,
                            struct rt_err *err);
int write_status(const struct plan *p, const struct run_end *e, struct logbook *lb);

/* ---------- init.c ---------- */

struct init_args {
    const struct plan *p;
    int go;           /* read end: the supervisor has placed init in its cgroup */
    int report;       /* write end: "ready", "error ...", "exit STATUS" */
    char *argv_area;  /* the helper's argv, overwritten with "mlq-init" */
    size_t argv_len;
};
__attribute__((noreturn)) void init_main(const struct init_args *a);

#endif
