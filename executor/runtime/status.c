/* The supervisor's records in the run directory: supervisor.json (who supervises,
 * written before "ok"), logcut.json (bytes of each stream gone) and status.json
 * (the outcome, durable: complete or absent). */
#include "runtime.h"

#include <sys/wait.h>

static const char *const OUTCOME_NAMES[] = {
    [OUTCOME_COMPLETED] = "COMPLETED", [OUTCOME_FAILED] = "FAILED", [OUTCOME_OUT_OF_MEMORY] = "OUT_OF_MEMORY",
    [OUTCOME_TIMEOUT] = "TIMEOUT",     [OUTCOME_STOPPED] = "STOPPED",
};
static const char *const REASON_NAMES[] = {
    [END_EXITED] = "exited", [END_STOPPED] = "stopped", [END_TIME_LIMIT] = "time_limit"};

/* OUT_OF_MEMORY when the cgroup counted an OOM kill and the command did not exit 0,
 * never guessed from SIGKILL; a stop or the time limit wins over either. */
enum outcome pick_outcome(const struct run_end *e)
{
    int ok = WIFEXITED(e->raw) && WEXITSTATUS(e->raw) == 0;
    switch (e->reason) {
    case END_TIME_LIMIT:
        return OUTCOME_TIMEOUT;
    case END_STOPPED:
        return OUTCOME_STOPPED;
    case END_EXITED:
        break;
    }
    if (e->oom_kills > 0 && !ok)
        return OUTCOME_OUT_OF_MEMORY;
    return ok ? OUTCOME_COMPLETED : OUTCOME_FAILED;
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

static const char *signame(int s)
{
    static const char *const names[] = {
        [SIGHUP] = "SIGHUP",   [SIGINT] = "SIGINT",   [SIGQUIT] = "SIGQUIT", [SIGILL] = "SIGILL",
        [SIGTRAP] = "SIGTRAP", [SIGABRT] = "SIGABRT", [SIGBUS] = "SIGBUS",   [SIGFPE] = "SIGFPE",
        [SIGKILL] = "SIGKILL", [SIGUSR1] = "SIGUSR1", [SIGSEGV] = "SIGSEGV", [SIGUSR2] = "SIGUSR2",
        [SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGTERM] = "SIGTERM", [SIGXCPU] = "SIGXCPU",
        [SIGXFSZ] = "SIGXFSZ", [SIGSYS] = "SIGSYS"};
    return s > 0 && s < (int)(sizeof names / sizeof names[0]) && names[s] ? names[s] : NULL;
}

/* PATH replaced whole by TEXT: a temp file, every write and the close checked (and,
 * if DURABLE, the fsync before the rename and the directory's after it), renamed
 * only when all succeeded; on failure the temp file goes and nothing is renamed.
 * 0: done; -1: not replaced; 1: replaced, but the directory's fsync failed (errno). */
static int replace_file(const char *path, const char *dir, const char *text, size_t len, int durable)
{
    char tmp[PATH_BUF];
    if (pathf(tmp, sizeof tmp, "%s.tmp", path) < 0)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    int ok = write_all(fd, text, len) == 0 && (!durable || fsync(fd) == 0);
    int e = errno;
    if (close(fd) < 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (ok && rename(tmp, path) < 0) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        errno = e;
        return -1;
    }
    if (!durable)
        return 0;
    int dfd AUTO_CLOSE = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        return 1;
    return 0;
}

/* {"stdout": N, "stderr": M}: replaced whole, not fsync'd (a count, rewritten often) */
int write_logcut(const char *path, long long out, long long err)
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "{\"stdout\": %lld, \"stderr\": %lld}\n", out, err);
    return replace_file(path, NULL, buf, n, 0);
}

/* supervisor.json: this process (pid and /proc start time, so a recycled pid is never
 * taken for it), init's pid and how init joined its cgroup. Without it no other
 * process can find the supervisor, so a failure fails the launch. */
int write_supervisor_record(const struct plan *p, pid_t init_pid, double started, enum cgroup_join join,
                            struct rt_err *err)
{
    static const char *const JOIN_NAMES[] = {
        [JOIN_CLONE_INTO_CGROUP] = "clone_into_cgroup", [JOIN_TASKS] = "tasks", [JOIN_CGROUP_PROCS] = "cgroup.procs"};
    char path[PATH_BUF], buf[512];
    if (pathf(path, sizeof path, "%s/supervisor.json", p->rundir) < 0)
        return fail(err, "supervisor", errno, "write `%s/supervisor.json`", p->rundir);
    unsigned long long starttime = 0;
    char *stat AUTO_FREE = read_all("/proc/self/stat", NULL);
    char *c = stat ? strrchr(stat, ')') : NULL;
    /* field 22 (starttime) counted after the command name */
    for (int fld = 2; c && fld < 22; fld++)
        c = strchr(c + 1, ' ');
    if (!c)
        return fail(err, "supervisor", EINVAL, "read this process's start time in `/proc/self/stat`");
    starttime = strtoull(c + 1, NULL, 10);
    int n = snprintf(buf, sizeof buf,
                     "{\"pid\": %d, \"starttime\": %llu, \"init_pid\": %d, \"started_at\": %.6f, "
                     "\"cgroup_join\": \"%s\"}\n",
                     (int)getpid(), starttime, (int)init_pid, started, JOIN_NAMES[join]);
    int fd AUTO_CLOSE = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, buf, n) < 0 || close(TAKE_FD(fd)) < 0)
        return fail(err, "supervisor", errno, "write `%s`", path);
    return 0;
}

/* status.json, complete or absent: a half-written status would be read as an
 * outcome. A full disk (this job's output, another's) may be freed meanwhile, so it
 * is tried again 5 times a second apart; after that the run has no status and the
 * daemon's recovery records it FAILED ("lost"). Each failure goes to supervisor.log. */
int write_status(const struct plan *p, const struct run_end *e, struct logbook *lb)
{
    char *text AUTO_FREE = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        note(lb, "build `%s`: %s", p->status, strerror(errno));
        return -1;
    }
    int code = -1, sig = 0;
    if (WIFEXITED(e->raw)) {
        code = WEXITSTATUS(e->raw);
    } else if (WIFSIGNALED(e->raw)) {
        sig = WTERMSIG(e->raw);
        code = 128 + sig;
    }
    fprintf(f, "{\"state\": \"%s\", \"reason\": \"%s\", \"exit_code\": %d, \"signal\": ",
            OUTCOME_NAMES[pick_outcome(e)], REASON_NAMES[e->reason], code);
    if (sig && signame(sig))
        json_str(f, signame(sig));
    else if (sig)
        fprintf(f, "\"SIG%d\"", sig);
    else
        fputs("null", f);
    fprintf(f, ", \"started_at\": %.6f, \"finished_at\": %.6f, \"duration_s\": %.6f", e->started, e->finished,
            e->finished - e->started);
    long long peak = cgroup_peak(p);
    fprintf(f, ", \"max_memory_bytes\": %lld, \"oom_kills\": %lld, \"memory_high_events\": %lld",
            peak < 0 ? 0 : peak, e->oom_kills < 0 ? 0 : e->oom_kills, e->high_events);
    fputs(", \"cgroup\": {", f);
    cgroup_stats_json(f, p);
    fputs("}, \"error\": ", f);
    if (e->error)
        json_str(f, e->error);
    else
        fputs("null", f);
    fputs("}\n", f);
    int built = !ferror(f);
    if (fclose(f) != 0)
        built = 0;
    if (!built) {
        note(lb, "build `%s`: %s", p->status, strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt <= 5; attempt++) {
        if (attempt)
            sleep(1);
        int r = replace_file(p->status, p->rundir, text, len, 1);
        if (r == 0)
            return 0;
        if (r == 1) {
            note(lb, "fsync `%s` after renaming `%s` into it: %s", p->rundir, p->status, strerror(errno));
            return 0;
        }
        note(lb, "write `%s` (try %d of 6): %s", p->status, attempt + 1, strerror(errno));
        char m[128];
        snprintf(m, sizeof m, "status.json try %d: %s", attempt + 1, strerror(errno));
        trace(p, m);
    }
    return -1;
}
