/* Handles over their lifetime, threads and fork: stale handles stay invalid, a close from
 * another thread ends a blocked receive, a late receiver that leaves disconnects its sender,
 * a child never hangs on what its parent's threads held, and errors name the C call and
 * the caller's offsets. tests/c_abi.rs builds it against libmmapkit.a twice: with
 * -fsanitize=address for everything but fork, and plain for `lifecycle fork` (GCC 12's
 * AddressSanitizer does not lock its allocator across fork, so a child of a process whose
 * other threads allocate can hang inside ASan's malloc, whatever the library does). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmapkit.h"

static int failures = 0;

#include "expect.h"

#define CHECK(condition, ...)                                                                 \
    do {                                                                                      \
        if (!(condition)) {                                                                   \
            printf("%s:%d %s: ", __FILE__, __LINE__, #condition);                             \
            printf(__VA_ARGS__);                                                              \
            printf("\n");                                                                     \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* A memfd channel of 4096 bytes with its sender and receiver, and closing them again. */
static void open_channel(mmapkit_channel_t **channel, mmapkit_sender_t **sender,
                         mmapkit_receiver_t **receiver) {
    EXPECT(mmapkit_channel_create_memfd(4096, 0, channel), MMAPKIT_OK);
    EXPECT(mmapkit_channel_sender(*channel, sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_receiver(*channel, receiver), MMAPKIT_OK);
}

static void close_channel(mmapkit_channel_t *channel, mmapkit_sender_t *sender,
                          mmapkit_receiver_t *receiver) {
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_close(receiver), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
}

/* A handle destroyed and a new object made: the old handle does not name the new one. */
static void stale_handles_stay_invalid(void) {
    size_t n;
    for (int i = 0; i < 100; i++) {
        mmapkit_mapping_t *old, *fresh;
        EXPECT(mmapkit_map_anonymous(4096, 0, &old), MMAPKIT_OK);
        EXPECT(mmapkit_mapping_unmap(old), MMAPKIT_OK);
        EXPECT(mmapkit_map_anonymous(8192, 0, &fresh), MMAPKIT_OK);
        CHECK(old != fresh, "a handle number was reused");
        EXPECT(mmapkit_mapping_len(old, &n), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_unmap(old), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_len(fresh, &n), MMAPKIT_OK);
        EXPECT(mmapkit_mapping_unmap(fresh), MMAPKIT_OK);
    }
    /* Small integers and stray pointers name no handle. */
    for (uintptr_t value = 1; value < 4096; value++) {
        if (mmapkit_mapping_len((mmapkit_mapping_t *)value, &n) != MMAPKIT_EINVAL) {
            printf("the integer %lu passed for a mapping handle\n", (unsigned long)value);
            failures++;
            break;
        }
    }
}

struct blocked {
    mmapkit_receiver_t *receiver;
    int status;
    double returned_at;
};

static void *receive_forever(void *argument) {
    struct blocked *blocked = argument;
    char buf[64];
    size_t len;
    blocked->status = mmapkit_receiver_recv(blocked->receiver, buf, sizeof buf, &len,
                                            MMAPKIT_FOREVER);
    blocked->returned_at = now();
    return NULL;
}

/* mmapkit_receiver_close from another thread ends a receive that waits without a timeout,
 * and the sender is disconnected when close returns. */
static void closing_ends_a_blocked_receive(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    struct blocked blocked = {0};
    open_channel(&channel, &sender, &blocked.receiver);
    pthread_t thread;
    pthread_create(&thread, NULL, receive_forever, &blocked);
    usleep(200 * 1000);
    double closed_at = now();
    EXPECT(mmapkit_receiver_close(blocked.receiver), MMAPKIT_OK);
    double close_took = now() - closed_at;
    EXPECT(mmapkit_sender_send(sender, "late", 4, 0), MMAPKIT_EDISCONNECTED);
    pthread_join(thread, NULL);
    EXPECT(blocked.status, MMAPKIT_EINVAL);
    CHECK(blocked.returned_at - closed_at < 1.0, "the receive ended %.3f s after close",
          blocked.returned_at - closed_at);
    CHECK(close_took < 1.0, "close took %.3f s", close_took);
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
}

/* A sender attached before its receiver learns that the receiver left. */
static void a_late_receiver_that_leaves_disconnects_the_sender(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    mmapkit_receiver_t *receiver;
    char buf[16];
    size_t len;
    EXPECT(mmapkit_channel_create_memfd(4096, 0, &channel), MMAPKIT_OK);
    EXPECT(mmapkit_channel_sender(channel, &sender), MMAPKIT_OK);
    EXPECT(mmapkit_sender_send(sender, "one", 3, 0), MMAPKIT_OK);
    EXPECT(mmapkit_channel_receiver(channel, &receiver), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 1000), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_close(receiver), MMAPKIT_OK);
    EXPECT(mmapkit_sender_send(sender, "two", 3, 0), MMAPKIT_EDISCONNECTED);
    EXPECT(mmapkit_sender_send(sender, "two", 3, MMAPKIT_FOREVER), MMAPKIT_EDISCONNECTED);
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
}

static atomic_int stop_churning;

static void *churn_handles(void *unused) {
    (void)unused;
    while (!atomic_load(&stop_churning)) {
        mmapkit_mapping_t *map;
        if (mmapkit_map_anonymous(4096, 0, &map) == MMAPKIT_OK) mmapkit_mapping_unmap(map);
    }
    return NULL;
}

/* Waits for `child`; a child still running after `seconds` is killed and counted as hung. */
static int wait_for(pid_t child, int seconds) {
    for (int waited = 0; waited < seconds * 100; waited++) {
        int status;
        if (waitpid(child, &status, WNOHANG) == child)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(10 * 1000);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return -1;
}

/* Forks while one thread waits in a receive (holding its end) and another creates and
 * destroys handles (taking the registry): the child's calls return, they never hang. */
static void fork_never_hangs_the_child(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    struct blocked blocked = {0};
    open_channel(&channel, &sender, &blocked.receiver);
    pthread_t waiting, churning;
    pthread_create(&waiting, NULL, receive_forever, &blocked);
    pthread_create(&churning, NULL, churn_handles, NULL);
    usleep(50 * 1000);
    for (int round = 0; round < 30; round++) {
        pid_t child = fork();
        if (child == 0) {
            char buf[16];
            size_t len;
            mmapkit_mapping_t *map;
            int inherited = mmapkit_receiver_recv(blocked.receiver, buf, sizeof buf, &len, 0);
            int sending = mmapkit_sender_send(sender, "x", 1, 0);
            int mapped = mmapkit_map_anonymous(4096, 0, &map);
            _exit(inherited == MMAPKIT_EINVAL && sending == MMAPKIT_EINVAL &&
                          mapped == MMAPKIT_OK
                      ? 0
                      : 1);
        }
        int code = wait_for(child, 10);
        CHECK(code == 0, "round %d: the child ended with %d (-1: it hung)", round, code);
        if (code != 0) break;
    }
    atomic_store(&stop_churning, 1);
    pthread_join(churning, NULL);
    /* The parent's own ends still work. */
    EXPECT(mmapkit_sender_send(sender, "after", 5, 1000), MMAPKIT_OK);
    pthread_join(waiting, NULL);
    EXPECT(blocked.status, MMAPKIT_OK);
    EXPECT(mmapkit_receiver_close(blocked.receiver), MMAPKIT_OK);
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
}

/* Lines of /proc/self/maps that map a memfd (a channel's segment is one). */
static int memfd_mappings(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int count = 0;
    while (maps && fgets(line, sizeof line, maps)) count += strstr(line, "/memfd:") != NULL;
    if (maps) fclose(maps);
    return count;
}

static atomic_int tried_inherited, may_end;

static void *try_inherited_then_wait(void *sender) {
    atomic_store(&tried_inherited, mmapkit_sender_send(sender, "x", 1, 0));
    while (!atomic_load(&may_end)) usleep(1000);
    return NULL;
}

struct ends {
    mmapkit_sender_t *sender;
    mmapkit_receiver_t *receiver;
};

static atomic_int used_by_another, parent_may_end;

static void *use_the_ends_and_stay(void *argument) {
    struct ends *ends = argument;
    char buf[16];
    size_t len;
    int sent = mmapkit_sender_send(ends->sender, "also", 4, 0);
    int received = mmapkit_receiver_recv(ends->receiver, buf, sizeof buf, &len, 0);
    atomic_store(&used_by_another, sent == MMAPKIT_OK && received == MMAPKIT_OK ? 1 : -1);
    while (!atomic_load(&parent_may_end)) usleep(1000);
    return NULL;
}

/* A child that closes the ends and channel it inherited gets rid of their mappings, though
 * the forking thread and another thread of the parent had kept them, and another of the
 * child's threads tried one. */
static void closing_inherited_ends_in_the_child_lets_them_go(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    mmapkit_receiver_t *receiver;
    char buf[16];
    size_t len;
    int without_the_channel = memfd_mappings();
    open_channel(&channel, &sender, &receiver);
    EXPECT(mmapkit_sender_send(sender, "kept", 4, 0), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0), MMAPKIT_OK);
    CHECK(memfd_mappings() > without_the_channel, "the channel maps no memfd");
    struct ends ends = {sender, receiver};
    pthread_t user;
    pthread_create(&user, NULL, use_the_ends_and_stay, &ends);
    while (atomic_load(&used_by_another) == 0) usleep(1000);
    CHECK(atomic_load(&used_by_another) == 1, "the other thread's calls failed");
    pid_t child = fork();
    if (child == 0) {
        pthread_t trying;
        pthread_create(&trying, NULL, try_inherited_then_wait, sender);
        while (atomic_load(&tried_inherited) == 0) usleep(1000);
        int closed = mmapkit_sender_close(sender) | mmapkit_receiver_close(receiver) |
                     mmapkit_channel_close(channel);
        int left = memfd_mappings();
        atomic_store(&may_end, 1);
        pthread_join(trying, NULL);
        if (atomic_load(&tried_inherited) != MMAPKIT_EINVAL || closed != MMAPKIT_OK) _exit(1);
        _exit(left == without_the_channel ? 0 : 2);
    }
    int code = wait_for(child, 10);
    CHECK(code == 0, "the child ended with %d (2: the channel stayed mapped)", code);
    atomic_store(&parent_may_end, 1);
    pthread_join(user, NULL);
    EXPECT(mmapkit_sender_send(sender, "mine", 4, 0), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0), MMAPKIT_OK);
    close_channel(channel, sender, receiver);
}

/* Forks from an atexit handler, after this thread's own storage is gone, while two threads
 * keep taking the registry (a garbage handle is looked up there every time): no child inherits the registry locked (it would hang in
 * its first call). A hung child makes the process exit with 4. */
static void *look_up_garbage(void *unused) {
    (void)unused;
    size_t len;
    for (;;) mmapkit_mapping_len((mmapkit_mapping_t *)(uintptr_t)4096, &len);
    return NULL;
}

static void fork_at_exit_amid_calls(void) {
    for (int round = 0; round < 300; round++) {
        pid_t child = fork();
        if (child == 0) {
            mmapkit_mapping_t *map;
            _exit(mmapkit_map_anonymous(4096, 0, &map) == MMAPKIT_OK ? 0 : 1);
        }
        if (wait_for(child, 10) != 0) _exit(4);
    }
}

static void forking_at_exit_never_hangs_the_child(void) {
    for (int i = 0; i < 2; i++) {
        pthread_t looking;
        pthread_create(&looking, NULL, look_up_garbage, NULL);
        pthread_detach(looking);
    }
    atexit(fork_at_exit_amid_calls);
}

/* _Fork skips the pthread_atfork handlers: the child is told apart all the same, and its
 * calls on inherited ends are refused instead of moving the parent's ring. */
static void a_child_made_by__Fork_is_refused_inherited_ends(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    mmapkit_receiver_t *receiver;
    char buf[16];
    size_t len;
    open_channel(&channel, &sender, &receiver);
    EXPECT(mmapkit_sender_send(sender, "one", 3, 0), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0), MMAPKIT_OK);
    pid_t child = _Fork();
    if (child == 0) {
        int sending = mmapkit_sender_send(sender, "child", 5, 0);
        int receiving = mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0);
        int closing = mmapkit_sender_close(sender);
        _exit(sending == MMAPKIT_EINVAL && receiving == MMAPKIT_EINVAL && closing == MMAPKIT_OK
                  ? 0
                  : 1);
    }
    int code = wait_for(child, 10);
    CHECK(code == 0, "the _Fork child ended with %d", code);
    for (int i = 0; i < 3; i++) {
        EXPECT(mmapkit_sender_send(sender, "two", 3, 0), MMAPKIT_OK);
        EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0), MMAPKIT_OK);
        CHECK(len == 3 && memcmp(buf, "two", 3) == 0, "the parent received %zu bytes", len);
    }
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0), MMAPKIT_EWOULDBLOCK);
    close_channel(channel, sender, receiver);
}

/* Errors name the C function, and offsets are the caller's. */
static void errors_speak_c(void) {
    mmapkit_segment_t *seg;
    mmapkit_mutex_t *mutex;
    char buf[8];
    EXPECT(mmapkit_segment_create_memfd("test/lifecycle", 4096, "lifecycle", &seg), MMAPKIT_OK);
    size_t payload;
    EXPECT(mmapkit_segment_len(seg, &payload), MMAPKIT_OK);
    EXPECT(mmapkit_segment_read_at(seg, payload - 2, buf, 8), MMAPKIT_EOUTOFBOUNDS);
    const char *message = mmapkit_last_error_message();
    char expected[64];
    snprintf(expected, sizeof expected, "offset %zu", payload - 2);
    CHECK(strncmp(message, "mmapkit_segment_read_at", 23) == 0, "%s", message);
    CHECK(strstr(message, expected) != NULL, "%s", message);
    EXPECT(mmapkit_mutex_init(seg, 0, &mutex), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_mark_consistent(mutex), MMAPKIT_EINVAL);
    message = mmapkit_last_error_message();
    CHECK(strncmp(message, "mmapkit_mutex_mark_consistent", 29) == 0, "%s", message);
    EXPECT(mmapkit_mutex_close(mutex), MMAPKIT_OK);
    EXPECT(mmapkit_segment_close(seg), MMAPKIT_OK);

    mmapkit_channel_t *channel;
    mmapkit_receiver_t *receiver;
    size_t len;
    EXPECT(mmapkit_channel_create_memfd(0, 0, &channel), MMAPKIT_EINVAL);
    EXPECT(mmapkit_segment_create("mmapkit-c-bad-mode", "t", 64, 0x10000, &seg), MMAPKIT_EINVAL);
    EXPECT(mmapkit_channel_create_memfd(4096, 0, &channel), MMAPKIT_OK);
    EXPECT(mmapkit_channel_receiver(channel, &receiver), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0), MMAPKIT_EWOULDBLOCK);
    message = mmapkit_last_error_message();
    CHECK(strncmp(message, "mmapkit_receiver_recv", 21) == 0, "%s", message);
    EXPECT(mmapkit_receiver_close(receiver), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);

    /* Nothing to receive on a non-blocking socket: would block, not out of memory. */
    int pair[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair);
    EXPECT(mmapkit_segment_receive(pair[0], "t", &seg), MMAPKIT_EWOULDBLOCK);
    EXPECT(mmapkit_channel_receive_from(pair[0], &channel), MMAPKIT_EWOULDBLOCK);
    message = mmapkit_last_error_message();
    CHECK(strncmp(message, "mmapkit_channel_receive_from", 28) == 0, "%s", message);
    close(pair[0]);
    close(pair[1]);
    /* A call that succeeds clears the last error. */
    mmapkit_mapping_t *map;
    EXPECT(mmapkit_map_path("/nonexistent/mmapkit", 0, 0, 0, &map), MMAPKIT_ENOTFOUND);
    CHECK(mmapkit_last_error_errno() == ENOENT, "errno %d", mmapkit_last_error_errno());
    EXPECT(mmapkit_map_anonymous(4096, 0, &map), MMAPKIT_OK);
    CHECK(mmapkit_last_error_message()[0] == '\0' && mmapkit_last_error_errno() == 0,
          "after a success: \"%s\", errno %d", mmapkit_last_error_message(),
          mmapkit_last_error_errno());
    EXPECT(mmapkit_mapping_unmap(map), MMAPKIT_OK);
}

/* Cuts the file at `path` to `size` bytes, as another process would. */
static void truncate_file(const char *path, off_t size) {
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0 && ftruncate(fd, size) == 0, "truncating %s", path);
    if (fd >= 0) close(fd);
}

/* A named segment truncated by someone else: every call says truncated, not corrupt. */
static void truncation_is_reported_as_truncation(void) {
    char name[64], path[80];
    snprintf(name, sizeof name, "mmapkit-c-lifecycle-%d", (int)getpid());
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    mmapkit_segment_t *seg;
    mmapkit_mutex_t *mutex;
    EXPECT(mmapkit_segment_create(name, "lifecycle", 4096, 0, &seg), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_init(seg, 0, &mutex), MMAPKIT_OK);
    mmapkit_channel_t *channel;
    char channel_name[64], channel_path[80];
    snprintf(channel_name, sizeof channel_name, "mmapkit-c-lifecycle-ch-%d", (int)getpid());
    snprintf(channel_path, sizeof channel_path, "/dev/shm/%s", channel_name);
    EXPECT(mmapkit_channel_create(channel_name, 4096, 0, &channel), MMAPKIT_OK);

    truncate_file(path, 0);
    truncate_file(channel_path, 0);

    char buf[8];
    EXPECT(mmapkit_segment_read_at(seg, 1000, buf, 8), MMAPKIT_ETRUNCATED);
    const char *message = mmapkit_last_error_message();
    CHECK(strstr(message, "offset 1000") != NULL, "%s", message);
    EXPECT(mmapkit_mutex_lock(mutex, 0), MMAPKIT_ETRUNCATED);
    mmapkit_mutex_t *again;
    EXPECT(mmapkit_mutex_open(seg, 0, &again), MMAPKIT_ETRUNCATED);
    size_t max;
    EXPECT(mmapkit_channel_max_message(channel, &max), MMAPKIT_ETRUNCATED);
    mmapkit_sender_t *sender;
    EXPECT(mmapkit_channel_sender(channel, &sender), MMAPKIT_ETRUNCATED);
    mmapkit_semaphore_t *semaphore;
    EXPECT(mmapkit_semaphore_init(seg, 64, 0, &semaphore), MMAPKIT_ETRUNCATED);
    mmapkit_event_t *event;
    EXPECT(mmapkit_event_init(seg, 128, 0, &event), MMAPKIT_ETRUNCATED);
    /* Cut short with the header left: opening it again says truncated, too. */
    mmapkit_segment_t *large, *reopened;
    char large_name[64], large_path[80];
    snprintf(large_name, sizeof large_name, "mmapkit-c-lifecycle-large-%d", (int)getpid());
    snprintf(large_path, sizeof large_path, "/dev/shm/%s", large_name);
    EXPECT(mmapkit_segment_create(large_name, "lifecycle", 1 << 16, 0, &large), MMAPKIT_OK);
    truncate_file(large_path, 8192);
    EXPECT(mmapkit_segment_open(large_name, "lifecycle", 0, 0, &reopened), MMAPKIT_ETRUNCATED);
    EXPECT(mmapkit_segment_close(large), MMAPKIT_OK);
    EXPECT(mmapkit_segment_unlink(large_name), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_close(mutex), MMAPKIT_OK);
    EXPECT(mmapkit_segment_close(seg), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
    EXPECT(mmapkit_segment_unlink(name), MMAPKIT_OK);
    EXPECT(mmapkit_channel_unlink(channel_name), MMAPKIT_OK);
}

struct copying {
    mmapkit_mapping_t *map;
    atomic_int stop;
};

static void *copy_in_a_loop(void *argument) {
    struct copying *copying = argument;
    static char target[1 << 20];
    while (!atomic_load(&copying->stop)) mmapkit_mapping_read_at(copying->map, 0, target, sizeof target);
    return NULL;
}

/* A fork while another thread copies out of a mapping: the child's calls on that mapping
 * (protect takes it alone) return. */
static void fork_during_a_mapping_copy(void) {
    struct copying copying = {0};
    EXPECT(mmapkit_map_anonymous(64 << 20, MMAPKIT_MAP_SHARED, &copying.map), MMAPKIT_OK);
    pthread_t thread;
    pthread_create(&thread, NULL, copy_in_a_loop, &copying);
    usleep(20 * 1000);
    for (int round = 0; round < 10; round++) {
        pid_t child = fork();
        if (child == 0) {
            size_t len;
            int protected = mmapkit_mapping_protect(copying.map, 0, 4096, MMAPKIT_PROT_READ);
            int measured = mmapkit_mapping_len(copying.map, &len);
            _exit(protected == MMAPKIT_OK && measured == MMAPKIT_OK ? 0 : 1);
        }
        int code = wait_for(child, 10);
        CHECK(code == 0, "round %d: the child ended with %d (-1: it hung)", round, code);
        if (code != 0) break;
    }
    atomic_store(&copying.stop, 1);
    pthread_join(thread, NULL);
    EXPECT(mmapkit_mapping_unmap(copying.map), MMAPKIT_OK);
}

/* Threads sharing an end: a call's timeout covers its wait for the end. */
static void timeouts_hold_on_a_shared_end(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    EXPECT(mmapkit_channel_create_memfd(4096, 0, &channel), MMAPKIT_OK);
    EXPECT(mmapkit_channel_sender(channel, &sender), MMAPKIT_OK);
    struct blocked waiters[3] = {{0}};
    pthread_t threads[3];
    mmapkit_receiver_t *receiver;
    EXPECT(mmapkit_channel_receiver(channel, &receiver), MMAPKIT_OK);
    for (int i = 0; i < 3; i++) {
        waiters[i].receiver = receiver;
        pthread_create(&threads[i], NULL, receive_forever, &waiters[i]);
    }
    usleep(50 * 1000);
    char buf[16];
    size_t len;
    double worst = 0;
    for (int round = 0; round < 10; round++) {
        double started = now();
        EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 20), MMAPKIT_ETIMEDOUT);
        double took = now() - started;
        if (took > worst) worst = took;
        started = now();
        EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 0), MMAPKIT_EWOULDBLOCK);
        took = now() - started;
        CHECK(took < 0.005, "a timeout of 0 took %.1f ms", took * 1000);
    }
    CHECK(worst < 0.2, "a 20 ms timeout took %.0f ms", worst * 1000);
    EXPECT(mmapkit_receiver_close(receiver), MMAPKIT_OK);
    for (int i = 0; i < 3; i++) {
        pthread_join(threads[i], NULL);
        EXPECT(waiters[i].status, MMAPKIT_EINVAL);
    }
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
}

struct closing {
    mmapkit_receiver_t *receiver;
    int status;
};

static void *close_it(void *argument) {
    struct closing *closing = argument;
    closing->status = mmapkit_receiver_close(closing->receiver);
    return NULL;
}

/* Two threads closing one end: one succeeds, the other is told the handle is gone, and once
 * the first returns the end is detached. */
static void racing_closes_succeed_once(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    EXPECT(mmapkit_channel_create_memfd(4096, 0, &channel), MMAPKIT_OK);
    EXPECT(mmapkit_channel_sender(channel, &sender), MMAPKIT_OK);
    for (int round = 0; round < 200; round++) {
        mmapkit_receiver_t *receiver;
        EXPECT(mmapkit_channel_receiver(channel, &receiver), MMAPKIT_OK);
        struct closing first = {receiver, 99}, second = {receiver, 99};
        pthread_t a, b;
        pthread_create(&a, NULL, close_it, &first);
        pthread_create(&b, NULL, close_it, &second);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        int succeeded = (first.status == MMAPKIT_OK) + (second.status == MMAPKIT_OK);
        int refused = (first.status == MMAPKIT_EINVAL) + (second.status == MMAPKIT_EINVAL);
        CHECK(succeeded == 1 && refused == 1, "round %d: %s and %s", round,
              mmapkit_status_name(first.status), mmapkit_status_name(second.status));
        if (succeeded != 1) break;
    }
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
}

static void *lock_and_end(void *argument) {
    mmapkit_mutex_lock(argument, MMAPKIT_FOREVER);
    return NULL;
}

/* A lock whose holding thread ended: MMAPKIT_EOWNERDIED, said by mmapkit_mutex_lock. */
static void an_owner_that_died_is_reported_by_the_call(void) {
    mmapkit_segment_t *seg;
    mmapkit_mutex_t *mutex;
    EXPECT(mmapkit_segment_create_memfd("test/lifecycle", 4096, "lifecycle", &seg), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_init(seg, 0, &mutex), MMAPKIT_OK);
    pthread_t thread;
    pthread_create(&thread, NULL, lock_and_end, mutex);
    pthread_join(thread, NULL);
    EXPECT(mmapkit_mutex_lock(mutex, 1000), MMAPKIT_EOWNERDIED);
    const char *message = mmapkit_last_error_message();
    CHECK(strncmp(message, "mmapkit_mutex_lock:", 19) == 0, "%s", message);
    EXPECT(mmapkit_mutex_mark_consistent(mutex), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_unlock(mutex), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_lock(mutex, 0), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_unlock(mutex), MMAPKIT_OK);
    EXPECT(mmapkit_mutex_close(mutex), MMAPKIT_OK);
    EXPECT(mmapkit_segment_close(seg), MMAPKIT_OK);
    EXPECT(mmapkit_segment_create_memfd("test/lifecycle", 0, "empty", &seg), MMAPKIT_EINVAL);
}

/* Populating pages a truncation removed: MMAPKIT_ETRUNCATED, as a read of them is. */
static void populating_a_truncated_file(void) {
    char path[] = "/tmp/mmapkit-lifecycle-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && ftruncate(fd, 1 << 16) == 0, "creating %s", path);
    mmapkit_mapping_t *map;
    EXPECT(mmapkit_map_path(path, 0, 0, 0, &map), MMAPKIT_OK);
    CHECK(ftruncate(fd, 4096) == 0, "truncating %s", path);
    EXPECT(mmapkit_mapping_advise(map, 8192, 8192, MMAPKIT_ADVICE_POPULATE_READ),
           MMAPKIT_ETRUNCATED);
    EXPECT(mmapkit_mapping_unmap(map), MMAPKIT_OK);
    close(fd);
    unlink(path);
}

/* A thread keeps the ends it used between its calls: an end another thread closed meanwhile
 * is refused, an end a thread used before it exited works on, and more ends than a thread
 * keeps still work in turns. (That an exiting thread releases what it kept is checked by the
 * crate's unit tests, which count the references.) */
static void *send_three(void *sender) {
    for (int i = 0; i < 3; i++) {
        if (mmapkit_sender_send(sender, "kept", 4, 0) != MMAPKIT_OK) return "send failed";
    }
    return NULL;
}

static void *close_sender(void *sender) { return (void *)(intptr_t)mmapkit_sender_close(sender); }

static void ends_kept_between_calls(void) {
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    mmapkit_receiver_t *receiver;
    char buf[16];
    size_t len;
    open_channel(&channel, &sender, &receiver);
    EXPECT(mmapkit_sender_send(sender, "mine", 4, 0), MMAPKIT_OK);
    pthread_t thread;
    void *closed;
    pthread_create(&thread, NULL, close_sender, sender);
    pthread_join(thread, &closed);
    EXPECT((int)(intptr_t)closed, MMAPKIT_OK);
    EXPECT(mmapkit_sender_send(sender, "late", 4, 0), MMAPKIT_EINVAL);
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_EINVAL);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 1000), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 1000), MMAPKIT_EDISCONNECTED);
    EXPECT(mmapkit_receiver_close(receiver), MMAPKIT_OK);

    EXPECT(mmapkit_channel_sender(channel, &sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_receiver(channel, &receiver), MMAPKIT_OK);
    void *failed;
    pthread_create(&thread, NULL, send_three, sender);
    pthread_join(thread, &failed);
    CHECK(failed == NULL, "%s: %s", (char *)failed, mmapkit_last_error_message());
    for (int i = 0; i < 3; i++) {
        EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &len, 1000), MMAPKIT_OK);
    }
    close_channel(channel, sender, receiver);

    enum { ENDS = 9 };
    mmapkit_channel_t *channels[ENDS];
    mmapkit_sender_t *senders[ENDS];
    mmapkit_receiver_t *receivers[ENDS];
    for (int i = 0; i < ENDS; i++) {
        EXPECT(mmapkit_channel_create_memfd(4096, 0, &channels[i]), MMAPKIT_OK);
        EXPECT(mmapkit_channel_sender(channels[i], &senders[i]), MMAPKIT_OK);
        EXPECT(mmapkit_channel_receiver(channels[i], &receivers[i]), MMAPKIT_OK);
    }
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < ENDS; i++) {
            char byte = (char)('a' + i);
            EXPECT(mmapkit_sender_send(senders[i], &byte, 1, 0), MMAPKIT_OK);
        }
        for (int i = 0; i < ENDS; i++) {
            EXPECT(mmapkit_receiver_recv(receivers[i], buf, sizeof buf, &len, 0), MMAPKIT_OK);
            CHECK(len == 1 && buf[0] == 'a' + i, "channel %d gave %zu bytes '%c'", i, len, buf[0]);
        }
    }
    for (int i = 0; i < ENDS; i++) {
        EXPECT(mmapkit_sender_close(senders[i]), MMAPKIT_OK);
        EXPECT(mmapkit_receiver_recv(receivers[i], buf, sizeof buf, &len, 0), MMAPKIT_EDISCONNECTED);
        EXPECT(mmapkit_receiver_close(receivers[i]), MMAPKIT_OK);
        EXPECT(mmapkit_channel_close(channels[i]), MMAPKIT_OK);
    }
}

/* pthread_cancel of threads inside calls: the process never aborts (a cancellation acted on
 * inside the library would unwind through Rust frames), and the threads are cancelled at
 * their own next cancellation point. */
static mmapkit_receiver_t *contended;

static void *hold_the_receiver(void *unused) {
    (void)unused;
    char buf[16];
    size_t len;
    return (void *)(intptr_t)mmapkit_receiver_recv(contended, buf, sizeof buf, &len,
                                                   MMAPKIT_FOREVER);
}

static void *poll_for_the_receiver(void *unused) {
    (void)unused;
    char buf[16];
    size_t len;
    for (;;) {
        mmapkit_receiver_recv(contended, buf, sizeof buf, &len, 5);
        pthread_testcancel();
    }
    return NULL;
}

static void *map_files(void *path) {
    for (;;) {
        mmapkit_mapping_t *map;
        if (mmapkit_map_path(path, 0, 0, 0, &map) == MMAPKIT_OK) mmapkit_mapping_unmap(map);
        pthread_testcancel();
    }
    return NULL;
}

static void cancelling_threads_in_calls_never_aborts(void) {
    char path[] = "/tmp/mmapkit-cancel-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && ftruncate(fd, 4096) == 0, "creating %s", path);
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    open_channel(&channel, &sender, &contended);
    pthread_t holder, poller, mapper;
    pthread_create(&holder, NULL, hold_the_receiver, NULL);
    usleep(20 * 1000);
    pthread_create(&poller, NULL, poll_for_the_receiver, NULL);
    pthread_create(&mapper, NULL, map_files, path);
    for (int round = 0; round < 20; round++) usleep(5 * 1000);
    pthread_cancel(poller);
    pthread_cancel(mapper);
    void *poller_ended, *mapper_ended, *holder_ended;
    pthread_join(poller, &poller_ended);
    pthread_join(mapper, &mapper_ended);
    CHECK(poller_ended == PTHREAD_CANCELED && mapper_ended == PTHREAD_CANCELED,
          "the threads were not cancelled");
    /* A receive waiting without a timeout is no cancellation point: closing the end ends it. */
    pthread_cancel(holder);
    usleep(50 * 1000);
    EXPECT(mmapkit_receiver_close(contended), MMAPKIT_OK);
    pthread_join(holder, &holder_ended);
    CHECK(holder_ended == PTHREAD_CANCELED || (intptr_t)holder_ended == MMAPKIT_EINVAL,
          "the holder ended with %p", holder_ended);
    EXPECT(mmapkit_sender_close(sender), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
    close(fd);
    unlink(path);
}

/* Handles closed while the thread's own storage is being torn down: from a thread-local
 * destructor, and from an atexit handler that forks too. A status, never an abort. */
static mmapkit_mapping_t *closed_at_exit;
static pthread_key_t cleanup_key;
static int closed_in_destructor = 99;

static void close_at_exit(void) {
    if (mmapkit_mapping_unmap(closed_at_exit) != MMAPKIT_OK) _exit(3);
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, NULL, 0);
}

static void unmap_in_destructor(void *map) { closed_in_destructor = mmapkit_mapping_unmap(map); }

static void *map_with_cleanup(void *unused) {
    (void)unused;
    mmapkit_mapping_t *map;
    size_t len;
    if (mmapkit_map_anonymous(4096, 0, &map) != MMAPKIT_OK) return NULL;
    mmapkit_mapping_len(map, &len);
    pthread_setspecific(cleanup_key, map);
    return NULL;
}

/* A sender the thread used (and keeps), used and closed again from its key destructor. */
static pthread_key_t sender_key;
static int sent_in_destructor = 99, sender_closed_in_destructor = 99;

static void send_and_close_in_destructor(void *sender) {
    sent_in_destructor = mmapkit_sender_send(sender, "last", 4, 0);
    sender_closed_in_destructor = mmapkit_sender_close(sender);
}

static void *send_with_cleanup(void *sender) {
    if (mmapkit_sender_send(sender, "first", 5, 0) != MMAPKIT_OK) return NULL;
    pthread_setspecific(sender_key, sender);
    return NULL;
}

static void closing_while_the_thread_ends(void) {
    pthread_key_create(&cleanup_key, unmap_in_destructor);
    pthread_t thread;
    pthread_create(&thread, NULL, map_with_cleanup, NULL);
    pthread_join(thread, NULL);
    EXPECT(closed_in_destructor, MMAPKIT_OK);
    mmapkit_channel_t *channel;
    mmapkit_sender_t *sender;
    mmapkit_receiver_t *receiver;
    char buf[16];
    size_t got;
    open_channel(&channel, &sender, &receiver);
    pthread_key_create(&sender_key, send_and_close_in_destructor);
    pthread_create(&thread, NULL, send_with_cleanup, sender);
    pthread_join(thread, NULL);
    EXPECT(sent_in_destructor, MMAPKIT_OK);
    EXPECT(sender_closed_in_destructor, MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &got, 0), MMAPKIT_OK);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &got, 0), MMAPKIT_OK);
    CHECK(got == 4 && memcmp(buf, "last", 4) == 0, "the destructor's message: %zu bytes", got);
    EXPECT(mmapkit_receiver_recv(receiver, buf, sizeof buf, &got, 0), MMAPKIT_EDISCONNECTED);
    EXPECT(mmapkit_receiver_close(receiver), MMAPKIT_OK);
    EXPECT(mmapkit_channel_close(channel), MMAPKIT_OK);
    size_t len;
    EXPECT(mmapkit_map_anonymous(4096, 0, &closed_at_exit), MMAPKIT_OK);
    EXPECT(mmapkit_mapping_len(closed_at_exit, &len), MMAPKIT_OK);
    atexit(close_at_exit);
}

/* `lifecycle first-call-cancelled`: the process's very first call, a send on a garbage
 * handle, made with a cancellation pending (the registry is made then, which reads random
 * bytes, a cancellation point): the call returns, and the thread is cancelled after it. */
static void *send_with_a_cancellation_pending(void *unused) {
    (void)unused;
    pthread_cancel(pthread_self());
    int status = mmapkit_sender_send((mmapkit_sender_t *)(uintptr_t)0x12340, "x", 1, 0);
    CHECK(status == MMAPKIT_EINVAL, "%s", mmapkit_status_name(status));
    pthread_testcancel();
    return NULL;
}

static void the_first_call_with_a_cancellation_pending(void) {
    pthread_t thread;
    void *ended;
    pthread_create(&thread, NULL, send_with_a_cancellation_pending, NULL);
    pthread_join(thread, &ended);
    CHECK(ended == PTHREAD_CANCELED, "the thread was not cancelled");
}

/* `lifecycle others-atfork`: fork handlers of the program, registered by a constructor that
 * runs before libmmapkit.a's own (linked after it), call into the library: in the prepare
 * handler (which fork runs after the library's), in the parent's and in the child's (which it
 * runs before the library's). No fork hangs. */
static mmapkit_mapping_t *handler_map;
static mmapkit_sender_t *handler_sender;
static int prepare_status = 99, parent_status = 99;

static void others_prepare(void) {
    size_t len;
    prepare_status = mmapkit_mapping_len(handler_map, &len);
}

static void others_parent(void) {
    size_t len;
    parent_status = mmapkit_mapping_len(handler_map, &len);
}

static void others_child(void) {
    if (mmapkit_sender_close(handler_sender) != MMAPKIT_OK) _exit(3);
}

__attribute__((constructor)) static void register_others_atfork(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "others-atfork") == 0)
        pthread_atfork(others_prepare, others_parent, others_child);
}

static void other_libraries_fork_handlers_may_call_in(void) {
    alarm(20); /* a prepare handler that hangs hangs the parent: end it, failed */
    mmapkit_channel_t *channel;
    EXPECT(mmapkit_map_anonymous(4096, 0, &handler_map), MMAPKIT_OK);
    EXPECT(mmapkit_channel_create_memfd(4096, 0, &channel), MMAPKIT_OK);
    EXPECT(mmapkit_channel_sender(channel, &handler_sender), MMAPKIT_OK);
    pid_t child = fork();
    if (child == 0) _exit(0);
    int code = wait_for(child, 10);
    CHECK(code == 0, "the child ended with %d (-1: it hung)", code);
    EXPECT(prepare_status, MMAPKIT_OK);
    EXPECT(parent_status, MMAPKIT_OK);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "others-atfork") == 0) {
        other_libraries_fork_handlers_may_call_in();
    } else if (argc > 1 && strcmp(argv[1], "first-call-cancelled") == 0) {
        the_first_call_with_a_cancellation_pending();
    } else if (argc > 1 && strcmp(argv[1], "fork") == 0) {
        fork_never_hangs_the_child();
        fork_during_a_mapping_copy();
        a_child_made_by__Fork_is_refused_inherited_ends();
        closing_inherited_ends_in_the_child_lets_them_go();
        forking_at_exit_never_hangs_the_child();
    } else {
        stale_handles_stay_invalid();
        closing_ends_a_blocked_receive();
        a_late_receiver_that_leaves_disconnects_the_sender();
        errors_speak_c();
        truncation_is_reported_as_truncation();
        populating_a_truncated_file();
        timeouts_hold_on_a_shared_end();
        racing_closes_succeed_once();
        ends_kept_between_calls();
        cancelling_threads_in_calls_never_aborts();
        an_owner_that_died_is_reported_by_the_call();
        closing_while_the_thread_ends();
    }
    printf("%d failures\n", failures);
    return failures != 0;
}
