/* Errors, the supervisor's log, the trace, and small file helpers. */
#include "runtime.h"

#include <time.h>

int fail(struct rt_err *err, const char *step, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof err->msg)
        n = sizeof err->msg - 1;
    if (errnum)
        snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(errnum));
    err->step = step;
    errno = errnum;
    return -1;
}

void report(int fd, const struct rt_err *err)
{
    char line[sizeof err->msg + 128];
    int n = snprintf(line, sizeof line, "error %s: %s\n", err->step ? err->step : "start", err->msg);
    if (n >= (int)sizeof line)
        n = sizeof line - 1;
    if (fd >= 0) {
        /* one write: the launcher reads one line; if it is gone there is no one to tell */
        write_all(fd, line, n);
    } else {
        fprintf(stderr, "mlq-runtime: %s", line);
    }
}

void note(struct logbook *lb, const char *fmt, ...)
{
    if (!lb)
        return;
    if (lb->fd < 0) {
        char path[PATH_BUF];
        if (!lb->dir || pathf(path, sizeof path, "%s/supervisor.log", lb->dir) < 0)
            return;
        lb->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (lb->fd < 0)
            return; /* the log of last resort: a failure here has nowhere to go */
    }
    char line[4096];
    int n = snprintf(line, sizeof line, "%.6f ", now_wall());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    n += m < (int)(sizeof line - n - 1) ? m : (int)(sizeof line - n - 2);
    line[n++] = '\n';
    write_all(lb->fd, line, n); /* a failure here has nowhere left to go */
}

void trace(const struct plan *p, const char *label)
{
    if (p->trace_fd < 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char buf[256];
    int n = snprintf(buf, sizeof buf, "%d %lld.%06ld %s\n", getpid(), (long long)ts.tv_sec, ts.tv_nsec / 1000,
                     label);
    if (n >= (int)sizeof buf)
        n = sizeof buf - 1;
    if (write(p->trace_fd, buf, n) < 0) {
        /* a debugging aid (bench/launch): a lost line costs nothing but the line */
    }
}

int pathf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Write all of LEN bytes to FD, or fail. */
int write_all(int fd, const char *p, size_t len)
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

/* One write of S to an existing file (cgroup and /proc files take a value per write). */
int write_file(const char *path, const char *s)
{
    int fd AUTO_CLOSE = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = strlen(s);
    ssize_t n = write(fd, s, len);
    if (n < 0)
        return -1;
    if ((size_t)n != len) {
        errno = EIO;
        return -1;
    }
    return 0;
}

char *read_all(const char *path, size_t *len)
{
    int fd AUTO_CLOSE = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf AUTO_FREE = malloc(cap);
    if (!buf)
        return NULL;
    for (;;) {
        if (n + 1 >= cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger)
                return NULL;
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return NULL;
        if (r == 0)
            break;
        n += r;
    }
    buf[n] = 0;
    if (len)
        *len = n;
    char *out = buf;
    buf = NULL;
    return out;
}

long long read_number(const char *path)
{
    char *text AUTO_FREE = read_all(path, NULL);
    return text && *text ? atoll(text) : -1;
}

long long keyed_value(const char *path, const char *key)
{
    char *buf AUTO_FREE = read_all(path, NULL);
    if (!buf)
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

void *list_slot(void **v, int *n, int *cap, size_t size)
{
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 16;
        void *p = realloc(*v, (size_t)c * size);
        if (!p)
            return NULL;
        *v = p;
        *cap = c;
    }
    return (char *)*v + (size_t)(*n)++ * size;
}
