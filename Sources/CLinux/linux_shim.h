/* Linux headers and calls that Swift's Glibc module leaves out: eventfd(2) for dispatch mode's
 * event fd; futex(2) for a waiting caller's parking spot (syscall(2) is variadic, which Swift
 * cannot call). */
#include <sys/eventfd.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <errno.h>
#include <stdint.h>
#include <time.h>

/* Sleeps while *word == expected, until the absolute CLOCK_MONOTONIC `deadline` (NULL: none).
 * 0: woken, or *word was not `expected` (look again); ETIMEDOUT; EINTR. */
static inline int goxelpool_futex_wait(uint32_t *word, uint32_t expected, const struct timespec *deadline) {
    if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET_PRIVATE, expected, deadline, NULL, FUTEX_BITSET_MATCH_ANY) == 0)
        return 0;
    return errno == EAGAIN ? 0 : errno;
}

/* Wakes one thread sleeping on word. */
static inline void goxelpool_futex_wake_one(uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}
