/* Two processes over a named channel: the child sends three messages and then hangs; the
 * parent receives them, kills the child with SIGKILL, and its next receive reports
 * MMAPKIT_EDISCONNECTED instead of waiting for ever. Usage: channel NAME */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
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

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    mmapkit_channel_t *channel;
    check(mmapkit_channel_create(argv[1], 4096, 0, &channel), "create");
    mmapkit_receiver_t *receiver;
    check(mmapkit_channel_receiver(channel, &receiver), "receiver");
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        mmapkit_channel_t *mine;
        mmapkit_sender_t *sender;
        check(mmapkit_channel_open(argv[1], &mine), "open");
        check(mmapkit_channel_sender(mine, &sender), "sender");
        const char *messages[] = {"one", "two", "three"};
        for (int i = 0; i < 3; i++) {
            char text[16];
            int len = snprintf(text, sizeof text, "%s", messages[i]);
            check(mmapkit_sender_send(sender, text, (size_t)len, MMAPKIT_FOREVER), "send");
        }
        pause();
        _exit(0);
    }
    for (int i = 0; i < 3; i++) {
        char buf[64];
        size_t len;
        check(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 10000), "recv");
        printf("received: %.*s\n", (int)len, buf);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    char buf[64];
    size_t len;
    int status = mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, MMAPKIT_FOREVER);
    printf("after kill -9 of the sender: %s\n", mmapkit_status_name(status));
    mmapkit_receiver_close(receiver);
    mmapkit_channel_close(channel);
    mmapkit_channel_unlink(argv[1]);
    return status == MMAPKIT_EDISCONNECTED ? 0 : 1;
}
