/*
 * mlq-runtime exec: a command inside a running job (`mlq exec`, docs/executor.md).
 *
 *   mlq-runtime exec PLAN INIT_PID [--tty] [--report FD] [--env NAME=VALUE]... -- ARGS...
 *
 * Started by the executor (as root) with the caller's stdin, stdout and stderr as
 * fds 0-2. It joins the job's cgroup, enters the namespaces of the job's init (the
 * mount namespace puts it in the job's root), forks, and the child becomes what the
 * job's command became: the same supplementary groups, user namespace, bounding set,
 * ids, seccomp filter, capabilities, working directory and no_new_privs, the job's
 * environment, then exec. Nothing of the host stays open in it but fds 0-2. The
 * parent waits, forwards stop signals, and exits as the command did (128+N for a
 * signal); its own failures exit 125, an exec that fails 126 (127: not found), as
 * `docker exec`'s. REPORT: the caller's connection (mlq exec's, passed on by the
 * daemon): the exit code is written there as `{"exit": N}`, and when its other end
 * goes away the command's process group (its own: it calls setsid) gets SIGHUP, then
 * SIGKILL 5 s later; other signals to this process go to that group too. The parent stays
 * outside the job's cgroup, so that it is alive to reap the command when the job is
 * killed (the end of the job's pid namespace waits for that zombie); the command
 * gets SIGKILL if the parent dies.
 */
#include "runtime.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define EXEC_FAILED 125

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[2300];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    write_all(2, buf, (size_t)n);
}

/* Is PID the job's init: in a cgroup of this plan (not a pid reused by another)? */
static int is_job_init(const struct plan *p, pid_t pid)
{
    char path[64], *text;
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    size_t len;
    if (!(text = read_all(path, &len)))
        return 0;
    int ok = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && !ok; line = strtok_r(NULL, "\n", &save)) {
        char *rel = strrchr(line, ':');
        if (!rel || strlen(++rel) < 2)
            continue;
        for (int i = 0; i < p->cgroups.n && !ok; i++) {
            size_t a = strlen(p->cgroups.v[i]), b = strlen(rel);
            ok = a >= b && strcmp(p->cgroups.v[i] + a - b, rel) == 0;
        }
    }
    free(text);
    return ok;
}

/* The job's command: init's child (a job with a user namespace made its own there). */
static pid_t command_of(pid_t init)
{
    char path[96], *text;
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)init, (int)init);
    size_t len;
    if (!(text = read_all(path, &len)))
        return -1;
    long pid = strtol(text, NULL, 10);
    free(text);
    return pid > 0 ? (pid_t)pid : -1;
}

/* The namespaces init is in, opened while PIDFD says it is still the same process. */
static const struct {
    const char *name;
    int type;
} NS[] = {{"cgroup", CLONE_NEWCGROUP}, {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS},
          {"net", CLONE_NEWNET},       {"pid", CLONE_NEWPID}, {"mnt", CLONE_NEWNS}};
#define NNS ((int)(sizeof NS / sizeof NS[0]))

static int open_namespaces(pid_t pid, int pidfd, int fds[NNS], struct rt_err *err)
{
    for (int i = 0; i < NNS; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, NS[i].name);
        if ((fds[i] = open(path, O_RDONLY | O_CLOEXEC)) < 0)
            return fail(err, "namespaces", errno, "open `%s`", path);
    }
    /* the pid was not reused while they were opened */
    if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0)
        return fail(err, "namespaces", errno, "the job's init ended");
    return 0;
}

static int child_setup(const struct plan *p, int userfd, int tty, struct rt_err *err)
{
    setsid();
    if (tty && ioctl(0, TIOCSCTTY, 0) < 0)
        return fail(err, "terminal", errno, "make fd 0 the controlling terminal");
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL);
    /* as the command: host gids while root in the host's user namespace, then the
     * command's own user namespace */
    if (set_groups(p, err) < 0)
        return -1;
    if (userfd >= 0 && setns(userfd, CLONE_NEWUSER) < 0)
        return fail(err, "namespaces", errno, "enter the job's user namespace");
    if (become_command(p, err) < 0) /* security.c: as init.c's command */
        return -1;
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        for (int i = 3; i < 1024; i++)
            close(i);
    return 0;
}

int exec_main(int argc, char **argv)
{
    if (argc < 6) {
        say("usage: mlq-runtime exec PLAN INIT_PID [--tty] [--env NAME=VALUE]... -- ARGS... (mlq exec)");
        return EXEC_FAILED;
    }
    struct plan plan;
    struct rt_err err = {0};
    if (plan_read(&plan, argv[2], &err) < 0) {
        say("mlq exec: %s: %s", err.step, err.msg);
        return EXEC_FAILED;
    }
    char *end = NULL;
    long init = strtol(argv[3], &end, 10);
    int tty = 0, i = 4, report = -1;
    /* the job's environment, and what the caller adds (TERM for a terminal) */
    int nenv = 0;
    while (plan.env.v && plan.env.v[nenv])
        nenv++;
    char **env = calloc((size_t)(nenv + argc + 1), sizeof *env);
    if (!env || !end || *end || init < 2) {
        say("mlq exec: bad arguments");
        return EXEC_FAILED;
    }
    memcpy(env, plan.env.v, (size_t)nenv * sizeof *env);
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--tty") == 0)
            tty = 1;
        else if (strcmp(argv[i], "--report") == 0 && i + 1 < argc)
            report = atoi(argv[++i]);
        else if (strcmp(argv[i], "--env") == 0 && i + 1 < argc && strchr(argv[i + 1], '='))
            env[nenv++] = argv[++i];
        else {
            say("mlq exec: unknown argument `%s`", argv[i]);
            return EXEC_FAILED;
        }
    }
    if (i + 1 >= argc) {
        say("mlq exec: no command after --");
        return EXEC_FAILED;
    }
    char **args = argv + i + 1;
    /* root's powers stay out of reach of the job's processes: no core, no ptrace */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    pid_t pid = (pid_t)init, userns_of = -1;
    int pidfd AUTO_CLOSE = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 || !is_job_init(&plan, pid)) {
        say("mlq exec: the job is not running (its init %ld is gone)", init);
        return EXEC_FAILED;
    }
    int userfd AUTO_CLOSE = -1;
    if (plan.userns) {
        char path[64];
        if ((userns_of = command_of(pid)) > 0)
            snprintf(path, sizeof path, "/proc/%d/ns/user", (int)userns_of);
        if (userns_of <= 0 || (userfd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
            say("mlq exec: the job's command is not running");
            return EXEC_FAILED;
        }
    }
    /* the namespaces (opened here, where /proc is the host's) and the cgroup's
     * procs files (the plan's paths are the host's): the child joins them; this
     * process enters only the pid namespace, which applies to the child. It stays
     * outside the job's cgroup, so that when the job is killed it is alive to reap
     * the command (which is in the job's pid namespace, and whose zombie the
     * namespace's end waits for). */
    int fds[NNS], procs[16];
    for (int k = 0; k < NNS; k++)
        fds[k] = -1;
    int nprocs = plan.cgroups.n < 16 ? plan.cgroups.n : 16;
    int ok = open_namespaces(pid, pidfd, fds, &err) == 0;
    for (int k = 0; k < nprocs; k++) {
        char path[PATH_BUF];
        procs[k] = -1;
        if (ok && (pathf(path, sizeof path, "%s/cgroup.procs", plan.cgroups.v[k]) < 0 ||
                   (procs[k] = open(path, O_WRONLY | O_CLOEXEC)) < 0))
            ok = fail(&err, "cgroup", errno, "open `%s`", path) == 0;
    }
    int pidns = 4; /* NS[4] */
    if (ok && setns(fds[pidns], CLONE_NEWPID) < 0)
        ok = fail(&err, "namespaces", errno, "enter the job's pid namespace") == 0;
    if (!ok) {
        say("mlq exec: %s: %s", err.step, err.msg);
        return EXEC_FAILED;
    }
    sigset_t stops, old; /* every signal, SIGCHLD included, taken by sigtimedwait */
    sigemptyset(&stops);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            sigaddset(&stops, s);
    sigprocmask(SIG_BLOCK, &stops, &old);
    pid_t child = fork();
    if (child < 0) {
        say("mlq exec: fork: %s", strerror(errno));
        return EXEC_FAILED;
    }
    if (child == 0) {
        /* the job's cgroup (in the host's cgroup namespace still), then its other
         * namespaces, the mount namespace last: it puts this process in the job's root */
        for (int k = 0; k < nprocs && ok; k++)
            if (write(procs[k], "0", 1) != 1)
                ok = fail(&err, "cgroup", errno, "join the job's cgroup `%s`", plan.cgroups.v[k]) == 0;
        for (int k = 0; k < NNS && ok; k++)
            if (k != pidns && setns(fds[k], NS[k].type) < 0)
                ok = fail(&err, "namespaces", errno, "enter the job's %s namespace", NS[k].name) == 0;
        if (ok && syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0)
            ok = fail(&err, "namespaces", errno, "the job ended") == 0;
        if (!ok || child_setup(&plan, userfd, tty, &err) < 0) {
            say("mlq exec: %s: %s", err.step, err.msg);
            _exit(EXEC_FAILED);
        }
        char buf[PATH_BUF];
        const char *exe = find_exec(&plan, args[0], buf, sizeof buf); /* init.c's */
        if (exe == args[0] && !strchr(exe, '/')) {
            say("mlq exec: %s: not found in the job's PATH", args[0]);
            _exit(127);
        }
        /* seccomp last, right before exec (as the job's command) */
        if (plan.nnp && plan.seccomp && install_seccomp(&plan, &err) < 0) {
            say("mlq exec: %s: %s", err.step, err.msg);
            _exit(EXEC_FAILED);
        }
        /* what the caller started ends if mlq's side of it ends (cleared by the id
         * switch, so set last) */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        execve(exe, args, env);
        int e = errno;
        say("mlq exec: %s: %s", args[0], strerror(e));
        _exit(e == ENOENT ? 127 : 126);
    }
    for (int k = 0; k < NNS; k++)
        close(fds[k]);
    for (int k = 0; k < nprocs; k++)
        close(procs[k]);
    /* the parent keeps only stderr, so the caller's end sees EOF when the child ends */
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2)
            close(null);
    }
    if (report >= 0)
        fcntl(report, F_SETFD, FD_CLOEXEC); /* never the command's */
    int sfd AUTO_CLOSE = signalfd(-1, &stops, SFD_CLOEXEC);
    long long hup_at = -1;
    for (;;) {
        struct pollfd pf[2] = {{.fd = sfd, .events = POLLIN}, {.fd = report, .events = POLLRDHUP}};
        int n = poll(pf, report >= 0 && hup_at < 0 ? 2 : 1, sfd < 0 || hup_at >= 0 ? 200 : -1);
        if (n > 0 && pf[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
            kill(-child, SIGHUP); /* mlq exec went away: as a terminal's hangup, to its group */
            hup_at = now_ms();
        }
        if (hup_at >= 0 && now_ms() - hup_at > 5000)
            kill(-child, SIGKILL);
        struct signalfd_siginfo si;
        while (sfd >= 0 && pf[0].revents & POLLIN && read(sfd, &si, sizeof si) == sizeof si) {
            if (si.ssi_signo != SIGCHLD)
                kill(-child, (int)si.ssi_signo); /* a stop for the command's process group */
            pf[0].revents = 0;
        }
        int status;
        pid_t r = waitpid(child, &status, WNOHANG);
        if (r == child || (r < 0 && errno != EINTR)) {
            int code = r != child ? EXEC_FAILED : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (report >= 0) {
                char line[32];
                int len = snprintf(line, sizeof line, "{\"exit\": %d}\n", code);
                write_all(report, line, (size_t)len);
            }
            return code;
        }
    }
}
