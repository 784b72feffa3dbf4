/* Init's root filesystem: / made private, the overlay, the mounts into it (every
 * target resolved inside the root), the /dev symlinks, pivot_root, and OCI's masked
 * and read-only paths.  Everything mounted here lives in init's mount namespace: if
 * a step fails, init exits and the kernel takes all of it away with the namespace. */
#include "runtime.h"

#include <linux/openat2.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>

static void fdpath(char *buf, size_t size, int fd)
{
    snprintf(buf, size, "/proc/self/fd/%d", fd);
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
    char prefix[PATH_BUF] = "";
    size_t plen = 0;
    const char *c = path;
    while (*c) {
        while (*c == '/')
            c++;
        if (!*c)
            break;
        size_t len = strcspn(c, "/");
        if (plen + len + 2 >= sizeof prefix || len > NAME_MAX) {
            errno = ENAMETOOLONG;
            return -1;
        }
        int parent AUTO_CLOSE = plen ? (int)syscall(SYS_openat2, rootfd, prefix, &how, sizeof how) : dup(rootfd);
        if (parent < 0)
            return -1;
        char name[NAME_MAX + 1];
        memcpy(name, c, len);
        name[len] = 0;
        prefix[plen++] = '/';
        memcpy(prefix + plen, c, len);
        plen += len;
        prefix[plen] = 0;
        c += len;
        int last = !c[strspn(c, "/")];
        fd = syscall(SYS_openat2, rootfd, prefix, &how, sizeof how);
        if (fd < 0 && errno == ENOENT) {
            /* a failure here (EEXIST from a race, EROFS) shows in the open after it */
            if (last && is_file) {
                int made = openat(parent, name, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (made >= 0)
                    close(made);
            } else if (mkdirat(parent, name, 0755) < 0 && errno != EEXIST) {
                return -1;
            }
            fd = syscall(SYS_openat2, rootfd, prefix, &how, sizeof how);
        }
        if (fd < 0)
            return -1;
        if (last)
            return fd;
        close(fd);
    }
    return dup(rootfd);
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
static int open_as_user(const struct plan *p, const char *what, const char *path, int rules, struct rt_err *err)
{
    int uid = p->have_opener ? (int)p->op_uid : 0;
    gid_t *saved AUTO_FREE = NULL;
    int nsaved = 0;
    if (p->have_opener) {
        nsaved = getgroups(0, NULL);
        if (nsaved < 0 || !(saved = calloc(nsaved + 1, sizeof *saved)) ||
            (nsaved = getgroups(nsaved, saved)) < 0)
            return fail(err, "mount", errno ? errno : ENOMEM, "read this process's groups to open %s `%s`", what,
                        path);
        if (syscall(SYS_setgroups, p->op_groups.n, p->op_groups.v) < 0)
            return fail(err, "mount", errno, "take the groups of uid %d to open %s `%s`", uid, what, path);
        syscall(SYS_setfsgid, p->op_gid);
        syscall(SYS_setfsuid, p->op_uid);
        if ((uid_t)syscall(SYS_setfsuid, -1) != p->op_uid)
            return fail(err, "mount", EPERM, "take uid %d to open %s `%s`", uid, what, path);
    }
    int fd AUTO_CLOSE = open(path, O_PATH | O_CLOEXEC);
    int e = errno;
    if (p->have_opener) {
        syscall(SYS_setfsuid, 0);
        syscall(SYS_setfsgid, 0);
        if (syscall(SYS_setgroups, nsaved, saved) < 0)
            return fail(err, "mount", errno, "take back this process's groups after opening %s `%s`", what, path);
    }
    if (fd < 0)
        return fail(err, "mount", e, "open %s `%s` as uid %d", what, path, uid);
    char link[64], real[PATH_BUF];
    fdpath(link, sizeof link, fd);
    ssize_t n = readlink(link, real, sizeof real - 1);
    if (n < 0)
        return fail(err, "mount", errno, "read where %s `%s` leads", what, path);
    real[n] = 0;
    for (int i = 0; i < p->deny.n; i++)
        if (path_under(real, p->deny.v[i]))
            return fail(err, "mount", EPERM, "%s `%s` leads to `%s`, under `%s`, which no job may mount", what, path,
                        real, p->deny.v[i]);
    if (rules && p->allow.n) {
        int ok = 0;
        for (int i = 0; i < p->allow.n && !ok; i++)
            ok = path_under(real, p->allow.v[i]);
        if (!ok)
            return fail(err, "mount", EPERM, "%s `%s` leads to `%s`, outside the volume paths granted to this job",
                        what, path, real);
    }
    return TAKE_FD(fd);
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
static int lock_bind(const char *target, const char *dst, unsigned long lock, struct rt_err *err)
{
    struct mount_attr a = {0};
    a.attr_set = (lock & MS_RDONLY ? MOUNT_ATTR_RDONLY : 0) | (lock & MS_NOSUID ? MOUNT_ATTR_NOSUID : 0) |
                 (lock & MS_NODEV ? MOUNT_ATTR_NODEV : 0) | (lock & MS_NOEXEC ? MOUNT_ATTR_NOEXEC : 0);
    if (syscall(SYS_mount_setattr, AT_FDCWD, target, AT_RECURSIVE, &a, sizeof a) == 0)
        return 0;
    if (errno != ENOSYS)
        return fail(err, "mount", errno, "lock `%s` (read-only, nosuid, nodev)", dst);
    if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | lock, NULL) < 0)
        return fail(err, "mount", errno, "remount `%s` read-only, nosuid, nodev", dst);
    return 0;
}

/* ---------- the root ---------- */

/* / made private (nothing propagates to the host), then the overlay; *ROOTFD: the
 * new root, for resolving every mount target inside it. */
int mount_root(const struct plan *p, int *rootfd, struct rt_err *err)
{
    trace(p, "init: mounts begin");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return fail(err, "mount", errno, "make `/` private (so nothing propagates to the host)");
    char lowerfd[64];
    const char *lower = p->lower;
    int lfd AUTO_CLOSE = -1;
    if (p->lower_asuser) {
        /* a rootfs directory the user named: reached as the user, mounted by fd */
        if ((lfd = open_as_user(p, "image", p->lower, 0, err)) < 0)
            return -1;
        fdpath(lowerfd, sizeof lowerfd, lfd);
        lower = lowerfd;
    }
    if (p->upper && *p->upper) {
        char opts[MOUNT_DATA_MAX + 1];
        if (pathf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s,volatile", lower, p->upper, p->work) < 0)
            /* mount(2) would cut it short, and name other layers */
            return fail(err, "mount overlay", E2BIG, "options for `%s` past %d bytes", p->rootfs, MOUNT_DATA_MAX);
        int r = mount("overlay", p->rootfs, "overlay", 0, opts);
        if (r < 0 && errno == EINVAL) {
            /* kernels before 5.10 know no "volatile": sync the upper layer instead */
            *strrchr(opts, ',') = 0;
            r = mount("overlay", p->rootfs, "overlay", 0, opts);
        }
        if (r < 0)
            return fail(err, "mount overlay", errno, "overlay `%s` on `%s`", opts, p->rootfs);
    } else if (mount(lower, p->rootfs, NULL, MS_BIND | MS_REC, NULL) < 0) {
        return fail(err, "mount root", errno, "bind `%s` on `%s`", p->lower, p->rootfs);
    }
    trace(p, "init: overlay mounted");
    *rootfd = open(p->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*rootfd < 0)
        return fail(err, "mount", errno, "open `%s`", p->rootfs);
    return 0;
}

/* Mounts [from, to) of the plan, in order, each target resolved inside the root. */
int mount_range(const struct plan *p, int rootfd, int from, int to, struct rt_err *err)
{
    for (int i = from; i < to; i++) {
        const struct mnt *m = &p->mounts.v[i];
        int remount = !strcmp(m->type, "remount");
        int is_file = m->is_file;
        const char *src = m->src;
        char srcfd[64], target[64];
        int sfd AUTO_CLOSE = -1;
        if ((m->flags & MS_BIND) && !remount) {
            struct stat st;
            if (m->asuser) {
                if ((sfd = open_as_user(p, "volume", m->src, 1, err)) < 0)
                    return -1;
                fdpath(srcfd, sizeof srcfd, sfd);
                src = srcfd;
            }
            if ((sfd >= 0 ? fstat(sfd, &st) : stat(m->src, &st)) < 0)
                return fail(err, "mount", errno, "stat `%s` (the source for `%s`)", m->src, m->dst);
            is_file = !S_ISDIR(st.st_mode);
        }
        int fd AUTO_CLOSE = open_in_root(rootfd, m->dst, is_file);
        if (fd < 0)
            return fail(err, "mount", errno, "create target `%s` in the root", m->dst);
        fdpath(target, sizeof target, fd);
        if (remount) {
            /* e.g. the tmpfs holding v1 cgroup mounts, made read-only once filled */
            if (mount(NULL, target, NULL, MS_REMOUNT | m->flags, m->data) < 0)
                return fail(err, "mount", errno, "remount `%s`", m->dst);
            continue;
        }
        if (mount(src, target, m->type, m->flags, m->data) < 0)
            return fail(err, "mount", errno, "%s `%s` on `%s`", *m->type ? m->type : "bind", m->src, m->dst);
        if (m->lock) {
            /* the target fd still names the directory under the new mount: reopen */
            close(TAKE_FD(fd));
            if ((fd = open_in_root(rootfd, m->dst, is_file)) < 0)
                return fail(err, "mount", errno, "open `%s` in the root again", m->dst);
            fdpath(target, sizeof target, fd);
            if (lock_bind(target, m->dst, m->lock, err) < 0)
                return -1;
        }
    }
    return 0;
}

/* Symlinks in /dev, and the root made read-only if asked. */
int finish_root(const struct plan *p, struct rt_err *err)
{
    for (int i = 0; i < p->links.n; i++) {
        const struct pair *l = &p->links.v[i];
        char full[2 * PATH_MAX];
        if (pathf(full, sizeof full, "%s%s", p->rootfs, l->b) < 0)
            return fail(err, "symlink", errno, "name `%s` in `%s`", l->b, p->rootfs);
        if (unlink(full) < 0 && errno != ENOENT)
            return fail(err, "symlink", errno, "unlink `%s`", l->b);
        if (symlink(l->a, full) < 0)
            return fail(err, "symlink", errno, "symlink `%s` -> `%s`", l->b, l->a);
    }
    if (p->readonly_root && mount(NULL, p->rootfs, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
        return fail(err, "mount", errno, "remount the root `%s` read-only", p->rootfs);
    return 0;
}

/* pivot_root(".", ".") stacks the old root under the new one; detaching it leaves
 * only the job's tree (no chroot: a chroot can be escaped by a root process). */
int pivot_into_root(const struct plan *p, struct rt_err *err)
{
    if (chdir(p->rootfs) < 0)
        return fail(err, "pivot_root", errno, "chdir `%s`", p->rootfs);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        return fail(err, "pivot_root", errno, "pivot_root `%s`", p->rootfs);
    if (umount2(".", MNT_DETACH) < 0)
        return fail(err, "pivot_root", errno, "detach the old root");
    if (chdir("/") < 0)
        return fail(err, "pivot_root", errno, "chdir `/`");
    return 0;
}

/* OCI's masked and read-only paths: uid 0 without capabilities can still write some
 * of /proc/sys and /sys, and read /proc/kcore or /proc/keys.  A path this kernel
 * does not have is skipped. */
int protect_paths(const struct plan *p, struct rt_err *err)
{
    for (int i = 0; i < p->masks.n; i++) {
        const char *path = p->masks.v[i];
        struct stat st;
        if (stat(path, &st) < 0)
            continue;
        int r = S_ISDIR(st.st_mode)
                    ? mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
                    : mount("/dev/null", path, NULL, MS_BIND, NULL);
        if (r < 0)
            return fail(err, "mask", errno, "mask `%s`", path);
    }
    for (int i = 0; i < p->ropaths.n; i++) {
        const char *path = p->ropaths.v[i];
        struct statvfs sv;
        if (statvfs(path, &sv) < 0)
            continue;
        if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) < 0)
            return fail(err, "read-only path", errno, "bind `%s`", path);
        unsigned long keep = (sv.f_flag & ST_NOSUID ? MS_NOSUID : 0) | (sv.f_flag & ST_NODEV ? MS_NODEV : 0) |
                             (sv.f_flag & ST_NOEXEC ? MS_NOEXEC : 0);
        if (mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, NULL) < 0)
            return fail(err, "read-only path", errno, "remount `%s` read-only", path);
    }
    return 0;
}

int loopback_up(struct rt_err *err)
{
    int s AUTO_CLOSE = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return fail(err, "network", errno, "socket for `lo`");
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return fail(err, "network", errno, "read the flags of `lo`");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        return fail(err, "network", errno, "bring `lo` up");
    return 0;
}
