/* A mapping whose file is truncated under it: a plain mmap read would die of SIGBUS, the
 * guarded read returns MMAPKIT_ETRUNCATED and the program goes on. Usage: truncate FILE */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mmapkit.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return 2;
    }
    char page[8192];
    memset(page, 'x', sizeof page);
    FILE *file = fopen(argv[1], "w");
    if (!file || fwrite(page, 1, sizeof page, file) != sizeof page || fclose(file)) return 2;

    mmapkit_mapping_t *map;
    int status = mmapkit_map_path(argv[1], 0, 0, 0, &map);
    if (status != MMAPKIT_OK) {
        fprintf(stderr, "map: %s\n", mmapkit_last_error_message());
        return 1;
    }
    if (truncate(argv[1], 0) != 0) return 2;
    char byte;
    status = mmapkit_mapping_read_at(map, 4096, &byte, 1);
    printf("read_at(4096) after truncation: %s\n", mmapkit_status_name(status));
    printf("%s\n", mmapkit_last_error_message());
    mmapkit_mapping_unmap(map);
    return status == MMAPKIT_ETRUNCATED ? 0 : 1;
}
