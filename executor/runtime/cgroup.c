/* The job's cgroup, made and limited by the launcher: joining it (init on v1, the
 * supervisor's fallback), killing everything in it, removing it, and reading its
 * OOM kills, peak memory, stat files and (v1) high-mark crossings. */
#include "runtime.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>

/* v1: init moves itself, as its first step, by writing "0" to each hierarchy's
 * tasks file. A single thread moving itself skips the kernel's threadgroup lock
 * (and the RCU grace period its writer waits for: 5-12 ms here), which a write of
 * another process's pid to cgroup.procs takes. */
int cgroup_join_self(const struct plan *p, struct rt_err *err)
{
    for (int i = 0; i < p->cgroups.n; i++) {
        char tasks[PATH_BUF];
        if (pathf(tasks, sizeof tasks, "%s/tasks", p->cgroups.v[i]) < 0 || write_file(tasks, "0") < 0)
            return fail(err, "cgroup", errno, "write `%s/tasks`", p->cgroups.v[i]);
    }
    return 0;
}

/* cgroup v2 (a single hierarchy with cgroup.kill): the directory clone3 creates init
 * in (CLONE_INTO_CGROUP), so there is no migration afterwards; else -1. */
int cgroup_open_for_clone(const struct plan *p)
{
    if (!p->cg_kill || p->cgroups.n != 1)
        return -1;
    return open(p->cgroups.v[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* The fallback (v2 without clone3): the supervisor writes init's pid. */
int cgroup_place(const struct plan *p, pid_t pid, struct rt_err *err)
{
    char pidbuf[32];
    snprintf(pidbuf, sizeof pidbuf, "%d", (int)pid);
    for (int i = 0; i < p->cgroups.n; i++) {
        char procs[PATH_BUF];
        if (pathf(procs, sizeof procs, "%s/cgroup.procs", p->cgroups.v[i]) < 0 || write_file(procs, pidbuf) < 0)
            return fail(err, "cgroup", errno, "write `%s/cgroup.procs`", p->cgroups.v[i]);
    }
    return 0;
}

static void kill_noting(pid_t pid, struct logbook *lb)
{
    /* ESRCH: it is gone already, which is what was wanted */
    if (kill(pid, SIGKILL) < 0 && errno != ESRCH && lb)
        note(lb, "kill `%d` SIGKILL: %s", (int)pid, strerror(errno));
}

/* v2 has cgroup.kill; killing PID 1 of the pid namespace ends everything in it; and
 * whatever is still listed in cgroup.procs gets SIGKILL as well (v1). LB: where a
 * failure is noted (NULL: not again). */
void cgroup_kill(const struct plan *p, pid_t init_pid, struct logbook *lb)
{
    if (p->cg_kill && write_file(p->cg_kill, "1") < 0 && errno != ENOENT && lb)
        note(lb, "write `%s`: %s", p->cg_kill, strerror(errno));
    if (init_pid > 0)
        kill_noting(init_pid, lb);
    char *procs AUTO_FREE = p->cg_procs ? read_all(p->cg_procs, NULL) : NULL;
    char *save = NULL;
    for (char *line = procs ? strtok_r(procs, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save))
        kill_noting(atoi(line), lb);
}

static int has_procs(const struct plan *p)
{
    if (!p->cg_procs)
        return 0;
    int fd AUTO_CLOSE = open(p->cg_procs, O_RDONLY | O_CLOEXEC);
    char c[16];
    return fd >= 0 && read(fd, c, sizeof c) > 0;
}

/* Kill until the cgroup is empty, for up to MS milliseconds: 1 if it is. */
int cgroup_empty_wait(const struct plan *p, pid_t init_pid, int ms, struct logbook *lb)
{
    for (int i = 0; i < ms; i++) {
        if (!has_procs(p))
            return 1;
        cgroup_kill(p, init_pid, i == 0 ? lb : NULL);
        usleep(1000);
    }
    return 0;
}

void cgroup_remove(const struct plan *p, struct logbook *lb)
{
    for (int i = 0; i < p->cgroups.n; i++) {
        const char *dir = p->cgroups.v[i];
        int t = 0, r;
        /* EBUSY while the last task is still on its way out */
        while ((r = rmdir(dir)) < 0 && errno == EBUSY && t < 2000) {
            usleep(1000);
            t++;
        }
        if (r < 0 && errno != ENOENT)
            note(lb, "rmdir `%s` (%d tries): %s", dir, t + 1, strerror(errno));
        char m[PATH_BUF];
        snprintf(m, sizeof m, "rmdir %s tries %d", dir, t);
        trace(p, m);
    }
}

long long cgroup_oom_kills(const struct plan *p)
{
    return p->oomfile ? keyed_value(p->oomfile, p->oomkey) : -1;
}

long long cgroup_peak(const struct plan *p)
{
    return p->peakfile ? read_number(p->peakfile) : -1;
}

/* One stat file as JSON: a flat-keyed file ("key value" lines) as an object, a
 * one-number file as that number, a missing one as null. */
static void stat_json(FILE *f, const char *path)
{
    char *buf AUTO_FREE = read_all(path, NULL);
    if (!buf) {
        fputs("null", f);
        return;
    }
    if (!strchr(buf, ' ')) {
        fprintf(f, "%lld", atoll(buf));
        return;
    }
    fputc('{', f);
    int first = 1;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *sp = strchr(line, ' ');
        if (!sp)
            continue;
        *sp = 0;
        fprintf(f, "%s\"%s\": %lld", first ? "" : ", ", line, atoll(sp + 1));
        first = 0;
    }
    fputc('}', f);
}

/* The cgroup's stat files as the members of one JSON object. */
void cgroup_stats_json(FILE *f, const struct plan *p)
{
    for (int i = 0; i < p->stats.n; i++) {
        fprintf(f, "%s\"%s\": ", i ? ", " : "", p->stats.v[i].a);
        stat_json(f, p->stats.v[i].b);
    }
}

/* ---------- v1: crossings of the high mark ---------- */

/* v1 has no memory.high: count crossings of the high mark with a usage threshold
 * notification (cgroup.event_control). Registering makes the kernel wait for an RCU
 * grace period, and removing the cgroup while a registration is in flight holds the
 * global cgroup lock meanwhile; so a thread registers, and only for a job still
 * running after 20 ms (a shorter one is judged by its peak alone). The thread owns
 * pipe[1] and reads only the plan and job_ended; it sends one message. */
struct high_msg {
    int efd;     /* the eventfd, or -1 */
    int already; /* 1 if usage was above the mark when registered */
    int err;     /* why the registration failed; 0: not tried (the job ended first) */
};

static int ended(struct high_mark *hm)
{
    return __atomic_load_n(&hm->job_ended, __ATOMIC_ACQUIRE);
}

static void *register_high(void *arg)
{
    struct high_mark *hm = arg;
    const struct plan *p = hm->p;
    int out = hm->pipe[1];
    struct high_msg m = {-1, 0, 0};
    for (int i = 0; i < 20 && !ended(hm); i++)
        usleep(1000);
    if (!ended(hm)) {
        int efd AUTO_CLOSE = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        int ufd AUTO_CLOSE = open(p->v1_usage, O_RDONLY | O_CLOEXEC);
        char reg[128];
        snprintf(reg, sizeof reg, "%d %d %lld", efd, ufd, p->v1_high);
        if (efd >= 0 && ufd >= 0 && write_file(p->v1_evctl, reg) == 0) {
            m.already = read_number(p->v1_usage) > p->v1_high;
            m.efd = TAKE_FD(efd);
        } else {
            m.err = errno ? errno : EIO;
        }
    }
    if (write_all(out, (const char *)&m, sizeof m) < 0 && m.efd >= 0)
        close(m.efd);
    close(out);
    return NULL;
}

void high_mark_start(struct high_mark *hm, const struct plan *p, struct logbook *lb)
{
    *hm = (struct high_mark){.p = p, .pipe = {-1, -1}, .efd = -1};
    if (!p->v1_usage)
        return;
    if (pipe2(hm->pipe, O_CLOEXEC) < 0) {
        note(lb, "pipe for the high-mark thread: %s (no high events counted but by the peak)", strerror(errno));
        return;
    }
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&th, &attr, register_high, hm);
    pthread_attr_destroy(&attr);
    if (e) {
        note(lb, "start the high-mark thread: %s (no high events counted but by the peak)", strerror(e));
        close(hm->pipe[0]);
        close(hm->pipe[1]);
        hm->pipe[0] = hm->pipe[1] = -1;
    }
}

/* The thread's message (pipe[0] is readable). */
void high_mark_message(struct high_mark *hm, struct logbook *lb)
{
    struct high_msg m;
    if (read(hm->pipe[0], &m, sizeof m) == sizeof m) {
        if (m.efd >= 0) {
            hm->efd = m.efd;
            hm->registered = 1;
            hm->events += m.already;
        } else if (m.err) {
            note(lb, "register a threshold on `%s` in `%s`: %s", hm->p->v1_usage, hm->p->v1_evctl, strerror(m.err));
        }
    }
    close(hm->pipe[0]);
    hm->pipe[0] = -1;
}

/* A crossing (the eventfd is readable): counted, and the count written for stats(). */
void high_mark_event(struct high_mark *hm, struct logbook *lb)
{
    uint64_t v;
    if (read(hm->efd, &v, sizeof v) != sizeof v)
        return;
    hm->events += (long long)v;
    char b[32];
    int n = snprintf(b, sizeof b, "%lld\n", hm->events);
    int fd AUTO_CLOSE = open(hm->p->high_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, b, n) < 0 || close(TAKE_FD(fd)) < 0)
        note(lb, "write `%s`: %s", hm->p->high_file, strerror(errno));
}

/* The job ended: the thread is told and waited for (it must not be in the middle of
 * a registration when the cgroup is removed), the last crossings read; a job too
 * short to register crossed its mark if its peak is above it. */
void high_mark_finish(struct high_mark *hm, struct logbook *lb)
{
    __atomic_store_n(&hm->job_ended, 1, __ATOMIC_RELEASE);
    if (hm->pipe[0] >= 0) {
        struct pollfd pf = {hm->pipe[0], POLLIN, 0};
        if (poll(&pf, 1, 5000) > 0)
            high_mark_message(hm, lb);
        else {
            note(lb, "the high-mark thread did not answer within 5 s");
            close(hm->pipe[0]);
            hm->pipe[0] = -1;
        }
    }
    if (hm->efd >= 0) {
        uint64_t v;
        if (read(hm->efd, &v, sizeof v) == sizeof v)
            hm->events += (long long)v;
        close(hm->efd);
        hm->efd = -1;
    }
    if (hm->p && hm->p->v1_usage && !hm->registered && cgroup_peak(hm->p) > hm->p->v1_high)
        hm->events = 1;
}
