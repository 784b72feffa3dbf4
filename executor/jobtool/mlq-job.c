/* mlq-job: the `mlq` every job finds at /.mlq/bin/mlq, whatever its image.
 *
 * The executor binds this one static binary read-only (nosuid, nodev) into every
 * job and appends /.mlq/bin to the job's PATH, so `mlq checkpoint-done` works in an
 * image that has no mlq (and no Python).  It does what the full CLI's command does
 * (cli/jobs.py, checkpoint_done), with the same messages and exit codes; every other
 * command says that only checkpoint-done is available inside a job.
 *
 * It runs as the job's user with the job's privileges and no more: no setuid bit,
 * nothing read but MLQ_CHECKPOINT_MARK, and the mark opened with O_NOFOLLOW and
 * O_NONBLOCK (a symlink or a FIFO planted there is refused, never followed or
 * waited on).  Built static by `python -m mlq.executor.helper build` (no libc of the
 * image is ever loaded), beside mlq-runtime; never part of it.
 *
 * Two more commands serve interactive jobs (`mlq submit -it`, docs/daemon.md), and
 * are not for users: `mlq __interactive-hold` is such a job's command (it waits on a
 * FIFO in the job's own /tmp and exits with the code it reads), and
 * `mlq __interactive-run -- CMD...` is what `mlq submit -it` starts in the job's
 * terminal through mlq exec (it runs CMD, then writes CMD's exit code there), so the
 * job ends as its interactive command did. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* the interactive job's FIFO, in the job's own /tmp (a tmpfs of its own) */
#define INTERACTIVE_FIFO "/tmp/.mlq-interactive"

/* the CLI's exit codes (cli/main.py): 1 an error, 2 bad input or a usage mistake */
enum { EXIT_ERROR = 1, EXIT_USAGE = 2 };

static const char USAGE[] = "usage: mlq checkpoint-done (inside an mlq job only checkpoint-done is "
                            "available; the other mlq commands run on a machine where mlq is installed)";

static int usage_error(const char *what)
{
    if (what)
        fprintf(stderr, "mlq: error: no such command '%s' inside a job; %s\n", what, USAGE);
    else
        fprintf(stderr, "mlq: error: %s\n", USAGE);
    return EXIT_USAGE;
}

/* Touch MLQ_CHECKPOINT_MARK: create it if missing, set its times to now. */
static int checkpoint_done(void)
{
    const char *mark = getenv("MLQ_CHECKPOINT_MARK");
    if (!mark || !*mark) {
        fputs("mlq: error: MLQ_CHECKPOINT_MARK is not set: run this inside an mlq job that has a "
              "checkpoint volume\n",
              stderr);
        return EXIT_USAGE;
    }
    int fd = open(mark, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd < 0) {
        fprintf(stderr, "mlq: error: mark the checkpoint: open `%s`: %s\n", mark, strerror(errno));
        return EXIT_ERROR;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        fprintf(stderr, "mlq: error: mark the checkpoint: stat `%s`: %s\n", mark, strerror(errno));
        close(fd);
        return EXIT_ERROR;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "mlq: error: mark the checkpoint: `%s` is not a regular file\n", mark);
        close(fd);
        return EXIT_ERROR;
    }
    if (futimens(fd, NULL) < 0) {
        fprintf(stderr, "mlq: error: mark the checkpoint: set the time of `%s`: %s\n", mark, strerror(errno));
        close(fd);
        return EXIT_ERROR;
    }
    if (close(fd) < 0) {
        fprintf(stderr, "mlq: error: mark the checkpoint: close `%s`: %s\n", mark, strerror(errno));
        return EXIT_ERROR;
    }
    return 0;
}

/* An interactive job's command: the exit code of what `run` ran, once it ends. */
static int interactive_hold(void)
{
    unlink(INTERACTIVE_FIFO);
    if (mkfifo(INTERACTIVE_FIFO, 0600) < 0) {
        fprintf(stderr, "mlq: error: make `%s`: %s\n", INTERACTIVE_FIFO, strerror(errno));
        return EXIT_ERROR;
    }
    for (;;) {
        int fd = open(INTERACTIVE_FIFO, O_RDONLY | O_CLOEXEC); /* waits for `run` */
        if (fd < 0 && errno == EINTR)
            continue;
        if (fd < 0) {
            fprintf(stderr, "mlq: error: open `%s`: %s\n", INTERACTIVE_FIFO, strerror(errno));
            return EXIT_ERROR;
        }
        char buf[16] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            long code = strtol(buf, NULL, 10);
            return code >= 0 && code <= 255 ? (int)code : EXIT_ERROR;
        }
        /* a writer that went without a word (killed): wait for the next */
    }
}

/* Run CMD in the job's terminal and hand its exit code to `hold`. */
static int interactive_run(int argc, char **argv)
{
    if (argc < 2) {
        fputs("mlq: error: usage: mlq __interactive-run -- CMD...\n", stderr);
        return EXIT_USAGE;
    }
    /* as system(3): the terminal's ^C, ^\\ and a hangup are the command's, not ours */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    pid_t pid = fork();
    if (pid < 0) {
        perror("mlq: error: fork");
        return EXIT_ERROR;
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGQUIT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execvp(argv[1], argv + 1);
        fprintf(stderr, "mlq: error: %s: %s\n", argv[1], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    int status, code;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return EXIT_ERROR;
    code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    int fd = open(INTERACTIVE_FIFO, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        char line[16];
        int len = snprintf(line, sizeof line, "%d\n", code);
        if (write(fd, line, (size_t)len) != len)
            perror("mlq: error: hand the exit code to the job");
        close(fd);
    }
    return code;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "__interactive-hold"))
        return interactive_hold();
    if (argc > 3 && !strcmp(argv[1], "__interactive-run") && !strcmp(argv[2], "--"))
        return interactive_run(argc - 2, argv + 2);
    if (argc < 2)
        return usage_error(NULL);
    if (strcmp(argv[1], "checkpoint-done") != 0)
        return usage_error(argv[1][0] == '-' ? NULL : argv[1]);
    if (argc == 3 && !strcmp(argv[2], "--help")) {
        puts("Usage: mlq checkpoint-done\n\n"
             "  From inside a job: record that a checkpoint was just written.\n\n"
             "  The scheduler then prefers to preempt jobs that lose the least work. This\n"
             "  touches the file named by MLQ_CHECKPOINT_MARK, on the job's checkpoint\n"
             "  volume.");
        return 0;
    }
    if (argc > 2) {
        /* as the CLI (click) says it */
        fputs("mlq: error: Got unexpected extra argument(s) (", stderr);
        for (int i = 2; i < argc; i++)
            fprintf(stderr, "%s%s", i > 2 ? " " : "", argv[i]);
        fputs(") (see: mlq checkpoint-done --help)\n", stderr);
        return EXIT_USAGE;
    }
    return checkpoint_done();
}
