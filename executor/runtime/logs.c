/*
 * The job's output: its fd 1 and 2 are pipes; the supervisor copies what comes out
 * of them into <run>/stdout and stderr. With a log limit N each file holds at most
 * N/2 bytes: a full one becomes stdout.1 (the older .1 is dropped) and a new one
 * starts, so at most N bytes are kept and always the newest. The bytes gone (rotated
 * out, or lost to a write that failed) are counted in logcut.json, so a reader maps
 * offsets over all the job ever wrote: dropped bytes first, then stdout.1, then
 * stdout. A write that fails drops its data and counts it (and says so once in
 * supervisor.log): the job never waits on a full disk, and the supervisor lives.
 */
#include "runtime.h"

#include <fcntl.h>

/* logcut.json now; on failure it is tried again at the next change and at the end */
static void write_cut(struct logs *lg)
{
    lg->cut_at = now_ms();
    if (write_logcut(lg->p->logcut, lg->s[0].dropped, lg->s[1].dropped) == 0) {
        lg->cut_dirty = 0;
        return;
    }
    if (!lg->cut_dirty)
        note(lg->lb, "write `%s`: %s (tried again at the next change and at the end)", lg->p->logcut,
             strerror(errno));
    lg->cut_dirty = 1;
}

/* The current file, opened to append (by offset: splice() refuses O_APPEND files,
 * and this process is the only writer). */
static void open_current(struct logs *lg, struct stream *s, int truncate)
{
    s->fd = open(s->path, O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0640);
    if (s->fd < 0) {
        if (s->write_errno != errno)
            note(lg->lb, "open `%s`: %s (its output is dropped and counted until it opens)", s->path,
                 strerror(errno));
        s->write_errno = errno;
        s->size = 0;
        return;
    }
    s->size = lseek(s->fd, 0, SEEK_END);
    if (s->size < 0)
        s->size = 0;
}

int logs_open(struct logs *lg, const struct plan *p, struct logbook *lb, struct rt_err *err)
{
    const char *names[2] = {"stdout", "stderr"};
    const char *paths[2] = {p->out, p->err};
    lg->p = p;
    lg->lb = lb;
    lg->cut_dirty = 0;
    lg->cut_at = 0;
    for (int i = 0; i < 2; i++) {
        struct stream *s = &lg->s[i];
        *s = (struct stream){.name = names[i], .path = paths[i], .rfd = -1, .wfd = -1, .fd = -1, .splice_ok = 1};
        snprintf(s->old, sizeof s->old, "%s.1", s->path); /* fits: plan.c keeps paths under PATH_MAX */
    }
    for (int i = 0; i < 2; i++) {
        struct stream *s = &lg->s[i];
        s->fd = open(s->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        s->created = s->fd >= 0;
        if (s->fd < 0 && errno == EEXIST)
            s->fd = open(s->path, O_WRONLY | O_CLOEXEC);
        if (s->fd < 0) {
            fail(err, "logs", errno, "open `%s`", s->path);
            goto failed;
        }
        s->size = lseek(s->fd, 0, SEEK_END);
        if (s->size < 0)
            s->size = 0;
        int pp[2];
        if (pipe2(pp, O_CLOEXEC) < 0) {
            fail(err, "logs", errno, "pipe for the job's %s", s->name);
            goto failed;
        }
        s->rfd = pp[0];
        s->wfd = pp[1];
        if (fcntl(s->rfd, F_SETFL, O_NONBLOCK) < 0) {
            fail(err, "logs", errno, "make the %s pipe non-blocking", s->name);
            goto failed;
        }
        /* 1 MiB (pipe-max-size) instead of 64 KiB: a job writing fast waits on this
         * process 16 times less often; best effort (a lower pipe-max-size refuses) */
        fcntl(s->wfd, F_SETPIPE_SZ, 1 << 20);
        /* the job's user owns its end, as runc does: /dev/stdout is /proc/self/fd/1,
         * and reopening a pipe there checks its owner and mode (0600) */
        if (p->have_opener && fchown(s->wfd, p->op_uid, p->op_gid) < 0) {
            fail(err, "logs", errno, "give the %s pipe to uid %u", s->name, (unsigned)p->op_uid);
            goto failed;
        }
    }
    return 0;
failed:
    logs_discard(lg);
    return -1;
}

void logs_discard(struct logs *lg)
{
    for (int i = 0; i < 2; i++) {
        struct stream *s = &lg->s[i];
        int *fds[] = {&s->rfd, &s->wfd, &s->fd};
        for (unsigned k = 0; k < sizeof fds / sizeof fds[0]; k++)
            if (*fds[k] >= 0)
                close(TAKE_FD(*fds[k]));
        if (s->created && unlink(s->path) < 0 && errno != ENOENT)
            note(lg->lb, "unlink `%s`: %s", s->path, strerror(errno));
        s->created = 0;
    }
}

/* The current file becomes .1 (the old .1's bytes are dropped) and a new one starts.
 * Readers see the rename, then the new count, then the new file: a missing current
 * file, a count that changed or a file that changed under them makes them read the
 * three again (scheduler/daemon/logs.py). */
static void rotate(struct logs *lg, struct stream *s)
{
    if (s->fd >= 0 && close(TAKE_FD(s->fd)) < 0)
        note(lg->lb, "close `%s`: %s", s->path, strerror(errno));
    int truncate = 0;
    /* one rename replaces .1: never a moment without it. (On ext4 replacing a file
     * makes the kernel start writing the renamed one out first, auto_da_alloc:
     * ~25 ms for 50 MiB here, paid once per N/2 bytes.) */
    if (rename(s->path, s->old) == 0) {
        s->dropped += s->old_size;
        s->old_size = s->size;
    } else {
        /* the cap holds even so: this file's bytes go instead of the older ones */
        note(lg->lb, "rename `%s` to `%s`: %s (its bytes are dropped instead)", s->path, s->old, strerror(errno));
        s->dropped += s->size;
        truncate = 1;
    }
    s->size = 0;
    write_cut(lg);
    open_current(lg, s, truncate);
}

static void close_pipe(struct stream *s)
{
    close(TAKE_FD(s->rfd));
}

/* Copy what waits in pipe I into its file, up to BUDGET bytes (so stop requests and
 * the end are not kept waiting by a job that writes without pause). splice() moves
 * pipe pages into the page cache without a copy through this process; where it
 * cannot, read/write. */
void logs_pump(struct logs *lg, int i, long long budget)
{
    struct stream *s = &lg->s[i];
    long long limit = lg->p->log_limit, half = limit / 2, moved = 0;
    while (s->rfd >= 0 && moved < budget) {
        if (limit > 0 && half > 0 && s->size >= half)
            rotate(lg, s);
        if (s->fd < 0)
            open_current(lg, s, 0); /* space may have been freed meanwhile */
        /* how much fits in the current file; 0: a limit below 2 bytes keeps nothing */
        long long room = limit > 0 ? half - s->size : 1 << 20;
        if (room > 1 << 20)
            room = 1 << 20;
        if (s->fd >= 0 && room > 0 && s->splice_ok) {
            ssize_t n = splice(s->rfd, NULL, s->fd, NULL, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                s->size += n;
                moved += n;
                s->write_errno = 0;
                continue;
            }
            if (n == 0) {
                close_pipe(s);
                break;
            }
            if (errno == EAGAIN)
                break;
            if (errno == EINVAL || errno == ENOSYS)
                s->splice_ok = 0;
            /* else (ENOSPC, EIO, ...): the data is still in the pipe; read it below,
             * and write it if the file takes it now, else count it dropped */
        }
        ssize_t n = read(s->rfd, lg->buf, room > 0 && room < (long long)sizeof lg->buf ? (size_t)room : sizeof lg->buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            close_pipe(s);
            break;
        }
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            continue;
        }
        moved += n;
        size_t done = 0;
        int werr = 0;
        while (s->fd >= 0 && room > 0 && done < (size_t)n) {
            ssize_t w = write(s->fd, lg->buf + done, n - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                werr = w < 0 ? errno : EIO;
                break;
            }
            done += w;
        }
        s->size += done;
        if (done < (size_t)n) {
            /* dropped: counted in logcut.json, and said once per kind of failure */
            if (werr && werr != s->write_errno)
                note(lg->lb, "write `%s`: %s (what could not be written is dropped and counted in `%s`)", s->path,
                     strerror(werr), lg->p->logcut);
            if (werr)
                s->write_errno = werr;
            s->dropped += n - done;
            lg->cut_dirty = 1;
        } else if (done) {
            s->write_errno = 0;
        }
    }
}

/* Count changes not made by a rotation (failed writes) at most 10 times a second. */
void logs_flush_cut(struct logs *lg, int force)
{
    if (lg->cut_dirty && (force || now_ms() - lg->cut_at >= 100))
        write_cut(lg);
}

/* The job is gone: what it wrote last is still in the pipes (up to EOF, or to empty
 * if a process that outlived SIGKILL still holds a write end); then the files close
 * and the final count is written. */
void logs_drain(struct logs *lg)
{
    for (int i = 0; i < 2; i++) {
        struct stream *s = &lg->s[i];
        logs_pump(lg, i, 256LL << 20);
        if (s->rfd >= 0)
            close_pipe(s);
        if (s->fd >= 0 && close(TAKE_FD(s->fd)) < 0)
            note(lg->lb, "close `%s`: %s", s->path, strerror(errno));
    }
    write_cut(lg);
}
