/*
 * The supervisor: main.  It reads the plan, sets the job up in one flat sequence
 * (each step undone if a later one fails, until "ok" hands the job over to the
 * supervision loop), supervises it, and writes how it ended.
 *
 * The report protocol, on fd 3 (the launcher's pipe): one line, "ok SUPERVISOR_PID
 * INIT_PID" once the command has exec'd, or "error STEP: MESSAGE" if the launch
 * failed; after "ok", "done" once status.json is final.  Init reports to the
 * supervisor on a pipe of its own: "ready" after the exec, or an "error" line, and
 * later "exit STATUS" with the command's wait status.
 */
#include "runtime.h"

#include <ftw.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <linux/sched.h>

/* The supervisor's state, passed explicitly to its steps. */
struct supervisor {
    const struct plan *p;
    int launcher;      /* fd 3, the launcher's report pipe; -1: none (errors to stderr) */
    pid_t init_pid;
    int sfd;           /* signalfd of the signals below */
    int go_w;          /* write end: init may go on (it is in its cgroup) */
    int rep_r;         /* read end of init's reports */
    char line[4096];   /* what init reported so far */
    size_t len;
    struct logs logs;
    struct logbook lb;
    struct high_mark hm;
    double started;    /* wall clock, for status.json */
    long long t0;      /* monotonic ms, for the time limit */
    enum cgroup_join join; /* how init came into its cgroup */
};

static const int SUPERVISOR_SIGNALS[] = {SIGCHLD, SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP};

static void signal_init(struct supervisor *s, int sig)
{
    if (kill(s->init_pid, sig) < 0 && errno != ESRCH)
        note(&s->lb, "kill `%d` signal %d: %s", (int)s->init_pid, sig, strerror(errno));
}

/* ---------- set-up ---------- */

/* init, from the moment clone returns in it: only its ends of the pipes, the job's
 * output pipes as its fd 1 and 2, then init_main. */
__attribute__((noreturn)) static void become_init(struct supervisor *s, int go_r, int rep_w, int cgfd, char **argv,
                                                   int argc)
{
    if (s->launcher >= 0)
        close(s->launcher); /* the launcher's EOF must mean "the supervisor is gone" */
    close(s->go_w);
    close(s->rep_r);
    close(s->sfd);
    if (cgfd >= 0)
        close(cgfd);
    struct rt_err err = {0};
    if (dup2(s->logs.s[0].wfd, 1) < 0 || dup2(s->logs.s[1].wfd, 2) < 0) {
        fail(&err, "start", errno, "dup2 the output pipes to fd 1 and 2");
        report(rep_w, &err);
        _exit(127);
    }
    for (int i = 0; i < 2; i++) {
        close(s->logs.s[i].rfd);
        close(s->logs.s[i].wfd);
        close(s->logs.s[i].fd);
    }
    struct init_args a = {
        .p = s->p,
        .go = go_r,
        .report = rep_w,
        .argv_area = argv[0],
        .argv_len = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) + 1 - argv[0]),
    };
    init_main(&a);
}

/* Clone init into new PID, mount, UTS, IPC (and net) namespaces.  cgroup v2: clone3
 * with CLONE_INTO_CGROUP creates it inside the job's cgroup, with no migration
 * afterwards; v1 (or an older kernel) migrates it after (cgroup_join_self, or the
 * supervisor's cgroup_place). */
static int clone_init(struct supervisor *s, char **argv, int argc, struct rt_err *err)
{
    const struct plan *p = s->p;
    int go[2], rep[2];
    if (pipe2(go, O_CLOEXEC) < 0)
        return fail(err, "start", errno, "pipe to release init");
    s->go_w = go[1];
    if (pipe2(rep, O_CLOEXEC) < 0) {
        close(go[0]);
        return fail(err, "start", errno, "pipe for init's reports");
    }
    s->rep_r = rep[0];
    int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | (p->newnet ? CLONE_NEWNET : 0);
    trace(p, "sup: start");
    s->started = now_wall();
    s->t0 = now_ms();
    pid_t pid = -1;
    int in_cgroup = 0;
    int cgfd AUTO_CLOSE = cgroup_open_for_clone(p);
    if (cgfd >= 0) {
        struct clone_args ca = {.flags = (uint64_t)flags | CLONE_INTO_CGROUP, .exit_signal = SIGCHLD,
                                .cgroup = (uint64_t)cgfd};
        pid = syscall(SYS_clone3, &ca, sizeof ca);
        in_cgroup = pid >= 0;
    }
    if (pid < 0)
        pid = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid == 0)
        become_init(s, go[0], rep[1], cgfd, argv, argc);
    int e = errno;
    close(go[0]);
    close(rep[1]);
    if (pid < 0)
        return fail(err, "namespaces", e, "clone with new pid, mount, uts, ipc%s namespaces",
                    p->newnet ? ", net" : "");
    s->init_pid = pid;
    s->join = in_cgroup ? JOIN_CLONE_INTO_CGROUP : p->self_join ? JOIN_TASKS : JOIN_CGROUP_PROCS;
    trace(p, "sup: cloned");
    return 0;
}

/* Init's first report: "ready" (the command exec'd; what followed it stays in
 * s->line for the end), or the step that failed, passed on as it came. */
static int wait_ready(struct supervisor *s, struct rt_err *err)
{
    while (s->len < sizeof s->line - 1) {
        ssize_t n = read(s->rep_r, s->line + s->len, sizeof s->line - 1 - s->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        s->len += n;
        s->line[s->len] = 0;
        if (strchr(s->line, '\n'))
            break;
    }
    s->line[s->len] = 0;
    if (!strncmp(s->line, "ready\n", 6)) {
        memmove(s->line, s->line + 6, s->len - 6 + 1);
        s->len -= 6;
        return 0;
    }
    char *nl = strchr(s->line, '\n');
    char *colon = strstr(s->line, ": ");
    if (!strncmp(s->line, "error ", 6) && nl && colon && colon < nl) {
        /* "error STEP: MESSAGE" from init or the command, as it came */
        *nl = 0;
        *colon = 0;
        err->step = s->line + 6;
        snprintf(err->msg, sizeof err->msg, "%s", colon + 2);
        return -1;
    }
    return fail(err, "start", 0, "init ended before the job ran");
}

/* A launch that failed after init was cloned: init and what it made go (its mounts
 * and namespaces die with it), and the log files this process created. */
static void undo_start(struct supervisor *s)
{
    if (s->init_pid > 0) {
        kill(s->init_pid, SIGKILL);
        waitpid(s->init_pid, NULL, 0);
        s->init_pid = -1;
    }
    logs_discard(&s->logs);
}

/* The set-up, one flat sequence.  On failure the caller undoes it (undo_start) and
 * reports the error; on success the job runs and is this process's to supervise. */
static int start_job(struct supervisor *s, char **argv, int argc, struct rt_err *err)
{
    const struct plan *p = s->p;
    /* 1. the log files, and the pipes that become the job's fd 1 and 2: the job's
     * output goes through this process, which caps what is kept (logs.c) */
    if (logs_open(&s->logs, p, &s->lb, err) < 0)
        return -1;
    /* 2. the signals, blocked and read from a signalfd: no handler ever runs */
    sigset_t mask;
    sigemptyset(&mask);
    for (unsigned i = 0; i < sizeof SUPERVISOR_SIGNALS / sizeof SUPERVISOR_SIGNALS[0]; i++)
        sigaddset(&mask, SUPERVISOR_SIGNALS[i]);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    s->sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (s->sfd < 0)
        return fail(err, "start", errno, "signalfd for SIGCHLD, SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP");
    /* 3. init, in new namespaces (and on v2 in the job's cgroup already) */
    if (clone_init(s, argv, argc, err) < 0)
        return -1;
    /* the job holds the only write ends: their EOF means all its processes are gone */
    for (int i = 0; i < 2; i++)
        close(TAKE_FD(s->logs.s[i].wfd));
    /* 4. the cgroup, before init runs a single step of its own (the fallback: v2
     * without clone3; on v1 init has moved itself) */
    if (s->join == JOIN_CGROUP_PROCS && cgroup_place(p, s->init_pid, err) < 0)
        return -1;
    trace(p, "sup: in cgroup");
    /* 5. release init */
    if (write(s->go_w, "g", 1) != 1) {
        /* EPIPE: init failed already, and its report (read next) says why */
    }
    close(TAKE_FD(s->go_w));
    /* 6. "ready" (the command exec'd) or the step that failed */
    if (wait_ready(s, err) < 0)
        return -1;
    /* 7. the supervisor record, before the launcher hears "ok" */
    if (write_supervisor_record(p, s->init_pid, s->started, s->join, err) < 0)
        return -1;
    return 0;
}

/* ---------- supervision ---------- */

/* The dead man's switch ("alive PATH MS"): true once PATH is older than MS, or gone. */
static int alive_stale(const struct plan *p, struct logbook *lb)
{
    struct stat st;
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) < 0)
        return 0;
    long long age = -1;
    if (stat(p->alive, &st) == 0)
        age = (now.tv_sec - st.st_mtim.tv_sec) * 1000LL + (now.tv_nsec - st.st_mtim.tv_nsec) / 1000000;
    if (age >= 0 && age <= p->alive_ms)
        return 0;
    if (age < 0)
        note(lb, "`%s` is gone: killing the job (its node agent stopped answering)", p->alive);
    else
        note(lb, "`%s` is %lld ms old, more than %ld: killing the job (its node agent stopped answering)",
             p->alive, age, p->alive_ms);
    return 1;
}

/* From "ok" to init's end: output, stop requests, grace period, time limit. Returns
 * init's wait status; *REASON says whether it was stopped. */
static int supervise(struct supervisor *s, enum end_reason *reason)
{
    const struct plan *p = s->p;
    pid_t pid = s->init_pid;
    int stopping = 0, killed = 0, init_status = 0;
    long long grace_end = -1, limit_end = p->time_limit_ms > 0 ? s->t0 + p->time_limit_ms : -1;
    *reason = END_EXITED;
    for (;;) {
        long long now = now_ms(), next = -1;
        if (grace_end >= 0)
            next = grace_end;
        if (limit_end >= 0 && !stopping && (next < 0 || limit_end < next))
            next = limit_end;
        int timeout = next < 0 ? -1 : (int)(next > now ? next - now : 0);
        if (s->logs.cut_dirty && (timeout < 0 || timeout > 100))
            timeout = 100;
        if (p->alive && !killed && (timeout < 0 || timeout > 100))
            timeout = 100;
        struct pollfd pf[5] = {{s->sfd, POLLIN, 0},
                               {s->hm.efd, POLLIN, 0},
                               {s->hm.pipe[0], POLLIN, 0},
                               {s->logs.s[0].rfd, POLLIN, 0},
                               {s->logs.s[1].rfd, POLLIN, 0}};
        int r = poll(pf, 5, timeout);
        /* the job's output first: a job blocked on a full pipe makes no progress */
        for (int i = 0; r > 0 && i < 2; i++)
            if (pf[3 + i].revents & (POLLIN | POLLHUP | POLLERR))
                logs_pump(&s->logs, i, 8 << 20);
        logs_flush_cut(&s->logs, 0);
        if (r > 0 && (pf[2].revents & (POLLIN | POLLHUP)))
            high_mark_message(&s->hm, &s->lb);
        now = now_ms();
        if (limit_end >= 0 && !stopping && now >= limit_end) {
            *reason = END_TIME_LIMIT;
            stopping = 1;
            signal_init(s, p->stop_sig);
            grace_end = now + p->grace_ms;
        }
        if (p->alive && !killed && alive_stale(p, &s->lb)) {
            *reason = END_STOPPED;
            stopping = 1;
            cgroup_kill(p, pid, &s->lb);
            killed = 1;
            grace_end = -1;
        }
        if (grace_end >= 0 && now >= grace_end && !killed) {
            cgroup_kill(p, pid, &s->lb);
            killed = 1;
            grace_end = -1;
        }
        if (r > 0 && pf[1].fd >= 0 && (pf[1].revents & POLLIN))
            high_mark_event(&s->hm, &s->lb);
        if (r <= 0 || !(pf[0].revents & POLLIN))
            continue;
        struct signalfd_siginfo si;
        int done = 0;
        while (read(s->sfd, &si, sizeof si) == sizeof si) {
            int sig = si.ssi_signo;
            if (sig == SIGCHLD) {
                int st;
                if (waitpid(pid, &st, WNOHANG) == pid) {
                    init_status = st;
                    done = 1;
                }
            } else if (sig == SIGUSR2) {
                /* kill now */
                if (!stopping)
                    *reason = END_STOPPED;
                stopping = 1;
                cgroup_kill(p, pid, &s->lb);
                killed = 1;
            } else {
                /* SIGUSR1: a stop request in the control file; SIGTERM/INT/HUP: a stop
                 * with the job's own signal and grace period */
                int stop_sig = p->stop_sig;
                long grace = p->grace_ms;
                char *cb AUTO_FREE = sig == SIGUSR1 && p->control ? read_all(p->control, NULL) : NULL;
                if (cb) {
                    if (!strncmp(cb, "kill", 4))
                        grace = 0;
                    else if (sscanf(cb, "stop %d %ld", &stop_sig, &grace) != 2)
                        note(&s->lb, "read `%s`: \"%.40s\" is neither \"kill\" nor \"stop SIG MS\"", p->control, cb);
                }
                if (!stopping) {
                    *reason = END_STOPPED;
                    stopping = 1;
                }
                signal_init(s, stop_sig);
                long long end = now_ms() + grace;
                if (!killed && (grace_end < 0 || end < grace_end))
                    grace_end = end;
                if (grace == 0 && !killed) {
                    cgroup_kill(p, pid, &s->lb);
                    killed = 1;
                    grace_end = -1;
                }
            }
        }
        if (done)
            return init_status;
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* The overlay's upper, work and mount dirs: the job's writes, never needed again. */
static void remove_trees(struct supervisor *s)
{
    for (int i = 0; i < s->p->rmtrees.n; i++) {
        const char *dir = s->p->rmtrees.v[i];
        if (nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
            note(&s->lb, "remove `%s`: %s", dir, strerror(errno));
        else if (access(dir, F_OK) == 0)
            note(&s->lb, "remove `%s`: some of it remains", dir);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "exec") == 0)
        return exec_main(argc, argv); /* mlq exec: exec.c */
    if (argc != 2) {
        fprintf(stderr, "usage: mlq-runtime PLAN (started by mlq's executor)\n");
        return 2;
    }
    struct supervisor s = {.launcher = -1, .init_pid = -1, .sfd = -1, .go_w = -1, .rep_r = -1, .lb = {NULL, -1}};
    struct plan plan;
    struct rt_err err = {0};
    /* fd 3 is the launcher's report pipe; without it errors go to stderr */
    if (fcntl(3, F_GETFD) >= 0) {
        s.launcher = 3;
        fcntl(3, F_SETFD, FD_CLOEXEC);
    }
    /* 0, 1 and 2 stay taken (the launcher's, then /dev/null): the pipes made below
     * must never land on them, where the dup2s to the job's fds would clobber them */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd) {
            fail(&err, "start", errno, "open `/dev/null` as fd %d", fd);
            report(s.launcher, &err);
            return 1;
        }
    /* the plan, whole or not at all: nothing is made before it is read */
    if (plan_read(&plan, argv[1], &err) < 0) {
        report(s.launcher, &err);
        return 1;
    }
    s.p = &plan;
    s.lb.dir = plan.rundir;
    if (plan.trace) /* a debugging aid: no trace if it cannot be opened */
        plan.trace_fd = open(plan.trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    trace(&plan, "sup: plan read");
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a log past RLIMIT_FSIZE is an EFBIG write, dropped */

    if (start_job(&s, argv, argc, &err) < 0) {
        undo_start(&s);
        report(s.launcher, &err);
        /* the launcher undoes what it made (cgroup, dirs, veth) */
        return 1;
    }

    /* The job runs.  From here on nothing fails the launch: what goes wrong is noted
     * in supervisor.log (stderr is /dev/null once the launcher has its "ok"). */
    /* the named network namespace has served its purpose: from now on it lives
     * exactly as long as the job, and so does the veth end inside it */
    for (int i = 0; i < plan.unlinks.n; i++)
        if (plan.netns && !strcmp(plan.unlinks.v[i], plan.netns)) {
            if (umount2(plan.netns, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
                note(&s.lb, "umount `%s`: %s", plan.netns, strerror(errno));
            if (unlink(plan.netns) < 0 && errno != ENOENT)
                note(&s.lb, "unlink `%s`: %s", plan.netns, strerror(errno));
        }
    trace(&plan, "sup: ready");
    /* the launcher keeps this pipe: "done" on it says status.json is final, before
     * the cleanup, so the process that started the job learns of the end at once */
    if (s.launcher >= 0) {
        char ok[64];
        int n = snprintf(ok, sizeof ok, "ok %d %d\n", (int)getpid(), (int)s.init_pid);
        if (write_all(s.launcher, ok, n) < 0)
            note(&s.lb, "tell the launcher \"ok\": %s (the job runs; adopt() finds it)", strerror(errno));
    }
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(devnull, 2) < 0)
        note(&s.lb, "point fds 0, 1 and 2 at `/dev/null`: %s", strerror(errno));
    if (devnull >= 0)
        close(devnull);

    /* supervise */
    high_mark_start(&s.hm, &plan, &s.lb);
    trace(&plan, "sup: supervising");
    struct run_end end = {0};
    int init_status = supervise(&s, &end.reason);
    trace(&plan, "sup: init reaped");
    end.started = s.started;
    end.finished = now_wall();

    /* the outcome: init's report of the command's status, else init's own */
    for (;;) {
        ssize_t n = read(s.rep_r, s.line + s.len, sizeof s.line - 1 - s.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        s.len += n;
    }
    s.line[s.len] = 0;
    char *ex = strstr(s.line, "exit ");
    end.raw = ex ? atoi(ex + 5) : init_status;
    /* anything left in the cgroup (a v1 job's stragglers) is killed before reading */
    int empty = cgroup_empty_wait(&plan, s.init_pid, 5000, &s.lb);
    if (!empty)
        note(&s.lb, "processes remained in `%s` after SIGKILL for 5 s", plan.cgroups.v[0]);
    end.error = empty ? NULL : "processes remained in the cgroup after SIGKILL";
    /* the job is gone: what it wrote last is still in the pipes */
    logs_drain(&s.logs);
    trace(&plan, "sup: output drained");
    end.oom_kills = cgroup_oom_kills(&plan);
    high_mark_finish(&s.hm, &s.lb);
    end.high_events = s.hm.events;
    /* the job's network namespace died with init, and its veth with it: its address
     * (a lease file) is free now, before the status says the job ended */
    for (int i = 0; i < plan.unlinks.n; i++)
        if (unlink(plan.unlinks.v[i]) < 0 && errno != ENOENT)
            note(&s.lb, "unlink `%s`: %s", plan.unlinks.v[i], strerror(errno));
    write_status(&plan, &end, &s.lb);
    trace(&plan, "sup: status written");
    /* the cgroup goes before "done": a launcher that starts the next job at once
     * does not contend with this removal for the cgroup locks */
    cgroup_remove(&plan, &s.lb);
    trace(&plan, "sup: cgroup removed");
    if (s.launcher >= 0) {
        /* EPIPE: the launcher is gone, and learns of the end from status.json */
        if (write_all(s.launcher, "done\n", 5) < 0 && errno != EPIPE)
            note(&s.lb, "tell the launcher \"done\": %s", strerror(errno));
        close(s.launcher);
    }
    remove_trees(&s);
    trace(&plan, "sup: cleaned");
    return 0;
}
