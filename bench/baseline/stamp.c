/*
 * stamp: the application side of the change-latency benchmark. Each notification appends one
 * line, "SECONDS.NANOS VERSION", to FILE: the wall-clock time at which it was told and the
 * version it was told about. A C program rather than `sh -c date`, so that what is measured is
 * keyturn handing the change over, not a shell starting.
 *
 *   stamp FILE
 *       as an `exec` notifier: one line, with KEYTURN_VERSION, then exit.
 *   stamp --signal FILE PIDFILE MANIFEST
 *       as an application told by `signal`: writes its pid to PIDFILE, then for every SIGHUP
 *       reads the clock, then the version from the bundle's MANIFEST (`..data/..keyturn.json`,
 *       its first "version" field), as an application reloading its files would. Runs until
 *       SIGTERM.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int append(const char *file, const struct timespec *at, const char *version) {
    char line[192];
    int len = snprintf(line, sizeof line, "%lld.%09ld %s\n", (long long)at->tv_sec, at->tv_nsec, version);
    int fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)len) != len) {
        perror("stamp");
        return 1;
    }
    close(fd);
    return 0;
}

/* The first `"version": "V"` in the manifest, into `out`; "-" if there is none. */
static void manifest_version(const char *manifest, char *out, size_t size) {
    char text[8192];
    snprintf(out, size, "-");
    int fd = open(manifest, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    ssize_t len = read(fd, text, sizeof text - 1);
    close(fd);
    if (len <= 0) {
        return;
    }
    text[len] = '\0';
    const char *key = strstr(text, "\"version\"");
    const char *start = key ? strchr(key + 9, '"') : NULL;
    const char *end = start ? strchr(start + 1, '"') : NULL;
    if (end && (size_t)(end - start) < size) {
        snprintf(out, size, "%.*s", (int)(end - start - 1), start + 1);
    }
}

static int listen_for_signals(const char *file, const char *pidfile, const char *manifest) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    int fd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, pid, (size_t)len) != len) {
        perror("stamp: pidfile");
        return 1;
    }
    close(fd);
    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        if (sig == SIGTERM) {
            return 0;
        }
        if (sig != SIGHUP) {
            continue;
        }
        char version[64];
        manifest_version(manifest, version, sizeof version);
        if (append(file, &now, version) != 0) {
            return 1;
        }
    }
}

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (argc == 5 && strcmp(argv[1], "--signal") == 0) {
        return listen_for_signals(argv[2], argv[3], argv[4]);
    }
    if (argc != 2) {
        fprintf(stderr, "usage: stamp FILE | stamp --signal FILE PIDFILE MANIFEST\n");
        return 64;
    }
    const char *version = getenv("KEYTURN_VERSION");
    return append(argv[1], &now, version ? version : "-");
}
