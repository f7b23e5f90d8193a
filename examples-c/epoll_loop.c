/*
 * epoll_loop.c - async calls driven from a bare epoll loop, with no callback on a library thread.
 *
 * The client is created with "callbacks": "dispatch": the callbacks of goxelpool_call_async wait
 * in a queue until goxelpool_dispatch runs them, on the thread that calls it. The loop watches
 * the client's event fd (goxelpool_event_fd, readable while something waits) with epoll,
 * level-triggered, and calls goxelpool_dispatch when it is readable. 10 000 `echo [n]` calls go
 * out, at most 500 in flight: each callback checks its answer and starts the next call. Then the
 * program checks that every callback ran exactly once, on the loop's thread, with the right
 * answer. Nothing here needs a mutex: all of it runs on one thread.
 *
 *   cc -Wall -Wextra -Werror epoll_loop.c $(pkg-config --cflags --libs goxelpool)
 *   ./a.out [/path/to/goxel-daemon.sock] [CALLS]
 */
#define _GNU_SOURCE
#include <goxelpool.h>
#include <jansson.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

enum { DEFAULT_CALLS = 10000, IN_FLIGHT = 500, IDLE_TIMEOUT_MS = 30000 };

static goxelpool_client *client;
static pthread_t loop_thread;
static unsigned char *runs; /* callbacks seen per call */
static int total, started, completed, good, wrong_thread, twice;

static void on_answer(goxelpool_status status, const json_t *result, const json_t *rpc_error,
                      void *userdata);

/* Starts call number `started` (echo [n]); on refusal counts it as completed and failed. */
static void start_next(void) {
    int n = started++;
    json_t *params = json_pack("[i]", n);
    goxelpool_status st =
        goxelpool_call_async(client, "echo", params, -1, on_answer, (void *)(intptr_t)n);
    json_decref(params); /* copied by goxelpool_call_async */
    if (st != GOXELPOOL_OK) {
        /* The callback never runs for a call that was not queued. */
        fprintf(stderr, "epoll_loop: call %d not queued: %s: %s\n", n, goxelpool_status_name(st),
                goxelpool_last_error());
        completed++;
        runs[n]++;
    }
}

/* Runs inside goxelpool_dispatch, so on the loop's thread; result is borrowed. */
static void on_answer(goxelpool_status status, const json_t *result, const json_t *rpc_error,
                      void *userdata) {
    (void)rpc_error;
    int n = (int)(intptr_t)userdata;
    if (!pthread_equal(pthread_self(), loop_thread)) wrong_thread++;
    if (runs[n]++ > 0) twice++;
    completed++;
    if (status == GOXELPOOL_OK && json_is_array(result) && json_array_size(result) == 1 &&
        json_integer_value(json_array_get(result, 0)) == n)
        good++;
    else if (status != GOXELPOOL_OK)
        fprintf(stderr, "epoll_loop: call %d: %s: %s\n", n, goxelpool_status_name(status),
                goxelpool_last_error());
    if (started < total) start_next();
}

int main(int argc, char **argv) {
    const char *socket_path = argc > 1 ? argv[1] : "/tmp/goxel-daemon.sock";
    total = argc > 2 ? atoi(argv[2]) : DEFAULT_CALLS;
    if (total <= 0) total = DEFAULT_CALLS;
    runs = calloc((size_t)total, 1);
    if (!runs) return EXIT_FAILURE;
    loop_thread = pthread_self();

    json_t *config = json_pack("{s:s, s:s, s:{s:i, s:i}}", "socket_path", socket_path,
                               "callbacks", "dispatch",
                               "pool", "min_connections", 2, "max_connections", 4);
    char errbuf[256];
    goxelpool_status st = goxelpool_client_new(config, &client, errbuf, sizeof errbuf);
    json_decref(config);
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "epoll_loop: goxelpool_client_new: %s: %s\n", goxelpool_status_name(st), errbuf);
        return EXIT_FAILURE;
    }

    int fd = goxelpool_event_fd(client); /* owned by the client: never read or close it */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event watch = {.events = EPOLLIN, .data.fd = fd}; /* level-triggered */
    if (fd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &watch) != 0) {
        fprintf(stderr, "epoll_loop: cannot watch the event fd %d: %s\n", fd, strerror(errno));
        return EXIT_FAILURE;
    }

    while (started < total && started < IN_FLIGHT) start_next();
    long wakeups = 0, dispatched = 0;
    while (completed < total) {
        struct epoll_event ready[4];
        int n = epoll_wait(ep, ready, 4, IDLE_TIMEOUT_MS);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "epoll_loop: nothing for %d ms (%d of %d done)\n", IDLE_TIMEOUT_MS, completed, total);
            break;
        }
        int ran = 0;
        st = goxelpool_dispatch(client, 0, &ran); /* 0: everything queued now */
        if (st != GOXELPOOL_OK) {
            fprintf(stderr, "epoll_loop: goxelpool_dispatch: %s: %s\n", goxelpool_status_name(st), goxelpool_last_error());
            break;
        }
        wakeups++;
        dispatched += ran;
    }

    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); /* stop watching before free closes the fd */
    close(ep);
    goxelpool_client_free(client); /* would run anything still queued, here */

    int missing = 0;
    for (int i = 0; i < total; i++) missing += runs[i] == 0;
    free(runs);
    printf("epoll_loop: %d calls, %d answers right, %ld callbacks in %ld wake-ups, %d on another thread, %d twice, %d missing\n",
           total, good, dispatched, wakeups, wrong_thread, twice, missing);
    int ok = good == total && wrong_thread == 0 && twice == 0 && missing == 0;
    printf("epoll_loop: %s\n", ok ? "ok" : "FAILED");
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
