/* Every function given NULL, garbage or wrong-type handles and absurd lengths: an error code,
 * never a crash. Built with -fsanitize=address against libmmapkit.a by tests/c_abi.rs. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mmapkit.h"

static int failures = 0;

#include "expect.h"

int main(void) {
    char buf[64];
    size_t n;
    int flag;
    uint32_t value;
    void *data;
    mmapkit_file_residency_t residency;
    static uint64_t junk[16] = {0xdeadbeef, 1, 2, 3};
    void *garbage[] = {NULL, (void *)junk, (void *)0x1, (void *)(uintptr_t)-8};

    mmapkit_mapping_t *map;
    EXPECT(mmapkit_map_anonymous(4096, MMAPKIT_MAP_SHARED, &map), MMAPKIT_OK);
    mmapkit_segment_t *seg;
    EXPECT(mmapkit_segment_create_memfd("test/garbage", 4096, "garbage", &seg), MMAPKIT_OK);

    for (size_t i = 0; i < sizeof garbage / sizeof *garbage; i++) {
        void *g = garbage[i];
        EXPECT(mmapkit_mapping_len(g, &n), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_data(g, &data), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_read_at(g, 0, buf, 8), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_write_at(g, 0, buf, 8), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_flush(g, 0, MMAPKIT_TO_END, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_advise(g, 0, 8, MMAPKIT_ADVICE_NORMAL), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_protect(g, 0, 8, MMAPKIT_PROT_READ), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_lock(g, 0, 8), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_unlock(g, 0, 8), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mapping_residency(g, 0, 8, &n, &n, NULL, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_segment_len(g, &n), MMAPKIT_EINVAL);
        EXPECT(mmapkit_segment_fd(g, &flag), MMAPKIT_EINVAL);
        EXPECT(mmapkit_segment_read_at(g, 0, buf, 8), MMAPKIT_EINVAL);
        EXPECT(mmapkit_segment_write_at(g, 0, buf, 8), MMAPKIT_EINVAL);
        EXPECT(mmapkit_segment_send(g, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mutex_lock(g, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mutex_unlock(g), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mutex_mark_consistent(g), MMAPKIT_EINVAL);
        EXPECT(mmapkit_semaphore_post(g), MMAPKIT_EINVAL);
        EXPECT(mmapkit_semaphore_wait(g, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_semaphore_value(g, &value), MMAPKIT_EINVAL);
        EXPECT(mmapkit_event_set(g), MMAPKIT_EINVAL);
        EXPECT(mmapkit_event_reset(g), MMAPKIT_EINVAL);
        EXPECT(mmapkit_event_is_set(g, &flag), MMAPKIT_EINVAL);
        EXPECT(mmapkit_event_wait(g, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_channel_max_message(g, &n), MMAPKIT_EINVAL);
        EXPECT(mmapkit_channel_doorbell_fd(g, &flag), MMAPKIT_EINVAL);
        EXPECT(mmapkit_channel_send_over(g, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_sender_send(g, buf, 8, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_receiver_recv(g, buf, sizeof buf, &n, 0), MMAPKIT_EINVAL);
        EXPECT(mmapkit_receiver_arm(g, &flag), MMAPKIT_EINVAL);
        mmapkit_mutex_t *mutex;
        EXPECT(mmapkit_mutex_init(g, 0, &mutex), MMAPKIT_EINVAL);
        EXPECT(mmapkit_mutex_open(g, 0, &mutex), MMAPKIT_EINVAL);
        mmapkit_sender_t *sender;
        EXPECT(mmapkit_channel_sender(g, &sender), MMAPKIT_EINVAL);
        if (g != NULL) {
            EXPECT(mmapkit_mapping_unmap(g), MMAPKIT_EINVAL);
            EXPECT(mmapkit_segment_close(g), MMAPKIT_EINVAL);
            EXPECT(mmapkit_mutex_close(g), MMAPKIT_EINVAL);
            EXPECT(mmapkit_channel_close(g), MMAPKIT_EINVAL);
            EXPECT(mmapkit_sender_close(g), MMAPKIT_EINVAL);
            EXPECT(mmapkit_receiver_close(g), MMAPKIT_EINVAL);
        }
    }
    /* A handle of another type. */
    EXPECT(mmapkit_segment_len((mmapkit_segment_t *)map, &n), MMAPKIT_EINVAL);
    EXPECT(mmapkit_mapping_len((mmapkit_mapping_t *)seg, &n), MMAPKIT_EINVAL);
    EXPECT(mmapkit_mapping_unmap((mmapkit_mapping_t *)seg), MMAPKIT_EINVAL);
    /* Absurd lengths and offsets, with a small real buffer: refused before it is touched. */
    EXPECT(mmapkit_mapping_read_at(map, 0, buf, SIZE_MAX), MMAPKIT_EOUTOFBOUNDS);
    EXPECT(mmapkit_mapping_read_at(map, SIZE_MAX, buf, 2), MMAPKIT_EOUTOFBOUNDS);
    EXPECT(mmapkit_mapping_write_at(map, 4000, buf, 200), MMAPKIT_EOUTOFBOUNDS);
    EXPECT(mmapkit_mapping_flush(map, 1, SIZE_MAX - 1, 0), MMAPKIT_EOUTOFBOUNDS);
    EXPECT(mmapkit_mapping_flush(map, 0, MMAPKIT_TO_END, 0x80), MMAPKIT_EINVAL);
    EXPECT(mmapkit_mapping_advise(map, 0, 8, 999), MMAPKIT_EINVAL);
    EXPECT(mmapkit_mapping_protect(map, 0, 8, MMAPKIT_PROT_WRITE | MMAPKIT_PROT_EXEC), MMAPKIT_EINVAL);
    EXPECT(mmapkit_mapping_residency(map, 0, MMAPKIT_TO_END, &n, &n, (uint8_t *)buf, 0), MMAPKIT_EOUTOFBOUNDS);
    EXPECT(mmapkit_segment_read_at(seg, SIZE_MAX / 2, buf, SIZE_MAX / 2 + 10), MMAPKIT_EOUTOFBOUNDS);
    EXPECT(mmapkit_segment_write_at(seg, 0, buf, SIZE_MAX), MMAPKIT_EOUTOFBOUNDS);
    /* NULL pointers where a value goes. */
    EXPECT(mmapkit_mapping_len(map, NULL), MMAPKIT_EINVAL);
    EXPECT(mmapkit_mapping_read_at(map, 0, NULL, 8), MMAPKIT_EINVAL);
    EXPECT(mmapkit_map_anonymous(4096, 0, NULL), MMAPKIT_EINVAL);
    EXPECT(mmapkit_map_path(NULL, 0, 0, 0, &map), MMAPKIT_EINVAL);
    EXPECT(mmapkit_map_anonymous(SIZE_MAX, 0, &map), MMAPKIT_EINVAL);
    EXPECT(mmapkit_map_anonymous(0, 0, &map), MMAPKIT_EINVAL);
    EXPECT(mmapkit_map_anonymous(4096, 0xff00, &map), MMAPKIT_EINVAL);
    EXPECT(mmapkit_map_fd(-1, 0, 0, 0, &map), MMAPKIT_EINVAL);
    EXPECT(mmapkit_map_fd(9999, 0, 0, 0, &map), MMAPKIT_EINVAL);
    EXPECT(mmapkit_segment_create(NULL, "t", 64, 0, &seg), MMAPKIT_EINVAL);
    EXPECT(mmapkit_segment_from_fd(-5, "t", &seg), MMAPKIT_EINVAL);
    EXPECT(mmapkit_segment_receive(0, NULL, &seg), MMAPKIT_EINVAL);
    EXPECT(mmapkit_channel_open(NULL, NULL), MMAPKIT_EINVAL);
    EXPECT(mmapkit_channel_create_memfd(SIZE_MAX, 0, NULL), MMAPKIT_EINVAL);
    EXPECT(mmapkit_residency_path(NULL, &residency), MMAPKIT_EINVAL);
    EXPECT(mmapkit_residency_path("/dev/null", NULL), MMAPKIT_EINVAL);
    EXPECT(mmapkit_segment_unlink(NULL), MMAPKIT_EINVAL);
    /* Destroying NULL does nothing; destroying twice is an error the second time. */
    EXPECT(mmapkit_mapping_unmap(NULL), MMAPKIT_OK);
    mmapkit_mapping_t *again;
    EXPECT(mmapkit_map_anonymous(4096, 0, &again), MMAPKIT_OK);
    EXPECT(mmapkit_mapping_unmap(again), MMAPKIT_OK);
    EXPECT(mmapkit_mapping_len(again, &n), MMAPKIT_EINVAL);
    EXPECT(mmapkit_mapping_unmap(again), MMAPKIT_EINVAL);
    if (strlen(mmapkit_status_name(12345)) == 0) failures++;

    printf("%d failures\n", failures);
    return failures != 0;
}
