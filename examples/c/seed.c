/* The seed's program on libmmapkit: one anonymous shared mapping and one shared mapping of
 * /dev/zero; after fork the child sees the parent's later write in both. The parent writes
 * "string 2" between the child's two reports; a pipe orders the steps (the seed used sleeps
 * alone). Prints four lines: "PID <pid>:\t<anonymous>, <zero-backed>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mmapkit.h"

static void check(int status, const char *what) {
    if (status != MMAPKIT_OK) {
        fprintf(stderr, "%s: %s (%s)\n", what, mmapkit_status_name(status),
                mmapkit_last_error_message());
        exit(1);
    }
}

static void put(mmapkit_mapping_t *map, const char *text) {
    check(mmapkit_mapping_write_at(map, 0, text, strlen(text) + 1), "write_at");
}

static void report(mmapkit_mapping_t *anonymous, mmapkit_mapping_t *zero) {
    char a[64], z[64];
    check(mmapkit_mapping_read_at(anonymous, 0, a, sizeof a), "read_at");
    check(mmapkit_mapping_read_at(zero, 0, z, sizeof z), "read_at");
    a[sizeof a - 1] = z[sizeof z - 1] = '\0';
    printf("PID %d:\t%s, %s\n", (int)getpid(), a, z);
    fflush(stdout);
}

int main(void) {
    mmapkit_mapping_t *anonymous, *zero;
    check(mmapkit_map_anonymous(4096, MMAPKIT_MAP_SHARED, &anonymous), "map anonymous");
    check(mmapkit_map_path("/dev/zero", MMAPKIT_MAP_SHARED | MMAPKIT_MAP_WRITE, 0, 4096, &zero),
          "map /dev/zero");
    put(anonymous, "anonymous string 1");
    put(zero, "zero-backed string 1");
    report(anonymous, zero);

    int to_parent[2], to_child[2];
    char token;
    if (pipe(to_parent) || pipe(to_child)) return 1;
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        report(anonymous, zero);
        if (write(to_parent[1], "r", 1) != 1 || read(to_child[0], &token, 1) != 1) _exit(1);
        report(anonymous, zero);
        _exit(0);
    }
    if (read(to_parent[0], &token, 1) != 1) return 1;
    put(anonymous, "anonymous string 2");
    put(zero, "zero-backed string 2");
    report(anonymous, zero);
    if (write(to_child[1], "w", 1) != 1) return 1;
    int status;
    waitpid(pid, &status, 0);
    check(mmapkit_mapping_unmap(anonymous), "unmap");
    check(mmapkit_mapping_unmap(zero), "unmap");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
