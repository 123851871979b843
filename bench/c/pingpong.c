/* 64-byte ping-pong between two processes over two mmapkit byte channels, through the C ABI
 * (copies in and out, as mmapkit_sender_send and mmapkit_receiver_recv make them). Prints
 * the one-way latency in nanoseconds. Usage: pingpong ITERATIONS */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmapkit.h"

static void check(int status, const char *what) {
    if (status != MMAPKIT_OK) {
        fprintf(stderr, "%s: %s\n", what, mmapkit_last_error_message());
        exit(1);
    }
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 20000;
    long warm_up = iterations / 10;
    char message[64] = {0}, buf[64];
    size_t len;
    mmapkit_channel_t *ping, *pong;
    check(mmapkit_channel_create_memfd(256, 0, &ping), "channel");
    check(mmapkit_channel_create_memfd(256, 0, &pong), "channel");
    mmapkit_sender_t *sender;
    mmapkit_receiver_t *receiver;
    check(mmapkit_channel_sender(ping, &sender), "sender");
    check(mmapkit_channel_receiver(pong, &receiver), "receiver");
    pin(0);
    pid_t child = fork();
    if (child == 0) {
        pin(1);
        mmapkit_receiver_t *in;
        mmapkit_sender_t *out;
        check(mmapkit_channel_receiver(ping, &in), "receiver");
        check(mmapkit_channel_sender(pong, &out), "sender");
        for (long i = 0; i < warm_up + iterations; i++) {
            check(mmapkit_receiver_recv(in, buf, sizeof buf, &len, -1), "recv");
            check(mmapkit_sender_send(out, buf, len, -1), "send");
        }
        _exit(0);
    }
    for (long i = 0; i < warm_up; i++) {
        check(mmapkit_sender_send(sender, message, sizeof message, -1), "send");
        check(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, -1), "recv");
    }
    double started = now_ns();
    for (long i = 0; i < iterations; i++) {
        check(mmapkit_sender_send(sender, message, sizeof message, -1), "send");
        check(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, -1), "recv");
    }
    double elapsed = now_ns() - started;
    waitpid(child, NULL, 0);
    printf("%.1f\n", elapsed / (2.0 * iterations));
    return 0;
}
