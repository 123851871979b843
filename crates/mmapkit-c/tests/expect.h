/* The check the C tests share: a call's status against the one wanted, counted in `failures`
 * (which the including file defines) and printed with the last error message. */
#ifndef MMAPKIT_TEST_EXPECT_H
#define MMAPKIT_TEST_EXPECT_H

#include <stdio.h>

#include "mmapkit.h"

#define EXPECT(call, want)                                                                    \
    do {                                                                                      \
        int got_ = (call);                                                                    \
        if (got_ != (want)) {                                                                 \
            printf("%s:%d %s = %s, want %s (%s)\n", __FILE__, __LINE__, #call,                \
                   mmapkit_status_name(got_), mmapkit_status_name(want),                      \
                   mmapkit_last_error_message());                                             \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

#endif
