/*
 * stamp: the notifier of the change-latency benchmark. It appends one line, "SECONDS.NANOS
 * VERSION", to FILE: the wall-clock time at which it ran and the KEYTURN_VERSION it was told
 * about. A C program rather than `sh -c date`, so that what is measured is keyturn handing the
 * change over, not a shell starting.
 *
 *   stamp FILE
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (argc != 2) {
        fprintf(stderr, "usage: stamp FILE\n");
        return 64;
    }
    const char *version = getenv("KEYTURN_VERSION");
    char line[128];
    int len = snprintf(line, sizeof line, "%lld.%09ld %s\n", (long long)now.tv_sec, now.tv_nsec,
                       version ? version : "-");
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)len) != len) {
        perror("stamp");
        return 1;
    }
    close(fd);
    return 0;
}
