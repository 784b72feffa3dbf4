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
 * image is ever loaded), beside mlq-runtime; never part of it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int main(int argc, char **argv)
{
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
