/* Wall-clock time in nanoseconds since the Unix epoch, for message stamps
 * (TTL and ack deadlines survive a restart, so monotonic time won't do).
 * C11 timespec_get: glibc, musl, macOS 10.15+, MSVC 2015+. */
#ifndef RC_CLOCK_H
#define RC_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t rc_now_ns(void)
{
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif /* RC_CLOCK_H */
