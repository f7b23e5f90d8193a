/*
 * stress.c - many threads on libgoxelpool at once, against a goxel-refd with faults.
 *
 * Client A: THREADS threads for SECONDS seconds, each doing a random mix of synchronous calls,
 * async calls, notifications, batches, stats/health snapshots, and listeners added and removed.
 * Client B: 6 threads hammering it while the main thread closes it halfway through (a client
 * closed while busy), then frees it once they have stopped.
 *
 * Checks: no crash; every async call accepted gets exactly one callback; every status is one a
 * faulty daemon can cause (never EINVAL, ETOOBIG, EPEER or ENOMEM); after B's close every call on
 * B is ECLOSED; the pool's statistics stay consistent. Meant to run under ASan/valgrind/TSan.
 *
 *   cc -std=c11 -Wall -Wextra -Werror stress.c $(pkg-config --cflags --libs goxelpool) -lpthread
 *   ./stress SOCKET [SECONDS] [THREADS]
 */
#define _POSIX_C_SOURCE 200809L
#include <goxelpool.h>
#include <jansson.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *sock_path;
static double seconds = 5;
static int n_threads = 8;
static int n_passed, n_failed;

static atomic_long async_accepted, async_completed, sync_calls, batches, snapshots, listeners_cycled, events_seen;
static atomic_long status_count[GOXELPOOL_ELOST + 2];
static atomic_long bad_status, after_close_not_closed;
static atomic_int stop_a, b_closed;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void check(int ok, const char *name, const char *fmt, long a, long b) {
    if (ok) n_passed++; else n_failed++;
    printf("%s %s: ", ok ? "PASS" : "FAIL", name);
    printf(fmt, a, b);
    printf("\n");
}

static void note(goxelpool_status st, int closing_ok) {
    int i = (st >= 0 && st <= GOXELPOOL_ELOST) ? (int)st : GOXELPOOL_ELOST + 1;
    atomic_fetch_add(&status_count[i], 1);
    switch (st) {
    case GOXELPOOL_OK: case GOXELPOOL_ERPC: case GOXELPOOL_ETIMEDOUT: case GOXELPOOL_EIO: case GOXELPOOL_EPROTO:
    case GOXELPOOL_ECONNECT: case GOXELPOOL_EUNAVAILABLE: case GOXELPOOL_EBUSY:
        return;
    case GOXELPOOL_ECLOSED:
        if (closing_ok) return;
        /* fallthrough */
    default:
        if (atomic_fetch_add(&bad_status, 1) < 5)
            fprintf(stderr, "stress: unexpected %s: %s\n", goxelpool_status_name(st), goxelpool_last_error());
    }
}

static void on_done(goxelpool_status st, const json_t *result, const json_t *rpc_error, void *userdata) {
    (void)result; (void)rpc_error;
    (void)userdata;
    note(st, 1); /* queued async calls get ECLOSED when their client closes */
    atomic_fetch_add(&async_completed, 1);
}

static void on_event(const json_t *event, void *userdata) {
    (void)userdata;
    if (!json_is_object(event) || !json_is_string(json_object_get(event, "kind"))) atomic_fetch_add(&bad_status, 1);
    atomic_fetch_add(&events_seen, 1);
}

typedef struct { goxelpool_client *client; unsigned seed; int is_b; } worker_arg;

static const char *methods[] = {"ping", "echo", "version", "goxel.get_voxel", "goxel.add_voxel", "status"};

static json_t *params_for(const char *method, unsigned *seed) {
    int x = (int)(rand_r(seed) % 16), y = (int)(rand_r(seed) % 16), z = (int)(rand_r(seed) % 16);
    if (strcmp(method, "goxel.add_voxel") == 0) return json_pack("[i,i,i,i,i,i,i,i]", x, y, z, 255, 0, 0, 255, 0);
    if (strcmp(method, "goxel.get_voxel") == 0) return json_pack("[i,i,i]", x, y, z);
    if (strcmp(method, "echo") == 0) return json_pack("{s:i,s:s}", "n", x, "s", "stress");
    return NULL;
}

static int one_op(goxelpool_client *client, unsigned *seed, int is_b) {
    int closed_ok = is_b && atomic_load(&b_closed);
    const char *method = methods[rand_r(seed) % (sizeof methods / sizeof methods[0])];
    json_t *params = params_for(method, seed);
    goxelpool_status st = GOXELPOOL_OK;
    int op = (int)(rand_r(seed) % 100);
    if (op < 45) {
        json_t *result = NULL, *rpc_error = NULL;
        st = goxelpool_call(client, method, params, 500, &result, &rpc_error);
        json_decref(result);
        json_decref(rpc_error);
        atomic_fetch_add(&sync_calls, 1);
    } else if (op < 70) {
        st = goxelpool_call_async(client, method, params, 500, on_done, is_b ? (void *)1 : NULL);
        if (st == GOXELPOOL_OK) atomic_fetch_add(&async_accepted, 1);
    } else if (op < 78) {
        json_t *requests = json_array(), *results = NULL;
        int n = 1 + (int)(rand_r(seed) % 6);
        for (int i = 0; i < n; i++) {
            const char *m = methods[rand_r(seed) % (sizeof methods / sizeof methods[0])];
            json_t *p = params_for(m, seed);
            json_array_append_new(requests, p ? json_pack("{s:s,s:o}", "method", m, "params", p) : json_pack("{s:s}", "method", m));
        }
        st = goxelpool_call_batch(client, requests, 800, &results);
        if (st == GOXELPOOL_OK && json_array_size(results) != (size_t)n) atomic_fetch_add(&bad_status, 1);
        json_decref(results);
        json_decref(requests);
        atomic_fetch_add(&batches, 1);
    } else if (op < 84) {
        st = goxelpool_notify(client, "ping", NULL);
    } else if (op < 94) {
        json_t *s = goxelpool_stats(client), *h = goxelpool_health(client);
        if (!s || !h || !json_is_string(json_object_get(s, "pool_state"))) atomic_fetch_add(&bad_status, 1);
        json_decref(s);
        json_decref(h);
        atomic_fetch_add(&snapshots, 1);
    } else {
        int id = 0;
        st = goxelpool_add_listener(client, GOXELPOOL_EVENT_ALL, on_event, NULL, &id);
        if (st == GOXELPOOL_OK) {
            sleep_ms((int)(rand_r(seed) % 5));
            goxelpool_status st2 = goxelpool_remove_listener(client, id);
            if (st2 != GOXELPOOL_OK) atomic_fetch_add(&bad_status, 1);
            atomic_fetch_add(&listeners_cycled, 1);
        }
    }
    json_decref(params);
    note(st, is_b); /* B is closed while in use: ECLOSED is expected there */
    /* Calls (sync, async, batch, notify: op < 84) on B after its close must be ECLOSED; stats,
     * health and listener changes (op >= 84) have no status of their own to check here. */
    if (is_b && closed_ok && st != GOXELPOOL_ECLOSED && op < 84) atomic_fetch_add(&after_close_not_closed, 1);
    return st == GOXELPOOL_ECLOSED;
}

static void *worker(void *raw) {
    worker_arg *arg = raw;
    int closed_seen = 0;
    while (!atomic_load(&stop_a)) {
        if (one_op(arg->client, &arg->seed, arg->is_b) && arg->is_b && ++closed_seen > 20) break;
    }
    return NULL;
}

static goxelpool_client *make(int max) {
    json_t *config = json_pack("{s:s, s:i, s:i, s:i, s:{s:i, s:i, s:i, s:i}, s:{s:i}, s:{s:i}}",
                               "socket_path", sock_path, "timeout_ms", 500, "retry_delay_ms", 5, "event_queue_size", 256,
                               "pool", "min_connections", 2, "max_connections", max, "max_waiters", 64, "connect_timeout_ms", 500,
                               "reconnect", "initial_backoff_ms", 20, "health", "interval_ms", 50);
    goxelpool_client *client = NULL;
    char err[256];
    if (goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) {
        fprintf(stderr, "stress: client_new: %s\n", err);
        exit(2);
    }
    json_decref(config);
    return client;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s SOCKET [SECONDS] [THREADS]\n", argv[0]); return 2; }
    sock_path = argv[1];
    if (argc > 2) seconds = atof(argv[2]);
    if (argc > 3) n_threads = atoi(argv[3]);
    if (n_threads < 1 || n_threads > 256) n_threads = 8;
    double started = now_s();

    goxelpool_client *a = make(6), *b = make(4);
    int id = 0;
    goxelpool_add_listener(a, GOXELPOOL_EVENT_ALERT | GOXELPOOL_EVENT_CONNECTION, on_event, NULL, &id);
    int nb = 6, total = n_threads + nb;
    pthread_t *threads = calloc((size_t)total, sizeof *threads);
    worker_arg *args = calloc((size_t)total, sizeof *args);
    for (int i = 0; i < total; i++) {
        args[i].client = i < n_threads ? a : b;
        args[i].is_b = i >= n_threads;
        args[i].seed = (unsigned)(i * 7919 + 17);
        if (pthread_create(&threads[i], NULL, worker, &args[i]) != 0) { fprintf(stderr, "stress: pthread_create\n"); return 2; }
    }
    sleep_ms((int)(seconds * 500));
    goxelpool_status st = goxelpool_client_close(b, 200);
    atomic_store(&b_closed, 1); /* from here on, every call on B must be ECLOSED */
    check(st == GOXELPOOL_OK, "close client B while 6 threads use it", "status %ld%.0ld", (long)st, 0L);
    for (int i = n_threads; i < total; i++) pthread_join(threads[i], NULL);
    long accepted_b_done = atomic_load(&async_accepted), completed_b_done = atomic_load(&async_completed);
    (void)accepted_b_done; (void)completed_b_done;
    goxelpool_client_free(b);
    check(atomic_load(&after_close_not_closed) == 0, "every call on B after its close returned ECLOSED", "%ld not ECLOSED%.0ld",
          atomic_load(&after_close_not_closed), 0L);

    sleep_ms((int)(seconds * 500));
    atomic_store(&stop_a, 1);
    for (int i = 0; i < n_threads; i++) pthread_join(threads[i], NULL);
    json_t *stats = goxelpool_stats(a);
    long served = (long)json_integer_value(json_object_get(stats, "total_requests_served"));
    long total_conn = (long)json_integer_value(json_object_get(stats, "total_connections"));
    json_decref(stats);
    check(goxelpool_client_close(a, 2000) == GOXELPOOL_OK, "close client A", "%ld requests served, %ld connections", served, total_conn);
    check(atomic_load(&async_accepted) == atomic_load(&async_completed), "every accepted async call got exactly one callback",
          "%ld accepted, %ld callbacks", atomic_load(&async_accepted), atomic_load(&async_completed));
    json_t *after = goxelpool_stats(a);
    const char *state = json_string_value(json_object_get(after, "pool_state"));
    check(state && strcmp(state, "closed") == 0 && json_integer_value(json_object_get(after, "total_connections")) == 0,
          "after close: pool_state closed, 0 connections", "%.0ld%.0ld", 0L, 0L);
    json_decref(after);
    goxelpool_client_free(a);
    check(atomic_load(&bad_status) == 0, "no unexpected status or malformed snapshot", "%ld unexpected%.0ld", atomic_load(&bad_status), 0L);

    printf("# %.1f s, %d+%d threads: %ld sync, %ld async, %ld batches, %ld snapshots, %ld listener add/remove, %ld events\n",
           now_s() - started, n_threads, nb, atomic_load(&sync_calls), atomic_load(&async_accepted), atomic_load(&batches),
           atomic_load(&snapshots), atomic_load(&listeners_cycled), atomic_load(&events_seen));
    printf("# statuses:");
    for (int i = 0; i <= GOXELPOOL_ELOST; i++)
        if (atomic_load(&status_count[i])) printf(" %s=%ld", goxelpool_status_name((goxelpool_status)i), atomic_load(&status_count[i]));
    printf("\n");
    free(threads);
    free(args);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
