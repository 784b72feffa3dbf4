/* The command's privileges: supplementary groups, ids, capabilities, no_new_privs,
 * seccomp, and the maps of its user namespace (written by init). */
#include "runtime.h"

#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

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

int install_seccomp(const struct plan *p, struct rt_err *err)
{
    int allow_ptrace = !!(p->caps & (1ULL << CAP_SYS_PTRACE));
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
    if (total > (int)(sizeof f / sizeof f[0]))
        return fail(err, "seccomp", E2BIG, "build a filter of %d instructions", total);
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
        return fail(err, "seccomp", EINVAL, "lay out the filter: %d instructions, not %d", n, total);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        return fail(err, "seccomp", errno, "install the filter");
    return 0;
}

static int cap_last(void)
{
    long long last = read_number("/proc/sys/kernel/cap_last_cap");
    return last > 0 && last < 64 ? (int)last : 40;
}

/* The host gids of the job's user, set while the command is still root in the
 * host's user namespace: inside one of its own it could not, and would keep root's. */
int set_groups(const struct plan *p, struct rt_err *err)
{
    if (setgroups(p->groups.n, p->groups.v) < 0)
        return fail(err, "user", errno, "setgroups (%d groups)", p->groups.n);
    return 0;
}

/* The bounding set is what root regains at exec; dropping from it needs CAP_SETPCAP,
 * so this runs before the switch to the job's user. */
int drop_bounding(const struct plan *p, struct rt_err *err)
{
    int last = cap_last();
    for (int c = 0; c <= last; c++)
        if (!(p->caps & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
            return fail(err, "capabilities", errno, "drop `%d` from the bounding set", c);
    return 0;
}

/* The job's uid and gid, keeping the capabilities only until set_caps sets them. */
int set_ids(const struct plan *p, struct rt_err *err)
{
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        return fail(err, "user", errno, "keep capabilities across setuid");
    if (setresgid(p->gid, p->gid, p->gid) < 0)
        return fail(err, "user", errno, "setgid `%u`", (unsigned)p->gid);
    if (setresuid(p->uid, p->uid, p->uid) < 0)
        return fail(err, "user", errno, "setuid `%u`", (unsigned)p->uid);
    return 0;
}

int set_caps(const struct plan *p, struct rt_err *err)
{
    int last = cap_last();
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2] = {0};
    d[0].effective = d[0].permitted = d[0].inheritable = (uint32_t)p->caps;
    d[1].effective = d[1].permitted = d[1].inheritable = (uint32_t)(p->caps >> 32);
    if (syscall(SYS_capset, &h, d) < 0)
        return fail(err, "capabilities", errno, "capset `%llx`", p->caps);
    /* ambient: a non-root user keeps the named capabilities across exec */
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return fail(err, "capabilities", errno, "clear the ambient set");
    for (int c = 0; c <= last; c++)
        if ((p->caps & (1ULL << c)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
            return fail(err, "capabilities", errno, "raise `%d` in the ambient set", c);
    return 0;
}

int set_no_new_privs(struct rt_err *err)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return fail(err, "no_new_privs", errno, "prctl PR_SET_NO_NEW_PRIVS");
    return 0;
}

static int write_map(pid_t pid, const char *kind, const char *map, struct rt_err *err)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, kind);
    size_t len = strlen(map);
    char *line AUTO_FREE = malloc(len + 2); /* plan.c kept it under a page */
    if (!line)
        return fail(err, "user namespace", ENOMEM, "write `%s`", path);
    memcpy(line, map, len);
    memcpy(line + len, "\n", 2);
    if (write_file(path, line) < 0)
        return fail(err, "user namespace", errno, "write `%s` \"%s\"", path, map);
    return 0;
}

/* Init (real root) writes the command's maps once it is in its own user namespace,
 * so the job's root is an unprivileged host uid. */
int write_id_maps(const struct plan *p, pid_t pid, struct rt_err *err)
{
    if (write_map(pid, "setgroups", "deny", err) < 0 || write_map(pid, "uid_map", p->uidmap, err) < 0 ||
        write_map(pid, "gid_map", p->gidmap, err) < 0)
        return -1;
    return 0;
}

/* The job's command's privileges, from the bounding set to no_new_privs, in the one
 * order both the command (init.c) and mlq exec's command (exec.c) take: the bounding
 * set needs CAP_SETPCAP, so before the user switch; without no_new_privs a filter
 * needs CAP_SYS_ADMIN, so installed while it is held; the working directory entered
 * as the job's user with its capabilities (a chdir as root could leave it in a
 * directory it may not search, from where relative names reach what the lock on the
 * way keeps from it). With no_new_privs the filter is the caller's last step, right
 * before exec, so that as few calls as possible run under it. */
int become_command(const struct plan *p, struct rt_err *err)
{
    if (drop_bounding(p, err) < 0 || set_ids(p, err) < 0)
        return -1;
    if (!p->nnp && p->seccomp && install_seccomp(p, err) < 0)
        return -1;
    if (set_caps(p, err) < 0)
        return -1;
    if (p->cwd && chdir(p->cwd) < 0)
        return fail(err, "cwd", errno, "chdir `%s`", p->cwd);
    if (p->nnp && set_no_new_privs(err) < 0)
        return -1;
    return 0;
}
