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
 * The plan format, the control protocol and the set-up order are described in
 * docs/executor.md.  Errors name the step and the object, crun-style.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <ftw.h>
#include <grp.h>
#include <pthread.h>

struct mnt {
    char *src, *dst, *type, *data;
    unsigned long flags;
    int ro_bind, is_file;
    int asuser;        /* a host path the job's user named: opened with their credentials */
    unsigned long lock; /* MS_RDONLY/NOSUID/NODEV/NOEXEC applied to the bind after it is made */
};

struct pair {
    char *a, *b;
};

/* Every list of the plan grows as it is read (n: used, c: allocated): a plan has no
 * fixed bounds (a job may set 2,000 env entries or have 100 groups), and a line
 * dropped to fit would launch another job than the one asked for. */
static struct {
    char *rundir, *status, *control, *out, *err, *logcut, *rootfs, *lower, *upper, *work;
    char *hostname, *cwd, *netns, *cg_kill, *cg_procs, *v1_usage, *v1_evctl, *high_file;
    char *oomfile, *oomkey, *peakfile;
    char **cgroups;
    int ncg, ccg;
    struct mnt *mounts;
    int nmounts, cmounts, cg_mount_start; /* mounts from cg_mount_start on need the cgroup namespace */
    char **masks;
    int nmask, cmask;
    char **ropaths;
    int nro, cro;
    struct pair *links; /* target, path */
    int nlinks, clinks;
    char **env;
    int nenv, cenv;
    char **args;
    int nargs, cargs;
    struct pair *stats; /* name, file */
    int nstats, cstats;
    char **rmtrees;
    int nrm, crm;
    char **unlinks;
    int nunl, cunl;
    char *uidmap, *gidmap;
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    int ngroups, cgroups_n;
    /* the host credentials that user-named paths are opened with ("opener" line) */
    int have_opener, lower_asuser;
    uid_t op_uid;
    gid_t op_gid;
    gid_t *op_groups;
    int op_ngroups, cop_groups;
    char **allow, **deny; /* where a user-named path may resolve to ("pathrule") */
    int nallow, ndeny, callow, cdeny;
    unsigned long long caps;
    int nnp, seccomp, readonly_root, userns, newnet, self_join;
    int stop_sig;
    long grace_ms, time_limit_ms;
    long long v1_high;
    long long log_limit; /* bytes kept of each of stdout and stderr; 0: all */
} C;

static int report_fd = -1; /* where "error <step>: ..." lines go */
static int trace_fd = -1;  /* "trace PATH" in the plan: per-step timings, for bench/launch */

static void tmark(const char *label)
{
    if (trace_fd < 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char buf[128];
    int n = snprintf(buf, sizeof buf, "%d %lld.%06ld %s\n", getpid(), (long long)ts.tv_sec, ts.tv_nsec / 1000, label);
    ssize_t w = write(trace_fd, buf, n);
    (void)w;
}

/* ---------- small helpers ---------- */

static void say(int fd, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n >= (int)sizeof buf)
        n = sizeof buf - 1;
    /* one write per line: lines from init and the command never interleave */
    ssize_t w = write(fd, buf, n);
    (void)w;
}

/* Report a failed set-up step and end this process.  Used before the job runs. */
static void die(const char *step, const char *fmt, ...)
{
    int e = errno;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (report_fd >= 0)
        say(report_fd, "error %s: %s: %s\n", step, msg, strerror(e));
    else
        fprintf(stderr, "mlq-runtime: error %s: %s: %s\n", step, msg, strerror(e));
    _exit(127);
}

static double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, s, strlen(s));
    int e = errno;
    close(fd);
    errno = e;
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

static ssize_t read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return n;
}

/* The value of "key N" in a flat-keyed cgroup file, or -1. */
static long long keyed_value(const char *path, const char *key)
{
    char buf[8192];
    if (read_file(path, buf, sizeof buf) < 0)
        return -1;
    size_t kl = strlen(key);
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!strncmp(line, key, kl) && line[kl] == ' ')
            return atoll(line + kl + 1);
        line = nl ? nl + 1 : NULL;
    }
    return -1;
}

/* ---------- plan parsing ---------- */

static char *unescape(char *s)
{
    char *o = s, *r = s;
    while (*r) {
        if (*r == '\\' && r[1]) {
            r++;
            *o++ = *r == 'n' ? '\n' : *r == 't' ? '\t' : *r;
            r++;
        } else {
            *o++ = *r++;
        }
    }
    *o = 0;
    return s;
}

static unsigned long mount_flags(char *spec, int *ro_bind, int *is_file)
{
    unsigned long f = 0;
    *ro_bind = 0;
    *is_file = 0;
    for (char *tok = strtok(spec, ","); tok; tok = strtok(NULL, ",")) {
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
        else if (!strcmp(tok, "asuser"))
            ;  /* read by the caller */
        else if (!strcmp(tok, "relatime"))
            f |= MS_RELATIME;
        else if (!strcmp(tok, "file"))
            *is_file = 1;
        else if (*tok)
            die("read plan", "unknown mount flag \"%s\"", tok);
    }
    if ((f & MS_BIND) && (f & MS_RDONLY)) {
        /* a bind mount ignores MS_RDONLY; it takes a second remount */
        *ro_bind = 1;
        f &= ~MS_RDONLY;
    }
    return f;
}

/* The next free slot of a plan list, which grows by doubling. */
static void *slot(void *listp, int *n, int *cap, size_t size, const char *what)
{
    void **list = listp;
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 16;
        void *p = realloc(*list, (size_t)c * size);
        if (!p)
            die("read plan", "room for %d \"%s\" lines", c, what);
        *list = p;
        *cap = c;
    }
    return (char *)*list + (size_t)(*n)++ * size;
}
#define PUSH(list, n, cap, what) ((__typeof__(list))slot(&(list), &(n), &(cap), sizeof *(list), what))

static long long plan_number(const char *key, const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s ? s : "", &end, 10);
    if (errno || !s || !*s || *end || v < 0) {
        errno = EINVAL;
        die("read plan", "%s \"%s\" is not a count of bytes", key, s ? s : "");
    }
    return v;
}

static void parse_plan(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("read plan", "open `%s`", path);
    struct stat st;
    fstat(fd, &st);
    char *buf = malloc(st.st_size + 1);
    ssize_t n = read(fd, buf, st.st_size);
    close(fd);
    if (n != st.st_size)
        die("read plan", "read `%s`", path);
    buf[n] = 0;
    C.stop_sig = SIGTERM;
    C.grace_ms = 30000;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[8] = {0};
        int nf = 0;
        for (char *p = line; p;) {
            if (nf == 8) {
                errno = E2BIG;
                die("read plan", "a \"%s\" line of more than 8 fields", f[0]);
            }
            f[nf++] = p;
            p = strchr(p, '\t');
            if (p)
                *p++ = 0;
        }
        for (int i = 0; i < nf; i++)
            unescape(f[i]);
        char *k = f[0];
#define ARG(i) (nf > (i) ? f[i] : "")
        if (!strcmp(k, "rundir")) C.rundir = f[1];
        else if (!strcmp(k, "trace")) trace_fd = open(f[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        else if (!strcmp(k, "status")) C.status = f[1];
        else if (!strcmp(k, "control")) C.control = f[1];
        else if (!strcmp(k, "stdout")) C.out = f[1];
        else if (!strcmp(k, "stderr")) C.err = f[1];
        else if (!strcmp(k, "logcut")) C.logcut = f[1];
        else if (!strcmp(k, "log_limit")) C.log_limit = plan_number(k, f[1]);
        else if (!strcmp(k, "rootfs")) C.rootfs = f[1];
        else if (!strcmp(k, "overlay")) { C.lower = f[1]; C.upper = f[2]; C.work = f[3]; }
        else if (!strcmp(k, "readonly_root")) C.readonly_root = atoi(f[1]);
        else if (!strcmp(k, "hostname")) C.hostname = f[1];
        else if (!strcmp(k, "cwd")) C.cwd = f[1];
        else if (!strcmp(k, "netns")) C.netns = f[1];
        else if (!strcmp(k, "newnet")) C.newnet = atoi(f[1]);
        else if (!strcmp(k, "cgroup")) *PUSH(C.cgroups, C.ncg, C.ccg, k) = f[1];
        else if (!strcmp(k, "cgroup_procs")) C.cg_procs = f[1];
        else if (!strcmp(k, "self_join")) C.self_join = atoi(f[1]);
        else if (!strcmp(k, "cgroup_kill")) C.cg_kill = f[1];
        else if (!strcmp(k, "oom")) { C.oomfile = f[1]; C.oomkey = f[2]; }
        else if (!strcmp(k, "peak")) C.peakfile = f[1];
        else if (!strcmp(k, "v1_high")) { C.v1_usage = f[1]; C.v1_evctl = f[2]; C.v1_high = atoll(f[3]); C.high_file = f[4]; }
        else if (!strcmp(k, "stat")) *PUSH(C.stats, C.nstats, C.cstats, k) = (struct pair){f[1], f[2]};
        else if (!strcmp(k, "mount")) {
            struct mnt *m = PUSH(C.mounts, C.nmounts, C.cmounts, k);
            memset(m, 0, sizeof *m);
            m->src = f[1]; m->dst = f[2]; m->type = f[3];
            m->asuser = strstr(ARG(4), "asuser") != NULL;
            m->flags = mount_flags(ARG(4), &m->ro_bind, &m->is_file);
            if (m->flags & MS_BIND)
                m->lock = (m->ro_bind ? MS_RDONLY : 0) | (m->flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC));
            m->data = nf > 5 && *f[5] ? f[5] : NULL;
        }
        else if (!strcmp(k, "cgroupns_mounts")) C.cg_mount_start = C.nmounts;
        else if (!strcmp(k, "mask")) *PUSH(C.masks, C.nmask, C.cmask, k) = f[1];
        else if (!strcmp(k, "ropath")) *PUSH(C.ropaths, C.nro, C.cro, k) = f[1];
        else if (!strcmp(k, "symlink")) *PUSH(C.links, C.nlinks, C.clinks, k) = (struct pair){f[1], f[2]};
        else if (!strcmp(k, "env")) *PUSH(C.env, C.nenv, C.cenv, k) = f[1];
        else if (!strcmp(k, "arg")) *PUSH(C.args, C.nargs, C.cargs, k) = f[1];
        else if (!strcmp(k, "user")) { C.uid = atoi(f[1]); C.gid = atoi(f[2]); }
        else if (!strcmp(k, "group")) *PUSH(C.groups, C.ngroups, C.cgroups_n, k) = atoi(f[1]);
        else if (!strcmp(k, "opener")) {
            C.have_opener = 1; C.op_uid = atoi(f[1]); C.op_gid = atoi(f[2]);
            for (char *g = strtok(ARG(3), ","); g; g = strtok(NULL, ","))
                *PUSH(C.op_groups, C.op_ngroups, C.cop_groups, k) = atoi(g);
        }
        else if (!strcmp(k, "lower_asuser")) C.lower_asuser = atoi(f[1]);
        else if (!strcmp(k, "pathrule") && !strcmp(ARG(1), "allow")) *PUSH(C.allow, C.nallow, C.callow, k) = f[2];
        else if (!strcmp(k, "pathrule") && !strcmp(ARG(1), "deny")) *PUSH(C.deny, C.ndeny, C.cdeny, k) = f[2];
        else if (!strcmp(k, "caps")) C.caps = strtoull(f[1], NULL, 10);
        else if (!strcmp(k, "no_new_privs")) C.nnp = atoi(f[1]);
        else if (!strcmp(k, "seccomp")) C.seccomp = atoi(f[1]);
        else if (!strcmp(k, "userns")) { C.userns = 1; C.uidmap = f[1]; C.gidmap = f[2]; }
        else if (!strcmp(k, "stop_signal")) C.stop_sig = atoi(f[1]);
        else if (!strcmp(k, "grace_ms")) C.grace_ms = atol(f[1]);
        else if (!strcmp(k, "time_limit_ms")) C.time_limit_ms = atol(f[1]);
        else if (!strcmp(k, "rmtree")) *PUSH(C.rmtrees, C.nrm, C.crm, k) = f[1];
        else if (!strcmp(k, "unlink")) *PUSH(C.unlinks, C.nunl, C.cunl, k) = f[1];
        else {
            /* a step this helper does not know would be a step not taken */
            errno = EINVAL;
            die("read plan", "unknown step \"%s\" in `%s`", k, path);
        }
#undef ARG
    }
    if (!C.rundir || !C.status || !C.rootfs || !C.nargs || !C.ncg)
        die("read plan", "%s lacks rundir, status, rootfs, arg or cgroup", path);
    if (!C.out || !C.err || !C.logcut)
        die("read plan", "%s lacks stdout, stderr or logcut", path);
    /* execve wants both lists NULL-terminated: the slot is made here, not after fork */
    *PUSH(C.args, C.nargs, C.cargs, "arg") = NULL;
    C.nargs--;
    *PUSH(C.env, C.nenv, C.cenv, "env") = NULL;
    C.nenv--;
}

/* ---------- paths inside the new root, resolved without escaping it ---------- */

/* Open (creating what is missing) PATH inside the root directory ROOTFD; symlinks in
 * the image are resolved as if ROOTFD were "/", so an image cannot point a mount
 * target at the host (runc's securejoin, with openat2's RESOLVE_IN_ROOT). */
static int open_in_root(int rootfd, const char *path, int is_file)
{
    struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    int fd = syscall(SYS_openat2, rootfd, path, &how, sizeof how);
    if (fd >= 0 || errno != ENOENT)
        return fd;
    /* create the missing components one by one, each looked up from the root again */
    char prefix[4096] = "";
    size_t plen = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, "/");
        if (plen + len + 2 >= sizeof prefix) {
            errno = ENAMETOOLONG;
            return -1;
        }
        int parent = plen ? (int)syscall(SYS_openat2, rootfd, prefix, &how, sizeof how) : dup(rootfd);
        if (parent < 0)
            return -1;
        prefix[plen++] = '/';
        memcpy(prefix + plen, p, len);
        plen += len;
        prefix[plen] = 0;
        p += len;
        int last = !p[strspn(p, "/")];
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)len, p - len);
        fd = syscall(SYS_openat2, rootfd, prefix, &how, sizeof how);
        if (fd < 0 && errno == ENOENT) {
            if (last && is_file) {
                int c = openat(parent, name, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (c >= 0)
                    close(c);
            } else {
                mkdirat(parent, name, 0755);
            }
            fd = syscall(SYS_openat2, rootfd, prefix, &how, sizeof how);
        }
        close(parent);
        if (fd < 0)
            return -1;
        if (!last)
            close(fd);
        else
            return fd;
    }
    return dup(rootfd);
}

static void fdpath(char *buf, size_t size, int fd)
{
    snprintf(buf, size, "/proc/self/fd/%d", fd);
}

/* ---------- host paths named by the job's user ---------- */

static int path_under(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    if (n == 1 && prefix[0] == '/')
        return 1;
    return !strncmp(path, prefix, n) && (path[n] == 0 || path[n] == '/');
}

/* Open PATH with the job user's filesystem credentials, so the kernel checks every
 * directory on the way as that user (setfsuid and friends are per thread, and init
 * has one), then check where it really leads against the plan's path rules.  The
 * mount then uses /proc/self/fd/N: a path swapped for a symlink after the daemon's
 * check, or after this open, changes nothing.  RULES: 1 applies the allow list too
 * (volumes); the deny list applies to every user-named path. */
static int open_as_user(const char *what, const char *path, int rules)
{
    gid_t saved[256];
    int nsaved = getgroups(256, saved);
    if (C.have_opener) {
        if (syscall(SYS_setgroups, C.op_ngroups, C.op_groups) < 0)
            die("mount", "take the groups of uid %d to open %s", C.op_uid, path);
        syscall(SYS_setfsgid, C.op_gid);
        syscall(SYS_setfsuid, C.op_uid);
        if ((uid_t)syscall(SYS_setfsuid, -1) != C.op_uid)
            die("mount", "take uid %d to open %s", C.op_uid, path);
    }
    int fd = open(path, O_PATH | O_CLOEXEC);
    int e = errno;
    if (C.have_opener) {
        syscall(SYS_setfsuid, 0);
        syscall(SYS_setfsgid, 0);
        if (nsaved >= 0)
            syscall(SYS_setgroups, nsaved, saved);
    }
    errno = e;
    if (fd < 0)
        die("mount", "%s `%s` as uid %d", what, path, C.have_opener ? (int)C.op_uid : 0);
    char link[64], real[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, real, sizeof real - 1);
    if (n < 0)
        die("mount", "%s `%s`: read where it leads", what, path);
    real[n] = 0;
    for (int i = 0; i < C.ndeny; i++)
        if (path_under(real, C.deny[i])) {
            errno = EPERM;
            die("mount", "%s `%s` leads to %s, under %s, which no job may mount", what, path, real, C.deny[i]);
        }
    if (rules && C.nallow) {
        int ok = 0;
        for (int i = 0; i < C.nallow && !ok; i++)
            ok = path_under(real, C.allow[i]);
        if (!ok) {
            errno = EPERM;
            die("mount", "%s `%s` leads to %s, outside the volume paths granted to this job", what, path, real);
        }
    }
    return fd;
}

#ifndef MOUNT_ATTR_RDONLY
struct mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#define MOUNT_ATTR_RDONLY 0x1
#define MOUNT_ATTR_NOSUID 0x2
#define MOUNT_ATTR_NODEV 0x4
#define MOUNT_ATTR_NOEXEC 0x8
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

/* Read-only, nosuid, nodev, noexec on a bind mount and, with mount_setattr (5.12+),
 * on every mount below it: an "rbind,ro" volume must not have writable submounts. */
static void lock_bind(const char *target, const char *dst, unsigned long lock)
{
    struct mount_attr a = {0};
    a.attr_set = (lock & MS_RDONLY ? MOUNT_ATTR_RDONLY : 0) | (lock & MS_NOSUID ? MOUNT_ATTR_NOSUID : 0) |
                 (lock & MS_NODEV ? MOUNT_ATTR_NODEV : 0) | (lock & MS_NOEXEC ? MOUNT_ATTR_NOEXEC : 0);
    if (syscall(SYS_mount_setattr, AT_FDCWD, target, AT_RECURSIVE, &a, sizeof a) == 0)
        return;
    if (errno != ENOSYS)
        die("mount", "lock %s (read-only, nosuid, nodev)", dst);
    if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | lock, NULL) < 0)
        die("mount", "remount %s read-only, nosuid, nodev", dst);
}

/* ---------- init: the root filesystem ---------- */

/* The root: / made private (nothing propagates to the host), then the overlay. */
static int mount_root(void)
{
    tmark("init: mounts begin");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        die("mount", "make / private (so nothing propagates to the host)");
    char opts[16384], lowerfd[64];
    const char *lower = C.lower;
    if (C.lower_asuser) {
        /* a rootfs directory the user named: reached as the user, mounted by fd */
        snprintf(lowerfd, sizeof lowerfd, "/proc/self/fd/%d", open_as_user("image", C.lower, 0));
        lower = lowerfd;
    }
    if (snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s,volatile", lower, C.upper, C.work) >=
        (int)sizeof opts) {
        errno = E2BIG; /* cut short, it would name other layers */
        die("mount overlay", "options for %s", C.rootfs);
    }
    if (C.upper && *C.upper) {
        int r = mount("overlay", C.rootfs, "overlay", 0, opts);
        if (r < 0 && errno == EINVAL) {
            /* kernels before 5.10 know no "volatile": sync the upper layer instead */
            *strrchr(opts, ',') = 0;
            r = mount("overlay", C.rootfs, "overlay", 0, opts);
        }
        if (r < 0)
            die("mount overlay", "%s on %s", opts, C.rootfs);
    } else if (mount(lower, C.rootfs, NULL, MS_BIND | MS_REC, NULL) < 0) {
        die("mount root", "bind %s on %s", C.lower, C.rootfs);
    }
    tmark("init: overlay mounted");
    int rootfd = open(C.rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        die("mount", "open %s", C.rootfs);
    return rootfd;
}

/* Mounts [from, to) of the plan, each target resolved inside the root. */
static void mount_range(int rootfd, int from, int to)
{
    for (int i = from; i < to; i++) {
        struct mnt *m = &C.mounts[i];
        char srcfd[64];
        const char *src = m->src;
        int sfd = -1;
        if ((m->flags & MS_BIND) && strcmp(m->type, "remount")) {
            struct stat st;
            if (m->asuser) {
                sfd = open_as_user("volume", m->src, 1);
                snprintf(srcfd, sizeof srcfd, "/proc/self/fd/%d", sfd);
                src = srcfd;
            }
            if ((sfd >= 0 ? fstat(sfd, &st) : stat(m->src, &st)) < 0)
                die("mount", "source %s for %s", m->src, m->dst);
            m->is_file = !S_ISDIR(st.st_mode);
        }
        int fd = open_in_root(rootfd, m->dst, m->is_file);
        if (fd < 0)
            die("mount", "create target %s in the root", m->dst);
        char target[64];
        fdpath(target, sizeof target, fd);
        if (!strcmp(m->type, "remount")) {
            /* e.g. the tmpfs holding v1 cgroup mounts, made read-only once filled */
            if (mount(NULL, target, NULL, MS_REMOUNT | m->flags, m->data) < 0)
                die("mount", "remount %s", m->dst);
            close(fd);
            continue;
        }
        if (mount(src, target, m->type, m->flags, m->data) < 0)
            die("mount", "%s %s on %s", *m->type ? m->type : "bind", m->src, m->dst);
        if (sfd >= 0)
            close(sfd);
        if (m->lock) {
            /* the target fd still names the directory under the new mount: reopen */
            close(fd);
            fd = open_in_root(rootfd, m->dst, m->is_file);
            fdpath(target, sizeof target, fd);
            lock_bind(target, m->dst, m->lock);
        }
        close(fd);
    }
}

/* Symlinks in /dev, and the root made read-only if asked. */
static void finish_root(int rootfd)
{
    for (int i = 0; i < C.nlinks; i++) {
        char full[4096];
        snprintf(full, sizeof full, "%s%s", C.rootfs, C.links[i].b);
        unlink(full);
        if (symlink(C.links[i].a, full) < 0)
            die("symlink", "%s -> %s", C.links[i].b, C.links[i].a);
    }
    close(rootfd);
    if (C.readonly_root && mount(NULL, C.rootfs, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
        die("mount", "remount the root %s read-only", C.rootfs);
}

static void do_pivot(void)
{
    /* pivot_root(".", ".") stacks the old root under the new one; detaching it leaves
     * only the job's tree (no chroot: a chroot can be escaped by a root process). */
    if (chdir(C.rootfs) < 0)
        die("pivot_root", "chdir %s", C.rootfs);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        die("pivot_root", "%s", C.rootfs);
    if (umount2(".", MNT_DETACH) < 0)
        die("pivot_root", "detach the old root");
    if (chdir("/") < 0)
        die("pivot_root", "chdir /");
}

/* OCI's masked and read-only paths: uid 0 without capabilities can still write some
 * of /proc/sys and /sys, and read /proc/kcore or /proc/keys. */
static void do_protect(void)
{
    for (int i = 0; i < C.nmask; i++) {
        struct stat st;
        if (stat(C.masks[i], &st) < 0)
            continue;
        int r = S_ISDIR(st.st_mode)
                    ? mount("tmpfs", C.masks[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
                    : mount("/dev/null", C.masks[i], NULL, MS_BIND, NULL);
        if (r < 0)
            die("mask", "%s", C.masks[i]);
    }
    for (int i = 0; i < C.nro; i++) {
        struct statvfs sv;
        if (statvfs(C.ropaths[i], &sv) < 0)
            continue;
        if (mount(C.ropaths[i], C.ropaths[i], NULL, MS_BIND | MS_REC, NULL) < 0)
            die("read-only path", "bind %s", C.ropaths[i]);
        unsigned long keep = (sv.f_flag & ST_NOSUID ? MS_NOSUID : 0) | (sv.f_flag & ST_NODEV ? MS_NODEV : 0) |
                             (sv.f_flag & ST_NOEXEC ? MS_NOEXEC : 0);
        if (mount(NULL, C.ropaths[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, NULL) < 0)
            die("read-only path", "remount %s read-only", C.ropaths[i]);
    }
}

static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("network", "socket for lo");
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        die("network", "read flags of lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        die("network", "bring lo up");
    close(s);
}

/* ---------- the command: ids, capabilities, seccomp ---------- */

#if defined(__x86_64__)
#define MLQ_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define MLQ_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* What Docker's default profile refuses (it is an allow-list; these are the calls it
 * leaves out, or allows only with CAP_SYS_ADMIN and friends that a job lacks). */
static const int denied[] = {
#ifdef SYS_mount
    SYS_mount,
#endif
    SYS_umount2, SYS_pivot_root, SYS_kexec_load,
#ifdef SYS_kexec_file_load
    SYS_kexec_file_load,
#endif
    SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_keyctl, SYS_add_key, SYS_request_key,
    SYS_bpf, SYS_unshare, SYS_setns, SYS_acct, SYS_swapon, SYS_swapoff, SYS_reboot, SYS_syslog,
    SYS_settimeofday, SYS_clock_settime, SYS_clock_adjtime, SYS_adjtimex, SYS_open_by_handle_at,
    SYS_name_to_handle_at, SYS_perf_event_open, SYS_quotactl, SYS_lookup_dcookie, SYS_userfaultfd,
    SYS_sethostname, SYS_setdomainname, SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp,
    SYS_ptrace, SYS_fanotify_init, SYS_vhangup,
#ifdef SYS_umount
    SYS_umount,
#endif
#ifdef SYS_iopl
    SYS_iopl, SYS_ioperm,
#endif
#ifdef SYS_uselib
    SYS_uselib,
#endif
#ifdef SYS_ustat
    SYS_ustat,
#endif
#ifdef SYS_sysfs
    SYS_sysfs,
#endif
#ifdef SYS__sysctl
    SYS__sysctl,
#endif
#ifdef SYS_open_tree
    SYS_open_tree, SYS_move_mount, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick,
#endif
#ifdef SYS_mount_setattr
    SYS_mount_setattr,
#endif
#ifdef SYS_quotactl_fd
    SYS_quotactl_fd,
#endif
};

#define NS_FLAGS (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP)

static void install_seccomp(int allow_ptrace)
{
    struct sock_filter f[160];
    int n = 0, nd = sizeof denied / sizeof denied[0];
    /* layout: [arch check][x32 check][denied...][clone check][ALLOW][EPERM][ENOSYS] */
    /* targets are absolute indexes, turned into the relative offsets BPF wants */
#define STMT(c, k) (f[n] = (struct sock_filter)BPF_STMT(c, k), n++)
#define JUMP(c, k, t, e) (f[n] = (struct sock_filter)BPF_JUMP(c, k, (t) ? (t) - n - 1 : 0, (e) ? (e) - n - 1 : 0), n++)
    int total = 4 + nd + 4 + 3;
#if defined(__x86_64__)
    total += 1;
#endif
    int allow = total - 3, eperm = total - 2, enosys = total - 1;
    STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, MLQ_AUDIT_ARCH, n + 2, 0); /* other ABIs: refuse all */
    STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
    JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, eperm, 0); /* x32 calls */
#endif
    for (int i = 0; i < nd; i++) {
        if (allow_ptrace && denied[i] == SYS_ptrace) {
            JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)-1, 0, 0); /* keep the layout */
            continue;
        }
        JUMP(BPF_JMP | BPF_JEQ | BPF_K, denied[i], eperm, 0);
    }
    /* clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall
     * back to clone, whose flags are checked (as Docker does). */
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, enosys, 0);
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, allow);
    STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
    JUMP(BPF_JMP | BPF_JSET | BPF_K, NS_FLAGS, eperm, 0);
    STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW); /* [allow] */
    STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
#undef STMT
#undef JUMP
    if (n != total)
        die("seccomp", "filter layout %d != %d", n, total);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        die("seccomp", "install the filter");
}

static int cap_last(void)
{
    char buf[32];
    return read_file("/proc/sys/kernel/cap_last_cap", buf, sizeof buf) > 0 ? atoi(buf) : 40;
}

/* The bounding set is what root regains at exec; dropping from it needs CAP_SETPCAP,
 * so this runs before the switch to the job's user. */
static void drop_bounding(void)
{
    int last = cap_last();
    for (int c = 0; c <= last; c++)
        if (!(C.caps & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
            die("capabilities", "drop %d from the bounding set", c);
}

static void set_caps(void)
{
    int last = cap_last();
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2] = {0};
    d[0].effective = d[0].permitted = d[0].inheritable = (uint32_t)C.caps;
    d[1].effective = d[1].permitted = d[1].inheritable = (uint32_t)(C.caps >> 32);
    if (syscall(SYS_capset, &h, d) < 0)
        die("capabilities", "capset %llx", C.caps);
    /* ambient: a non-root user keeps the named capabilities across exec */
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    for (int c = 0; c <= last; c++)
        if ((C.caps & (1ULL << c)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
            die("capabilities", "raise ambient %d", c);
}

static char *find_exec(const char *name, char *buf, size_t size)
{
    if (strchr(name, '/'))
        return (char *)name;
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (int i = 0; i < C.nenv; i++)
        if (!strncmp(C.env[i], "PATH=", 5))
            path = C.env[i] + 5;
    char *copy = strdup(path), *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        snprintf(buf, size, "%s/%s", *dir ? dir : ".", name);
        if (access(buf, X_OK) == 0)
            return buf;
    }
    return (char *)name;
}

static void write_map(pid_t pid, const char *kind, const char *map)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, kind);
    snprintf(line, sizeof line, "%s\n", map);
    if (write_file(path, line) < 0)
        die("user namespace", "write %s \"%s\"", path, map);
}

/* The command's process, from fork to exec.  Seccomp comes last, right before exec,
 * so that as few calls as possible run under it; no_new_privs lets it be installed
 * without CAP_SYS_ADMIN. */
static void run_command(int errfd, int usync_r, int usync_w)
{
    report_fd = errfd;
    setsid();
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL);
    /* the user's supplementary groups (host gids), set while this process is still
     * root in the host's user namespace: inside a user namespace of its own it could
     * not, and it would keep root's groups */
    if (setgroups(C.ngroups, C.groups) < 0)
        die("user", "setgroups");
    if (C.userns) {
        /* a user namespace of its own, inside the others: init (real root) writes the
         * maps, so the job's root is an unprivileged host uid */
        if (unshare(CLONE_NEWUSER) < 0)
            die("user namespace", "unshare");
        char c = 'u';
        if (write(usync_w, &c, 1) != 1 || read(usync_r, &c, 1) != 1 || c != 'g')
            die("user namespace", "wait for the uid/gid maps");
    }
    if (write_file("/proc/self/oom_score_adj", "0") < 0)
        die("oom_score_adj", "reset to 0");
    if (C.cwd && chdir(C.cwd) < 0)
        die("cwd", "chdir %s", C.cwd);
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        die("user", "keep capabilities across setuid");
    tmark("cmd: ids");
    drop_bounding();
    if (setresgid(C.gid, C.gid, C.gid) < 0)
        die("user", "setgid %d", C.gid);
    if (setresuid(C.uid, C.uid, C.uid) < 0)
        die("user", "setuid %d", C.uid);
    if (!C.nnp && C.seccomp)
        install_seccomp(!!(C.caps & (1ULL << CAP_SYS_PTRACE))); /* needs CAP_SYS_ADMIN still */
    set_caps();
    if (C.nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        die("no_new_privs", "prctl");
    int fd = open("/dev/null", O_RDONLY);
    if (fd >= 0 && fd != 0) {
        dup2(fd, 0);
        close(fd);
    }
    /* nothing of the launcher or of mlq leaks: fds 3 and up close at exec */
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        for (int i = 3; i < 1024; i++)
            if (i != errfd)
                close(i);
    char pathbuf[4096];
    char *exe = find_exec(C.args[0], pathbuf, sizeof pathbuf);
    tmark("cmd: exec");
    if (C.nnp && C.seccomp)
        install_seccomp(!!(C.caps & (1ULL << CAP_SYS_PTRACE)));
    execve(exe, C.args, C.env);
    die("exec", "%s", C.args[0]);
}

/* ---------- init (PID 1 inside) ---------- */

static volatile pid_t cmd_pid;
static char *argv_area;
static size_t argv_len;

/* ps inside the job shows PID 1 as "mlq-init", not the helper's path and plan */
static void name_init(void)
{
    prctl(PR_SET_NAME, "mlq-init", 0, 0, 0);
    if (argv_area && argv_len > 9) {
        memset(argv_area, 0, argv_len);
        memcpy(argv_area, "mlq-init", 8);
    }
}

static void init_main(int go_r, int rep_w)
{
    report_fd = rep_w;
    name_init();
    char c;
    if (C.self_join) {
        /* v1: init moves itself, as its first step, by writing "0" to each hierarchy's
         * tasks file. A single thread moving itself skips the kernel's threadgroup
         * lock (and the RCU grace period its writer waits for: 5-12 ms here), which
         * a write of another process's pid to cgroup.procs takes. */
        for (int i = 0; i < C.ncg; i++) {
            char tasks[4096];
            snprintf(tasks, sizeof tasks, "%s/tasks", C.cgroups[i]);
            if (write_file(tasks, "0") < 0)
                die("cgroup", "write tasks in %s", C.cgroups[i]);
        }
        tmark("init: in cgroup");
    }
    if (C.netns) {
        int nfd = open(C.netns, O_RDONLY | O_CLOEXEC);
        if (nfd < 0 || setns(nfd, CLONE_NEWNET) < 0)
            die("network", "join %s", C.netns);
        close(nfd);
    }
    /* the root and the mounts that do not show cgroups are built while the supervisor
     * moves this process into the job's cgroup (on v1 the kernel makes that wait for
     * an RCU grace period); nothing of the job runs before both are done */
    int rootfd = mount_root();
    int split = C.cg_mount_start ? C.cg_mount_start : C.nmounts;
    mount_range(rootfd, 0, split);
    if (read(go_r, &c, 1) != 1)
        die("cgroup", "the supervisor did not place the job in its cgroup");
    close(go_r);
    /* a cgroup namespace rooted at the job's own cgroup: the job sees only its own
     * limits (and the mounts below make them read-only) */
    if (unshare(CLONE_NEWCGROUP) < 0)
        die("namespaces", "unshare the cgroup namespace");
    mount_range(rootfd, split, C.nmounts);
    finish_root(rootfd);
    tmark("init: mounts done");
    do_pivot();
    tmark("init: pivoted");
    do_protect();
    tmark("init: protected");
    if (C.hostname && sethostname(C.hostname, strlen(C.hostname)) < 0)
        die("hostname", "sethostname %s", C.hostname);
    tmark("init: hostname");
    if (C.newnet || C.netns)
        loopback_up();
    tmark("init: lo up");
    /* init must outlive its job under memory pressure, so the OOM killer picks the
     * command, and the cgroup's oom_kill counter tells the outcome */
    write_file("/proc/self/oom_score_adj", "-1000");

    int errp[2], u1[2] = {-1, -1}, u2[2] = {-1, -1};
    if (pipe2(errp, O_CLOEXEC) < 0 || (C.userns && (pipe2(u1, O_CLOEXEC) < 0 || pipe2(u2, O_CLOEXEC) < 0)))
        die("start", "pipe");
    sigset_t mask;
    sigfillset(&mask);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    tmark("init: forking");
    pid_t pid = fork();
    if (pid < 0)
        die("start", "fork the command");
    if (pid == 0) {
        close(errp[0]);
        run_command(errp[1], u2[0], u1[1]);
    }
    cmd_pid = pid;
    close(errp[1]);
    if (C.userns) {
        if (read(u1[0], &c, 1) != 1)
            goto exec_result;
        write_map(pid, "setgroups", "deny");
        write_map(pid, "uid_map", C.uidmap);
        write_map(pid, "gid_map", C.gidmap);
        c = 'g';
        if (write(u2[1], &c, 1) != 1)
            die("user namespace", "release the command");
    }
exec_result:;
    char err[2048];
    ssize_t n = read(errp[0], err, sizeof err - 1);
    close(errp[0]);
    if (n > 0) {
        /* the command failed before exec: pass its message on, then its status */
        ssize_t w = write(rep_w, err, n);
        (void)w;
        int st;
        waitpid(pid, &st, 0);
        _exit(127);
    }
    tmark("init: exec ok");
    say(rep_w, "ready\n");
    /* caps are no longer needed, except to signal a job running as another user */
    /* forward, reap, and leave with the command's status */
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&mask, &si);
        if (sig < 0)
            continue;
        if (sig == SIGCHLD) {
            int st;
            pid_t p;
            while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                if (p == pid) {
                    tmark("init: command exited");
                    say(rep_w, "exit %d\n", st);
                    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
                }
            }
        } else if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGUSR1 || sig == SIGUSR2 ||
                   sig == SIGQUIT) {
            kill(pid, sig);
        }
    }
}

/* ---------- the supervisor ---------- */

static pid_t init_pid;
static int cg_empty_wait(int);

static void kill_cgroup(void)
{
    /* v2 has cgroup.kill; killing PID 1 of the pid namespace ends everything in it;
     * and whatever is still listed in cgroup.procs gets SIGKILL as well (v1) */
    if (C.cg_kill)
        write_file(C.cg_kill, "1");
    if (init_pid > 0)
        kill(init_pid, SIGKILL);
    char buf[65536];
    if (C.cg_procs && read_file(C.cg_procs, buf, sizeof buf) > 0)
        for (char *p = strtok(buf, "\n"); p; p = strtok(NULL, "\n"))
            kill(atoi(p), SIGKILL);
}

static int cg_empty_wait(int ms)
{
    char buf[256];
    for (int i = 0; i < ms; i++) {
        if (!C.cg_procs || read_file(C.cg_procs, buf, sizeof buf) <= 0)
            return 1;
        kill_cgroup();
        usleep(1000);
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = *s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* Copy a flat-keyed cgroup file ("key value" lines) or a one-number file as JSON. */
static void json_stat(FILE *f, const char *path)
{
    char buf[8192];
    if (read_file(path, buf, sizeof buf) < 0) {
        fputs("null", f);
        return;
    }
    if (!strchr(buf, ' ')) {
        fprintf(f, "%lld", atoll(buf));
        return;
    }
    fputc('{', f);
    int first = 1;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        char *sp = strchr(line, ' ');
        if (!sp)
            continue;
        *sp = 0;
        fprintf(f, "%s\"%s\": %lld", first ? "" : ", ", line, atoll(sp + 1));
        first = 0;
    }
    fputc('}', f);
}

static const char *signame(int s)
{
    static const char *names[] = {
        [SIGHUP] = "SIGHUP",   [SIGINT] = "SIGINT",   [SIGQUIT] = "SIGQUIT", [SIGILL] = "SIGILL",
        [SIGTRAP] = "SIGTRAP", [SIGABRT] = "SIGABRT", [SIGBUS] = "SIGBUS",   [SIGFPE] = "SIGFPE",
        [SIGKILL] = "SIGKILL", [SIGUSR1] = "SIGUSR1", [SIGSEGV] = "SIGSEGV", [SIGUSR2] = "SIGUSR2",
        [SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGTERM] = "SIGTERM", [SIGXCPU] = "SIGXCPU",
        [SIGXFSZ] = "SIGXFSZ", [SIGSYS] = "SIGSYS"};
    return s > 0 && s < (int)(sizeof names / sizeof names[0]) && names[s] ? names[s] : NULL;
}

/* Write all of LEN bytes to FD, or fail. */
static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        p += w;
        len -= w;
    }
    return 0;
}

/* One try at status.json: the whole text into a temp file, every write, the fsync
 * and the close checked, and only then renamed into place; on any failure the temp
 * file goes and nothing is renamed. The directory's fsync makes the rename durable
 * (the daemon may be dead now and read this after a reboot). */
static int put_status(const char *text, size_t len)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", C.status);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    int ok = write_all(fd, text, len) == 0 && fsync(fd) == 0;
    if (close(fd) < 0)
        ok = 0;
    if (!ok || rename(tmp, C.status) < 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return -1;
    }
    int dfd = open(C.rundir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* status.json, complete or absent: a half-written status would be read as an
 * outcome. A full disk (this job's output, another's) may be freed meanwhile, so it
 * is tried again 5 times a second apart; after that the run has no status and the
 * daemon's recovery records it FAILED ("lost"). */
static void write_status(const char *state, const char *reason, int raw, int have_raw, double started,
                         double finished, long long oom, long long high_events, const char *error)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return;
    int code = -1, sig = 0;
    if (have_raw) {
        if (WIFEXITED(raw))
            code = WEXITSTATUS(raw);
        else if (WIFSIGNALED(raw)) {
            sig = WTERMSIG(raw);
            code = 128 + sig;
        }
    }
    fprintf(f, "{\"state\": \"%s\", \"reason\": \"%s\", \"exit_code\": %d, \"signal\": ", state, reason, code);
    if (sig && signame(sig))
        json_str(f, signame(sig));
    else if (sig)
        fprintf(f, "\"SIG%d\"", sig);
    else
        fputs("null", f);
    fprintf(f, ", \"started_at\": %.6f, \"finished_at\": %.6f, \"duration_s\": %.6f", started, finished,
            finished - started);
    long long peak = -1;
    char pb[64];
    if (C.peakfile && read_file(C.peakfile, pb, sizeof pb) > 0)
        peak = atoll(pb);
    fprintf(f, ", \"max_memory_bytes\": %lld, \"oom_kills\": %lld, \"memory_high_events\": %lld", peak < 0 ? 0 : peak,
            oom < 0 ? 0 : oom, high_events);
    fputs(", \"cgroup\": {", f);
    for (int i = 0; i < C.nstats; i++) {
        fprintf(f, "%s\"%s\": ", i ? ", " : "", C.stats[i].a);
        json_stat(f, C.stats[i].b);
    }
    fputs("}, \"error\": ", f);
    if (error)
        json_str(f, error);
    else
        fputs("null", f);
    fputs("}\n", f);
    int built = !ferror(f);
    if (fclose(f) != 0)
        built = 0;
    for (int attempt = 0; built && attempt <= 5; attempt++) {
        if (attempt)
            sleep(1);
        if (put_status(text, len) == 0)
            break;
        char m[128];
        snprintf(m, sizeof m, "status.json try %d: %s", attempt + 1, strerror(errno));
        tmark(m);
    }
    free(text);
}

/* ---------- the job's output: pipes, copied into capped and rotated files ---------- */

/* The job's fd 1 and 2 are pipes; the supervisor copies what comes out of them into
 * <run>/stdout and stderr. With a log limit N each file holds at most N/2 bytes: a
 * full one becomes stdout.1 (the older .1 is dropped) and a new one starts, so at
 * most N bytes are kept and always the newest. The bytes gone (rotated out, or lost
 * to a write that failed) are counted in logcut.json, so a reader maps offsets over
 * all the job ever wrote: dropped bytes first, then stdout.1, then stdout. */
struct stream {
    const char *name; /* its key in logcut.json */
    char *path, old[4096];
    int rfd;          /* the pipe's read end, non-blocking; -1 once closed */
    int fd;           /* the current file; -1 when it could not be opened */
    int splice_ok;    /* splice() works into this file system */
    long long size, old_size, dropped;
};
static struct stream streams[2];
static int logcut_dirty;
static long long logcut_at;

/* logcut.json: {"stdout": N, "stderr": M}, replaced whole (tmp + rename). A failure
 * leaves the previous one and is tried again at the next change and at the end. */
static void write_logcut(void)
{
    char tmp[4096], buf[128];
    snprintf(tmp, sizeof tmp, "%s.tmp", C.logcut);
    int n = snprintf(buf, sizeof buf, "{\"%s\": %lld, \"%s\": %lld}\n", streams[0].name, streams[0].dropped,
                     streams[1].name, streams[1].dropped);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int ok = fd >= 0 && write_all(fd, buf, n) == 0;
    if (fd >= 0 && close(fd) < 0)
        ok = 0;
    logcut_at = now_ms();
    if (ok && rename(tmp, C.logcut) == 0) {
        logcut_dirty = 0;
        return;
    }
    if (fd >= 0)
        unlink(tmp);
    logcut_dirty = 1;
}

static void open_current(struct stream *s, int truncate)
{
    s->fd = open(s->path, O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0640);
    /* no O_APPEND: splice() refuses files opened with it; this process is the only
     * writer, so its offset is the end */
    s->size = s->fd >= 0 ? lseek(s->fd, 0, SEEK_END) : 0;
    if (s->size < 0)
        s->size = 0;
}

/* The current file becomes .1 (the old .1's bytes are dropped) and a new one starts.
 * Readers see the rename, then the new count, then the new file: a missing current
 * file, a count that changed or a file that changed under them makes them read the
 * three again (scheduler/daemon/logs.py). */
static void rotate(struct stream *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    int truncate = 0;
    /* one rename replaces .1: never a moment without it. (On ext4 replacing a file
     * makes the kernel start writing the renamed one out first, auto_da_alloc:
     * ~25 ms for 50 MiB here, paid once per N/2 bytes.) */
    if (rename(s->path, s->old) == 0) {
        s->dropped += s->old_size;
        s->old_size = s->size;
    } else {
        /* the cap holds even so: this file's bytes go instead of the older ones */
        s->dropped += s->size;
        truncate = 1;
    }
    s->size = 0;
    write_logcut();
    open_current(s, truncate);
}

static void close_stream(struct stream *s)
{
    close(s->rfd);
    s->rfd = -1;
}

/* Copy what waits in the stream's pipe into its file, up to BUDGET bytes (so stop
 * requests and the end are not kept waiting by a job that writes without pause).
 * splice() moves pipe pages into the page cache without a copy through this
 * process; where it cannot, read/write. A write that fails (ENOSPC, EIO) drops its
 * data and counts it: the job never waits on a full disk, and this process lives. */
static void pump(struct stream *s, long long budget)
{
    static char buf[65536];
    long long half = C.log_limit / 2, moved = 0;
    while (s->rfd >= 0 && moved < budget) {
        if (C.log_limit > 0 && half > 0 && s->size >= half)
            rotate(s);
        if (s->fd < 0)
            open_current(s, 0); /* space may have been freed meanwhile */
        /* how much fits in the current file; 0: a limit below 2 bytes keeps nothing */
        long long room = C.log_limit > 0 ? half - s->size : 1 << 20;
        if (room > 1 << 20)
            room = 1 << 20;
        if (s->fd >= 0 && room > 0 && s->splice_ok) {
            ssize_t n = splice(s->rfd, NULL, s->fd, NULL, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                s->size += n;
                moved += n;
                continue;
            }
            if (n == 0) {
                close_stream(s);
                break;
            }
            if (errno == EAGAIN)
                break;
            if (errno == EINVAL || errno == ENOSYS)
                s->splice_ok = 0;
            /* else (ENOSPC, EIO, ...): the data is still in the pipe; read it below,
             * and write it if the file takes it now, else count it dropped */
        }
        ssize_t n = read(s->rfd, buf, room > 0 && room < (long long)sizeof buf ? (size_t)room : sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            close_stream(s);
            break;
        }
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            continue;
        }
        moved += n;
        size_t done = 0;
        while (s->fd >= 0 && room > 0 && done < (size_t)n) {
            ssize_t w = write(s->fd, buf + done, n - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            done += w;
        }
        s->size += done;
        if (done < (size_t)n) {
            s->dropped += n - done;
            logcut_dirty = 1;
        }
    }
}

/* Count changes not made by a rotation (failed writes) at most 10 times a second. */
static void flush_logcut(int force)
{
    if (logcut_dirty && (force || now_ms() - logcut_at >= 100))
        write_logcut();
}

static void remove_cgroups(void)
{
    for (int i = 0; i < C.ncg; i++) {
        int t = 0;
        for (; t < 2000 && rmdir(C.cgroups[i]) < 0 && errno == EBUSY; t++)
            usleep(1000);
        char m[256];
        snprintf(m, sizeof m, "rmdir %s tries %d", C.cgroups[i], t);
        tmark(m);
    }
}

static void cleanup(void)
{
    for (int i = 0; i < C.nrm; i++)
        nftw(C.rmtrees[i], rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* v1 has no memory.high: count crossings of the high mark with a usage threshold
 * notification (cgroup.event_control). Registering makes the kernel wait for an RCU
 * grace period, and removing the cgroup while a registration is in flight holds the
 * global cgroup lock meanwhile; so a thread registers, and only for a job still
 * running after 20 ms (a shorter one is judged by its peak alone). */
struct high_msg {
    int efd;     /* the eventfd, or -1 */
    int already; /* 1 if usage was above the mark when registered */
};
static volatile int job_ended;

static void *register_high(void *arg)
{
    int out = *(int *)arg;
    struct high_msg m = {-1, 0};
    for (int i = 0; i < 20 && !job_ended; i++)
        usleep(1000);
    if (!job_ended) {
        int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        int ufd = open(C.v1_usage, O_RDONLY | O_CLOEXEC);
        char reg[128];
        snprintf(reg, sizeof reg, "%d %d %lld", efd, ufd, C.v1_high);
        if (efd >= 0 && ufd >= 0 && write_file(C.v1_evctl, reg) == 0) {
            m.efd = efd;
            char buf[64];
            if (read_file(C.v1_usage, buf, sizeof buf) > 0 && atoll(buf) > C.v1_high)
                m.already = 1;
        } else if (efd >= 0) {
            close(efd);
        }
        if (ufd >= 0)
            close(ufd);
    }
    ssize_t w = write(out, &m, sizeof m);
    (void)w;
    close(out);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: mlq-runtime PLAN (started by mlq's executor)\n");
        return 2;
    }
    /* fd 3 is the launcher's report pipe; without it errors go to stderr */
    int launcher = fcntl(3, F_GETFD) >= 0 ? 3 : -1;
    if (launcher >= 0)
        fcntl(launcher, F_SETFD, FD_CLOEXEC);
    /* 0, 1 and 2 stay taken (the launcher's, then /dev/null): the pipes made below
     * must never land on them, where the dup2s to the job's fds would clobber them */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
            die("start", "open /dev/null as fd %d", fd);
    argv_area = argv[0];
    argv_len = argv[argc - 1] + strlen(argv[argc - 1]) + 1 - argv[0];
    report_fd = launcher;
    parse_plan(argv[1]);
    tmark("sup: plan read");
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a log past RLIMIT_FSIZE is an EFBIG write, dropped */

    /* the log files, and the pipes that become the job's fd 1 and 2: the job's
     * output goes through this process, which caps what is kept (see pump) */
    int outp[2], errp[2];
    const char *names[2] = {"stdout", "stderr"};
    char *files[2] = {C.out, C.err};
    for (int i = 0; i < 2; i++) {
        struct stream *s = &streams[i];
        s->name = names[i];
        s->path = files[i];
        s->splice_ok = 1;
        snprintf(s->old, sizeof s->old, "%s.1", s->path);
        open_current(s, 0);
        if (s->fd < 0)
            die("logs", "open `%s`", s->path);
    }
    if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
        die("logs", "pipe for the job's output");
    streams[0].rfd = outp[0];
    streams[1].rfd = errp[0];
    for (int i = 0; i < 2; i++) {
        int w = i ? errp[1] : outp[1];
        fcntl(streams[i].rfd, F_SETFL, O_NONBLOCK);
        /* 1 MiB (pipe-max-size) instead of 64 KiB: a job writing fast waits on this
         * process 16 times less often; best effort */
        fcntl(w, F_SETPIPE_SZ, 1 << 20);
        /* the job's user owns its end, as runc does: /dev/stdout is /proc/self/fd/1,
         * and reopening a pipe there checks its owner and mode (0600) */
        if (C.have_opener && fchown(w, C.op_uid, C.op_gid) < 0)
            die("logs", "give the output pipe to uid %d", C.op_uid);
    }

    int gop[2], rep[2];
    if (pipe2(gop, O_CLOEXEC) < 0 || pipe2(rep, O_CLOEXEC) < 0)
        die("start", "pipe");
    sigset_t mask;
    sigemptyset(&mask);
    int sigs[] = {SIGCHLD, SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaddset(&mask, sigs[i]);
    sigprocmask(SIG_BLOCK, &mask, NULL);

    int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | (C.newnet ? CLONE_NEWNET : 0);
    tmark("sup: start");
    double started = now_wall();
    long long t0 = now_ms();
    /* cgroup v2: clone3 with CLONE_INTO_CGROUP creates init inside the job's cgroup,
     * with no migration afterwards; v1 (or an older kernel) migrates it below */
    int in_cgroup = 0;
    pid_t pid = -1;
    if (C.cg_kill && C.ncg == 1) {
        int cgfd = open(C.cgroups[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        struct clone_args ca = {.flags = (uint64_t)flags | CLONE_INTO_CGROUP, .exit_signal = SIGCHLD,
                                .cgroup = (uint64_t)cgfd};
        if (cgfd >= 0) {
            pid = syscall(SYS_clone3, &ca, sizeof ca);
            in_cgroup = pid >= 0;
            if (pid != 0)
                close(cgfd);
        }
    }
    if (pid < 0)
        pid = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0)
        die("namespaces", "clone with new pid, mount, uts, ipc%s namespaces", C.newnet ? ", net" : "");
    if (pid == 0) {
        if (launcher >= 0)
            close(launcher); /* the launcher's EOF must mean "the supervisor is gone" */
        close(gop[1]);
        close(rep[0]);
        dup2(outp[1], 1);
        dup2(errp[1], 2);
        /* init keeps only the write ends, as its fd 1 and 2 */
        int mine[] = {outp[0], outp[1], errp[0], errp[1], streams[0].fd, streams[1].fd};
        for (unsigned i = 0; i < sizeof mine / sizeof mine[0]; i++)
            close(mine[i]);
        init_main(gop[0], rep[1]);
    }
    init_pid = pid;
    tmark("sup: cloned");
    close(gop[0]);
    close(rep[1]);
    /* the job holds the only write ends: their EOF means all its processes are gone */
    close(outp[1]);
    close(errp[1]);

    /* 1. the cgroup, before init runs a single step of its own */
    char pidbuf[32];
    snprintf(pidbuf, sizeof pidbuf, "%d", pid);
    for (int i = 0; i < C.ncg && !in_cgroup && !C.self_join; i++) {
        char procs[4096];
        snprintf(procs, sizeof procs, "%s/cgroup.procs", C.cgroups[i]);
        if (write_file(procs, pidbuf) < 0) {
            int e = errno;
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            errno = e;
            die("cgroup", "write cgroup.procs in %s", C.cgroups[i]);
        }
    }
    tmark("sup: in cgroup");
    if (write(gop[1], "g", 1) != 1) {
        /* init already failed (EPIPE): its report, read below, says why */
    }
    close(gop[1]);

    /* 2. wait for "ready" (the command exec'd) or the step that failed */
    char line[4096];
    size_t len = 0;
    int ready = 0;
    char failure[4096] = "";
    while (len < sizeof line - 1) {
        ssize_t n = read(rep[0], line + len, sizeof line - 1 - len);
        if (n <= 0)
            break;
        len += n;
        line[len] = 0;
        if (strstr(line, "\n"))
            break;
    }
    line[len] = 0;
    if (!strncmp(line, "ready\n", 6)) {
        ready = 1;
        memmove(line, line + 6, len - 6 + 1);
        len -= 6;
    } else {
        snprintf(failure, sizeof failure, "%s", len ? line : "error start: init ended before the job ran\n");
    }
    if (!ready) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        if (launcher >= 0)
            say(launcher, "%s", failure);
        /* the launcher undoes what it made (cgroup, dirs, veth); nothing else exists */
        return 1;
    }

    /* the named network namespace has served its purpose: from now on it lives
     * exactly as long as the job, and so does the veth end inside it */
    for (int i = 0; i < C.nunl; i++)
        if (C.netns && !strcmp(C.unlinks[i], C.netns)) {
            umount2(C.netns, MNT_DETACH);
            unlink(C.netns);
        }

    /* 3. the supervisor record, then "ok" to the launcher */
    {
        char path[4096], buf[256], stat[1024];
        snprintf(path, sizeof path, "%s/supervisor.json", C.rundir);
        unsigned long long starttime = 0;
        if (read_file("/proc/self/stat", stat, sizeof stat) > 0) {
            char *p = strrchr(stat, ')');
            /* field 22 (starttime) counted after the command name */
            for (int fld = 2; p && fld < 22; fld++)
                p = strchr(p + 1, ' ');
            if (p)
                starttime = strtoull(p + 1, NULL, 10);
        }
        snprintf(buf, sizeof buf,
                 "{\"pid\": %d, \"starttime\": %llu, \"init_pid\": %d, \"started_at\": %.6f, "
                 "\"cgroup_join\": \"%s\"}\n",
                 getpid(), starttime, pid, started,
                 in_cgroup ? "clone_into_cgroup" : C.self_join ? "tasks" : "cgroup.procs");
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0) {
            ssize_t w = write(fd, buf, strlen(buf));
            (void)w;
            close(fd);
        }
    }
    tmark("sup: ready");
    /* the launcher keeps this pipe: "done" on it says status.json is final, before
     * the cleanup, so the process that started the job learns of the end at once */
    if (launcher >= 0)
        say(launcher, "ok %d %d\n", getpid(), pid);
    report_fd = -1;
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);
        close(devnull);
    }

    /* 4. supervise */
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    long long high_events = 0;
    int hipipe[2] = {-1, -1}, registered = 0;
    if (C.v1_usage && pipe2(hipipe, O_CLOEXEC) == 0) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &attr, register_high, &hipipe[1]) != 0) {
            close(hipipe[0]);
            close(hipipe[1]);
            hipipe[0] = -1;
        }
    }
    tmark("sup: supervising");
    int efd = -1;
    tmark("sup: high-mark notification registered");
    const char *reason = "exited";
    int stopping = 0;
    long long grace_end = -1, limit_end = C.time_limit_ms > 0 ? t0 + C.time_limit_ms : -1;
    int raw = 0, have_raw = 0, init_status = 0, killed = 0;
    for (;;) {
        long long now = now_ms(), next = -1;
        if (grace_end >= 0)
            next = grace_end;
        if (limit_end >= 0 && !stopping && (next < 0 || limit_end < next))
            next = limit_end;
        int timeout = next < 0 ? -1 : (int)(next > now ? next - now : 0);
        if (logcut_dirty && (timeout < 0 || timeout > 100))
            timeout = 100;
        struct pollfd pf[5] = {{sfd, POLLIN, 0}, {efd, POLLIN, 0}, {hipipe[0], POLLIN, 0},
                               {streams[0].rfd, POLLIN, 0}, {streams[1].rfd, POLLIN, 0}};
        int r = poll(pf, 5, timeout);
        /* the job's output first: a job blocked on a full pipe makes no progress */
        for (int i = 0; r > 0 && i < 2; i++)
            if (pf[3 + i].revents & (POLLIN | POLLHUP | POLLERR))
                pump(&streams[i], 8 << 20);
        flush_logcut(0);
        if (r > 0 && (pf[2].revents & POLLIN)) {
            struct high_msg m;
            if (read(hipipe[0], &m, sizeof m) == sizeof m && m.efd >= 0) {
                efd = m.efd;
                registered = 1;
                high_events += m.already;
            }
            close(hipipe[0]);
            hipipe[0] = -1;
        }
        now = now_ms();
        if (limit_end >= 0 && !stopping && now >= limit_end) {
            reason = "time_limit";
            stopping = 1;
            kill(pid, C.stop_sig);
            grace_end = now + C.grace_ms;
        }
        if (grace_end >= 0 && now >= grace_end && !killed) {
            kill_cgroup();
            killed = 1;
            grace_end = -1;
        }
        if (r > 0 && efd >= 0 && (pf[1].revents & POLLIN)) {
            uint64_t v;
            if (read(efd, &v, sizeof v) == sizeof v) {
                high_events += (long long)v;
                char b[32];
                snprintf(b, sizeof b, "%lld\n", high_events);
                int hf = open(C.high_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (hf >= 0) {
                    ssize_t w = write(hf, b, strlen(b));
                    (void)w;
                    close(hf);
                }
            }
        }
        if (r <= 0 || !(pf[0].revents & POLLIN))
            continue;
        struct signalfd_siginfo si;
        int done = 0;
        while (read(sfd, &si, sizeof si) == sizeof si) {
            int s = si.ssi_signo;
            if (s == SIGCHLD) {
                int st;
                if (waitpid(pid, &st, WNOHANG) == pid) {
                    init_status = st;
                    done = 1;
                }
            } else if (s == SIGUSR2) {
                if (!stopping)
                    reason = "stopped";
                stopping = 1;
                kill_cgroup();
                killed = 1;
            } else {
                /* SIGUSR1: a stop request in the control file; SIGTERM/INT/HUP: a stop
                 * with the job's own signal and grace period */
                int sig = C.stop_sig;
                long grace = C.grace_ms;
                char cb[256];
                if (s == SIGUSR1 && C.control && read_file(C.control, cb, sizeof cb) > 0) {
                    if (!strncmp(cb, "kill", 4))
                        grace = 0;
                    else
                        sscanf(cb, "stop %d %ld", &sig, &grace);
                }
                if (!stopping) {
                    reason = "stopped";
                    stopping = 1;
                }
                kill(pid, sig);
                long long end = now_ms() + grace;
                if (!killed && (grace_end < 0 || end < grace_end))
                    grace_end = end;
                if (grace == 0 && !killed) {
                    kill_cgroup();
                    killed = 1;
                    grace_end = -1;
                }
            }
        }
        if (done)
            break;
    }
    tmark("sup: init reaped");
    double finished = now_wall();

    /* 5. the outcome: init's report of the command's status, else init's own */
    for (;;) {
        ssize_t n = read(rep[0], line + len, sizeof line - 1 - len);
        if (n <= 0)
            break;
        len += n;
    }
    line[len] = 0;
    char *ex = strstr(line, "exit ");
    if (ex) {
        raw = atoi(ex + 5);
        have_raw = 1;
    } else {
        raw = init_status;
        have_raw = 1;
    }
    /* anything left in the cgroup (a v1 job's stragglers) is killed before reading */
    int empty = cg_empty_wait(5000);
    /* the job is gone: what it wrote last is still in the pipes (up to EOF, or to
     * empty if a process that outlived SIGKILL still holds a write end) */
    for (int i = 0; i < 2; i++) {
        pump(&streams[i], 256LL << 20);
        if (streams[i].rfd >= 0)
            close_stream(&streams[i]);
        if (streams[i].fd >= 0)
            close(streams[i].fd);
        streams[i].fd = -1;
    }
    write_logcut();
    tmark("sup: output drained");
    long long oom = C.oomfile ? keyed_value(C.oomfile, C.oomkey) : -1;
    /* the high-mark thread: told the job ended, and waited for (it must not be in
     * the middle of a registration when the cgroup is removed) */
    job_ended = 1;
    if (hipipe[0] >= 0) {
        struct high_msg m;
        struct pollfd hp = {hipipe[0], POLLIN, 0};
        if (poll(&hp, 1, 5000) > 0 && read(hipipe[0], &m, sizeof m) == sizeof m && m.efd >= 0) {
            efd = m.efd;
            registered = 1;
            high_events += m.already;
        }
        close(hipipe[0]);
    }
    if (efd >= 0) {
        uint64_t v;
        if (read(efd, &v, sizeof v) == sizeof v)
            high_events += (long long)v;
    }
    if (C.v1_usage && !registered && C.peakfile) {
        /* too short to register: it crossed its high mark if its peak is above it */
        char pb[64];
        if (read_file(C.peakfile, pb, sizeof pb) > 0 && atoll(pb) > C.v1_high)
            high_events = 1;
    }
    const char *state;
    int ok = WIFEXITED(raw) && WEXITSTATUS(raw) == 0;
    if (!strcmp(reason, "time_limit"))
        state = "TIMEOUT";
    else if (!strcmp(reason, "stopped"))
        state = "STOPPED";
    else if (oom > 0 && !ok)
        state = "OUT_OF_MEMORY";
    else if (ok)
        state = "COMPLETED";
    else
        state = "FAILED";
    if (efd >= 0)
        close(efd);
    /* the job's network namespace died with init, and its veth with it: its address
     * (a lease file) is free now, before the status says the job ended */
    for (int i = 0; i < C.nunl; i++)
        unlink(C.unlinks[i]);
    write_status(state, reason, raw, have_raw, started, finished, oom, high_events,
                 empty ? NULL : "processes remained in the cgroup after SIGKILL");
    tmark("sup: status written");
    /* the cgroup goes before "done": a launcher that starts the next job at once
     * does not contend with this removal for the cgroup locks */
    remove_cgroups();
    tmark("sup: cgroup removed");
    if (launcher >= 0) {
        say(launcher, "done\n");
        close(launcher);
    }
    cleanup();
    tmark("sup: cleaned");
    return 0;
}
