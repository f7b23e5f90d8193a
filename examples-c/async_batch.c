/*
 * async_batch.c - asynchronous calls with a callback, and a batch.
 *
 * 1. Queues 100 `echo` calls with goxelpool_call_async. Each callback runs once, on a library
 *    thread, and counts its outcome under a mutex; main waits on a condition variable until all
 *    100 are in. result/rpc_error are borrowed inside the callback: we only read them.
 * 2. Sends a batch of 20 requests with goxelpool_call_batch, one of them an unknown method. The
 *    batch fans the calls out over the pool's connections; every request gets its own outcome:
 *    the unknown one "ERPC", the others "OK".
 *
 *   cc -Wall -Wextra -Werror async_batch.c $(pkg-config --cflags --libs goxelpool) -lpthread
 *   ./a.out [/path/to/goxel-daemon.sock]
 */
#include <goxelpool.h>
#include <jansson.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ASYNC_CALLS = 100, BATCH_SIZE = 20, UNKNOWN_INDEX = 13 };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t all_done = PTHREAD_COND_INITIALIZER;
static int done, ok, failed;

/* userdata carries the call's number; echo must return exactly the params we sent: [n]. */
static void on_result(goxelpool_status status, const json_t *result, const json_t *rpc_error,
                      void *userdata) {
    int n = (int)(intptr_t)userdata;
    int good = status == GOXELPOOL_OK && json_is_array(result) && json_array_size(result) == 1 &&
               json_integer_value(json_array_get(result, 0)) == n;
    if (!good) {
        char *err = rpc_error ? json_dumps(rpc_error, JSON_COMPACT) : NULL;
        char *res = result ? json_dumps(result, JSON_COMPACT) : NULL;
        fprintf(stderr, "async_batch: call %d: %s result=%s error=%s\n", n,
                goxelpool_status_name(status), res ? res : "null", err ? err : "null");
        free(err);
        free(res);
    }
    pthread_mutex_lock(&lock);
    done++;
    if (good) ok++; else failed++;
    if (done == ASYNC_CALLS) pthread_cond_signal(&all_done);
    pthread_mutex_unlock(&lock);
}

static int async_calls(goxelpool_client *client) {
    for (int i = 0; i < ASYNC_CALLS; i++) {
        json_t *params = json_pack("[i]", i);
        goxelpool_status st =
            goxelpool_call_async(client, "echo", params, -1, on_result, (void *)(intptr_t)i);
        json_decref(params); /* copied by goxelpool_call_async before it returns */
        if (st != GOXELPOOL_OK) {
            /* The callback never runs for a call that was not queued: count it here. */
            fprintf(stderr, "async_batch: call_async %d: %s: %s\n", i, goxelpool_status_name(st),
                    goxelpool_last_error());
            pthread_mutex_lock(&lock);
            done++;
            failed++;
            pthread_mutex_unlock(&lock);
        }
    }

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    pthread_mutex_lock(&lock);
    int rc = 0;
    while (done < ASYNC_CALLS && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&all_done, &lock, &deadline);
    int d = done, o = ok, f = failed;
    pthread_mutex_unlock(&lock);
    printf("async: %d calls, %d callbacks, %d ok, %d failed\n", ASYNC_CALLS, d, o, f);
    if (d < ASYNC_CALLS) fprintf(stderr, "async_batch: only %d of %d callbacks within 30 s\n", d, ASYNC_CALLS);
    return d == ASYNC_CALLS && o == ASYNC_CALLS;
}

static int batch(goxelpool_client *client) {
    json_t *requests = json_array();
    for (int i = 0; i < BATCH_SIZE; i++) {
        json_t *req;
        if (i == UNKNOWN_INDEX)
            req = json_pack("{s:s}", "method", "no.such_method");
        else if (i % 3 == 0)
            req = json_pack("{s:s}", "method", "ping");
        else if (i % 3 == 1)
            req = json_pack("{s:s, s:{s:i}}", "method", "echo", "params", "n", i);
        else
            req = json_pack("{s:s}", "method", "version");
        json_array_append_new(requests, req); /* _new: the array steals req */
    }
    json_t *results = NULL;
    goxelpool_status st = goxelpool_call_batch(client, requests, -1, &results);
    json_decref(requests);
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "async_batch: goxelpool_call_batch: %s: %s\n", goxelpool_status_name(st),
                goxelpool_last_error());
        return 0;
    }
    int good = json_is_array(results) && json_array_size(results) == BATCH_SIZE;
    int n_ok = 0, n_erpc = 0;
    for (size_t i = 0; good && i < BATCH_SIZE; i++) {
        json_t *item = json_array_get(results, i); /* borrowed */
        const char *status = json_string_value(json_object_get(item, "status"));
        const char *want = i == UNKNOWN_INDEX ? "ERPC" : "OK";
        if (!status || strcmp(status, want) != 0) {
            char *text = json_dumps(item, JSON_COMPACT);
            fprintf(stderr, "async_batch: batch item %zu: expected status %s, got %s\n", i, want,
                    text ? text : "?");
            free(text);
            good = 0;
        } else if (i == UNKNOWN_INDEX) {
            n_erpc++;
            json_int_t code =
                json_integer_value(json_object_get(json_object_get(item, "error"), "code"));
            printf("batch item %zu (no.such_method): ERPC, code %lld\n", i, (long long)code);
        } else {
            n_ok++;
        }
    }
    if (!json_is_array(results) || json_array_size(results) != BATCH_SIZE)
        fprintf(stderr, "async_batch: batch returned %zu results for %d requests\n",
                json_array_size(results), BATCH_SIZE);
    printf("batch: %d requests, %d OK, %d ERPC\n", BATCH_SIZE, n_ok, n_erpc);
    json_decref(results);
    return good;
}

int main(int argc, char **argv) {
    const char *socket_path = argc > 1 ? argv[1] : "/tmp/goxel-daemon.sock";
    json_t *config = json_pack("{s:s, s:{s:i, s:i}}", "socket_path", socket_path, "pool",
                               "min_connections", 2, "max_connections", 4);
    goxelpool_client *client = NULL;
    char errbuf[256];
    goxelpool_status st = goxelpool_client_new(config, &client, errbuf, sizeof errbuf);
    json_decref(config);
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "async_batch: goxelpool_client_new: %s: %s\n", goxelpool_status_name(st),
                errbuf);
        return EXIT_FAILURE;
    }
    int good = async_calls(client);
    good = batch(client) && good;
    goxelpool_client_close(client, -1);
    goxelpool_client_free(client);
    printf("async_batch: %s\n", good ? "ok" : "FAILED");
    return good ? EXIT_SUCCESS : EXIT_FAILURE;
}
