/*
 * uv_loop.c - async calls driven from a libuv loop: a uv_poll_t on the client's event fd.
 *
 * The client is created with "callbacks": "dispatch", so the callbacks of goxelpool_call_async
 * run only inside goxelpool_dispatch, on the loop's thread, like any other libuv callback. The
 * loop watches goxelpool_event_fd (readable while something waits) with a uv_poll_t and calls
 * goxelpool_dispatch when it is readable: the same shape as hiredis's libuv adapter or libcurl's
 * multi_socket_action. 10 000 `echo [n]` calls go out, at most 500 in flight: each callback
 * checks its answer and starts the next call. A uv_timer_t ends the loop if nothing happens for
 * 30 s. At the end the program checks that every callback ran exactly once, on the loop's
 * thread, with the right answer.
 *
 * pkg-config: goxelpool libuv
 *   cc -Wall -Wextra -Werror uv_loop.c $(pkg-config --cflags --libs goxelpool libuv)
 *   ./a.out [/path/to/goxel-daemon.sock] [CALLS]
 */
#include <goxelpool.h>
#include <jansson.h>
#include <uv.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { DEFAULT_CALLS = 10000, IN_FLIGHT = 500, IDLE_TIMEOUT_MS = 30000 };

static goxelpool_client *client;
static uv_poll_t poll_handle;
static uv_timer_t watchdog;
static pthread_t loop_thread;
static unsigned char *runs; /* callbacks seen per call */
static int total, started, completed, good, wrong_thread, twice, failed_dispatch;
static long wakeups, dispatched;

static void on_answer(goxelpool_status status, const json_t *result, const json_t *rpc_error,
                      void *userdata);

static void start_next(void) {
    int n = started++;
    json_t *params = json_pack("[i]", n);
    goxelpool_status st =
        goxelpool_call_async(client, "echo", params, -1, on_answer, (void *)(intptr_t)n);
    json_decref(params); /* copied by goxelpool_call_async */
    if (st != GOXELPOOL_OK) {
        /* The callback never runs for a call that was not queued. */
        fprintf(stderr, "uv_loop: call %d not queued: %s: %s\n", n, goxelpool_status_name(st),
                goxelpool_last_error());
        completed++;
        runs[n]++;
    }
}

/* Stops watching: the loop then has nothing left and uv_run returns. */
static void stop_loop(void) {
    uv_poll_stop(&poll_handle);
    uv_close((uv_handle_t *)&poll_handle, NULL);
    uv_timer_stop(&watchdog);
    uv_close((uv_handle_t *)&watchdog, NULL);
}

/* Runs inside goxelpool_dispatch, on the loop's thread; result is borrowed. */
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
        fprintf(stderr, "uv_loop: call %d: %s: %s\n", n, goxelpool_status_name(status),
                goxelpool_last_error());
    if (started < total) start_next();
}

/* The event fd is readable: run what waits. */
static void on_readable(uv_poll_t *handle, int status, int events) {
    (void)handle;
    (void)events;
    if (status < 0) {
        fprintf(stderr, "uv_loop: poll: %s\n", uv_strerror(status));
        failed_dispatch = 1;
        stop_loop();
        return;
    }
    int ran = 0;
    goxelpool_status st = goxelpool_dispatch(client, 0, &ran);
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "uv_loop: goxelpool_dispatch: %s: %s\n", goxelpool_status_name(st), goxelpool_last_error());
        failed_dispatch = 1;
        stop_loop();
        return;
    }
    wakeups++;
    dispatched += ran;
    uv_timer_again(&watchdog);
    if (completed >= total) stop_loop();
}

static void on_idle_too_long(uv_timer_t *timer) {
    (void)timer;
    fprintf(stderr, "uv_loop: nothing for %d ms (%d of %d done)\n", IDLE_TIMEOUT_MS, completed, total);
    stop_loop();
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
        fprintf(stderr, "uv_loop: goxelpool_client_new: %s: %s\n", goxelpool_status_name(st), errbuf);
        return EXIT_FAILURE;
    }

    uv_loop_t *loop = uv_default_loop();
    int rc = uv_poll_init(loop, &poll_handle, goxelpool_event_fd(client));
    if (rc == 0) rc = uv_poll_start(&poll_handle, UV_READABLE, on_readable);
    if (rc == 0) rc = uv_timer_init(loop, &watchdog);
    if (rc == 0) rc = uv_timer_start(&watchdog, on_idle_too_long, IDLE_TIMEOUT_MS, IDLE_TIMEOUT_MS);
    if (rc != 0) {
        fprintf(stderr, "uv_loop: cannot watch the event fd: %s\n", uv_strerror(rc));
        return EXIT_FAILURE;
    }

    while (started < total && started < IN_FLIGHT) start_next();
    uv_run(loop, UV_RUN_DEFAULT); /* returns once stop_loop closed both handles */
    uv_loop_close(loop);
    goxelpool_client_free(client); /* after uv_poll_stop: free closes the fd */

    int missing = 0;
    for (int i = 0; i < total; i++) missing += runs[i] == 0;
    free(runs);
    printf("uv_loop: %d calls, %d answers right, %ld callbacks in %ld wake-ups, %d on another thread, %d twice, %d missing\n",
           total, good, dispatched, wakeups, wrong_thread, twice, missing);
    int ok = good == total && wrong_thread == 0 && twice == 0 && missing == 0 && !failed_dispatch;
    printf("uv_loop: %s\n", ok ? "ok" : "FAILED");
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
