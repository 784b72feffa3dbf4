/*
 * mlq-init, PID 1 of the job's namespaces, and the command it forks.
 *
 * Init's set-up is one flat sequence, each step saying why it is where it is; a step
 * that fails reports "error <step>: <op> `<object>`: <why>" to the supervisor and
 * init exits: what it made (mounts, the namespaces themselves) dies with it.  Then
 * init forwards stop signals to the command, reaps orphans and reports the command's
 * wait status.
 */
#include "runtime.h"

#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* ps inside the job shows PID 1 as "mlq-init", not the helper's path and plan */
static void name_init(const struct init_args *a)
{
    prctl(PR_SET_NAME, "mlq-init", 0, 0, 0);
    if (a->argv_area && a->argv_len > 9) {
        memset(a->argv_area, 0, a->argv_len);
        memcpy(a->argv_area, "mlq-init", 8);
    }
}

const char *find_exec(const struct plan *p, const char *name, char *buf, size_t size)
{
    if (strchr(name, '/'))
        return name;
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (int i = 0; i < p->env.n; i++)
        if (!strncmp(p->env.v[i], "PATH=", 5))
            path = p->env.v[i] + 5;
    char *copy AUTO_FREE = strdup(path);
    char *save = NULL;
    for (char *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir; dir = strtok_r(NULL, ":", &save))
        if (pathf(buf, size, "%s/%s", *dir ? dir : ".", name) == 0 && access(buf, X_OK) == 0)
            return buf;
    return name;
}

/* The command's process, from fork to exec, in order.  ERRFD: a close-on-exec pipe
 * to init, so an exec that fails says why and one that succeeds says nothing. */
static int command_setup(const struct plan *p, int errfd, int usync_r, int usync_w, struct rt_err *err)
{
    /* its own session; the signals init blocked, open to it again */
    setsid();
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL);
    /* the user's supplementary groups (host gids), while still root in the host's
     * user namespace */
    if (set_groups(p, err) < 0)
        return -1;
    if (p->userns) {
        /* a user namespace of its own, inside the others (so those stay owned by the
         * host): init, still real root, writes the maps */
        if (unshare(CLONE_NEWUSER) < 0)
            return fail(err, "user namespace", errno, "unshare `CLONE_NEWUSER`");
        char c = 'u';
        if (write(usync_w, &c, 1) != 1)
            return fail(err, "user namespace", errno, "ask init for the uid/gid maps");
        ssize_t r = read(usync_r, &c, 1);
        if (r != 1 || c != 'g')
            return fail(err, "user namespace", r < 0 ? errno : EPIPE, "wait for init to write the uid/gid maps");
    }
    /* init is -1000, so that the OOM killer picks the job: the job is not */
    if (write_file("/proc/self/oom_score_adj", "0") < 0)
        return fail(err, "oom_score_adj", errno, "write `/proc/self/oom_score_adj` 0");
    trace(p, "cmd: ids");
    if (become_command(p, err) < 0) /* security.c: in the order it says why */
        return -1;
    int null = open("/dev/null", O_RDONLY);
    if (null < 0)
        return fail(err, "start", errno, "open `/dev/null` for stdin");
    if (null != 0) {
        if (dup2(null, 0) < 0)
            return fail(err, "start", errno, "dup2 `/dev/null` to stdin");
        close(null);
    }
    /* nothing of the launcher or of mlq leaks: fds 3 and up close at exec */
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        for (int i = 3; i < 1024; i++)
            if (i != errfd)
                close(i);
    return 0;
}

__attribute__((noreturn)) static void command_main(const struct plan *p, int errfd, int usync_r, int usync_w)
{
    struct rt_err err = {0};
    if (command_setup(p, errfd, usync_r, usync_w, &err) == 0) {
        char pathbuf[PATH_BUF];
        const char *exe = find_exec(p, p->args.v[0], pathbuf, sizeof pathbuf);
        trace(p, "cmd: exec");
        /* seccomp last, right before exec, so as few calls as possible run under it;
         * no_new_privs lets it be installed without CAP_SYS_ADMIN */
        if (!(p->nnp && p->seccomp) || install_seccomp(p, &err) == 0) {
            execve(exe, p->args.v, p->env.v);
            fail(&err, "exec", errno, "execve `%s`", p->args.v[0]);
        }
    }
    report(errfd, &err);
    _exit(127);
}

/* Init, from its first instruction to the command's exec. */
static int init_setup(const struct init_args *a, int *errp_r, pid_t *cmd, struct rt_err *err)
{
    const struct plan *p = a->p;
    /* 1. v1: into the job's cgroup before anything else (on v2 clone3 created init in
     * it, or the supervisor's fallback moves it while the mounts below are made) */
    if (p->self_join) {
        if (cgroup_join_self(p, err) < 0)
            return -1;
        trace(p, "init: in cgroup");
    }
    /* 2. the bridge's network namespace, if any (else clone made an empty one) */
    if (p->netns) {
        int nfd AUTO_CLOSE = open(p->netns, O_RDONLY | O_CLOEXEC);
        if (nfd < 0 || setns(nfd, CLONE_NEWNET) < 0)
            return fail(err, "network", errno, "join `%s`", p->netns);
    }
    /* 3. the root and the mounts that do not show cgroups, built while the supervisor
     * moves this process into the job's cgroup if that is the path (on v1 the kernel
     * makes that wait for an RCU grace period) */
    int rootfd AUTO_CLOSE = -1;
    if (mount_root(p, &rootfd, err) < 0)
        return -1;
    int split = p->cg_mount_start >= 0 ? p->cg_mount_start : p->mounts.n;
    if (mount_range(p, rootfd, 0, split, err) < 0)
        return -1;
    /* 4. nothing of the job runs before it is in its cgroup: the supervisor's word */
    char c;
    ssize_t r = read(a->go, &c, 1);
    if (r != 1)
        return fail(err, "cgroup", r < 0 ? errno : EPIPE, "wait for the supervisor to place the job in its cgroup");
    close(a->go);
    /* a cgroup namespace rooted at the job's own cgroup: the job sees only its own
     * limits (and the mounts below make them read-only) */
    if (unshare(CLONE_NEWCGROUP) < 0)
        return fail(err, "namespaces", errno, "unshare `CLONE_NEWCGROUP`");
    /* 5. the cgroup filesystem from inside that namespace; /dev's symlinks */
    if (mount_range(p, rootfd, split, p->mounts.n, err) < 0 || finish_root(p, err) < 0)
        return -1;
    close(TAKE_FD(rootfd));
    trace(p, "init: mounts done");
    /* 6. into the new root, the old one detached */
    if (pivot_into_root(p, err) < 0)
        return -1;
    trace(p, "init: pivoted");
    /* 7. masked and read-only paths, hostname, loopback */
    if (protect_paths(p, err) < 0)
        return -1;
    trace(p, "init: protected");
    if (p->hostname && sethostname(p->hostname, strlen(p->hostname)) < 0)
        return fail(err, "hostname", errno, "sethostname `%s`", p->hostname);
    trace(p, "init: hostname");
    if ((p->newnet || p->netns) && loopback_up(err) < 0)
        return -1;
    trace(p, "init: lo up");
    /* init must outlive its job under memory pressure, so that the OOM killer picks
     * the command, and the cgroup's oom_kill counter tells the outcome. Best effort:
     * lowering it takes CAP_SYS_RESOURCE, which a helper run inside a container may
     * lack (EACCES), and the job is no less isolated for it. */
    if (write_file("/proc/self/oom_score_adj", "-1000") < 0) {
        /* refused: the job runs all the same */
    }

    /* 8. the command: forked, its exec's failure coming back on a close-on-exec pipe */
    int errp[2], u1[2] = {-1, -1}, u2[2] = {-1, -1};
    if (pipe2(errp, O_CLOEXEC) < 0 || (p->userns && (pipe2(u1, O_CLOEXEC) < 0 || pipe2(u2, O_CLOEXEC) < 0)))
        return fail(err, "start", errno, "pipe for the command");
    /* every signal is init's to forward or reap: blocked, and taken with sigwaitinfo */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    trace(p, "init: forking");
    pid_t pid = fork();
    if (pid < 0)
        return fail(err, "start", errno, "fork the command");
    if (pid == 0) {
        close(errp[0]);
        if (p->userns) {
            close(u1[0]);
            close(u2[1]);
        }
        command_main(p, errp[1], u2[0], u1[1]);
    }
    *cmd = pid;
    *errp_r = errp[0];
    close(errp[1]);
    if (p->userns) {
        /* init keeps only its own ends: a command that fails before it asks for its
         * maps closes the other, and this read ends (errp then says why) */
        close(u1[1]);
        close(u2[0]);
        /* the command is in its user namespace (or failed, which errp says) */
        if (read(u1[0], &c, 1) == 1) {
            if (write_id_maps(p, pid, err) < 0)
                return -1;
            c = 'g';
            if (write(u2[1], &c, 1) != 1)
                return fail(err, "user namespace", errno, "release the command");
        }
    }
    return 0;
}

__attribute__((noreturn)) void init_main(const struct init_args *a)
{
    const struct plan *p = a->p;
    name_init(a);
    struct rt_err err = {0};
    int errp = -1;
    pid_t pid = -1;
    if (init_setup(a, &errp, &pid, &err) < 0) {
        report(a->report, &err);
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        _exit(127);
    }
    /* the exec's outcome: EOF (exec'd) or the command's "error ..." line */
    char msg[sizeof err.msg + 128];
    ssize_t n = read(errp, msg, sizeof msg - 1);
    close(errp);
    if (n > 0) {
        /* the command failed before exec: pass its message on */
        write_all(a->report, msg, n); /* if the supervisor is gone, no one is told */
        waitpid(pid, NULL, 0);
        _exit(127);
    }
    trace(p, "init: exec ok");
    if (write_all(a->report, "ready\n", 6) < 0)
        _exit(127); /* the supervisor is gone: it will not release the job */
    /* forward, reap, and leave with the command's status */
    sigset_t all;
    sigfillset(&all);
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&all, &si);
        if (sig < 0)
            continue;
        if (sig == SIGCHLD) {
            int st;
            pid_t r;
            while ((r = waitpid(-1, &st, WNOHANG)) > 0) {
                if (r != pid)
                    continue;
                trace(p, "init: command exited");
                char line[32];
                int len = snprintf(line, sizeof line, "exit %d\n", st);
                /* lost if the supervisor is gone; init's own status carries it too */
                write_all(a->report, line, len);
                _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            }
        } else if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGUSR1 || sig == SIGUSR2 ||
                   sig == SIGQUIT) {
            kill(pid, sig);
        }
    }
}
