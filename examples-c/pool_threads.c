/*
 * pool_threads.c - one pooled client shared by many threads.
 *
 * 8 threads each make 200 calls through the same client (100 goxel.add_voxel, each followed by a
 * goxel.get_voxel that reads the voxel back). The pool has at most 4 connections, so threads wait
 * for a free connection; every goxelpool_* function may be called from any thread at once.
 * Failures are counted; the program prints the pool's statistics and exits non-zero if any call
 * failed.
 *
 *   cc -Wall -Wextra -Werror pool_threads.c $(pkg-config --cflags --libs goxelpool) -lpthread
 *   ./a.out [/path/to/goxel-daemon.sock]
 */
#include <goxelpool.h>
#include <jansson.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { THREADS = 8, CALLS_PER_THREAD = 200 };

static goxelpool_client *client;
static atomic_int calls_ok;
static atomic_int calls_failed;

static void failed(int thread, const char *method, goxelpool_status st, const json_t *rpc_error,
                   const char *why) {
    atomic_fetch_add(&calls_failed, 1);
    char *err = rpc_error ? json_dumps(rpc_error, JSON_COMPACT) : NULL;
    fprintf(stderr, "pool_threads: thread %d: %s: %s %s%s%s\n", thread, method,
            goxelpool_status_name(st), why ? why : goxelpool_last_error(), err ? " " : "",
            err ? err : "");
    free(err);
}

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < CALLS_PER_THREAD / 2; i++) {
        /* Each thread writes its own plane x = t, so threads never overwrite each other. */
        int x = t, y = i % 32, z = i / 32, r = (t * 29) % 256, g = i % 256, b = 200;
        json_t *params = json_pack("{s:i, s:i, s:i, s:[i,i,i,i]}", "x", x, "y", y, "z", z,
                                   "color", r, g, b, 255);
        json_t *result = NULL, *rpc_error = NULL;
        goxelpool_status st =
            goxelpool_call(client, "goxel.add_voxel", params, -1, &result, &rpc_error);
        json_decref(params);
        if (st != GOXELPOOL_OK) {
            failed(t, "goxel.add_voxel", st, rpc_error, NULL);
            json_decref(rpc_error);
            continue;
        }
        json_decref(result);
        atomic_fetch_add(&calls_ok, 1);

        params = json_pack("[i,i,i]", x, y, z);
        st = goxelpool_call(client, "goxel.get_voxel", params, -1, &result, &rpc_error);
        json_decref(params);
        if (st != GOXELPOOL_OK) {
            failed(t, "goxel.get_voxel", st, rpc_error, NULL);
            json_decref(rpc_error);
            continue;
        }
        if (!json_is_true(json_object_get(result, "exists")))
            failed(t, "goxel.get_voxel", st, NULL, "the voxel just added does not exist");
        else
            atomic_fetch_add(&calls_ok, 1);
        json_decref(result);
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *socket_path = argc > 1 ? argv[1] : "/tmp/goxel-daemon.sock";
    json_t *config = json_pack("{s:s, s:{s:i, s:i}}", "socket_path", socket_path, "pool",
                               "min_connections", 2, "max_connections", 4);
    char errbuf[256];
    goxelpool_status st = goxelpool_client_new(config, &client, errbuf, sizeof errbuf);
    json_decref(config);
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "pool_threads: goxelpool_client_new: %s: %s\n", goxelpool_status_name(st),
                errbuf);
        return EXIT_FAILURE;
    }

    json_t *params = json_pack("[s,i,i,i]", "pool-threads", 64, 64, 64);
    json_t *rpc_error = NULL;
    st = goxelpool_call(client, "goxel.create_project", params, -1, NULL, &rpc_error);
    json_decref(params);
    if (st != GOXELPOOL_OK) {
        failed(-1, "goxel.create_project", st, rpc_error, NULL);
        json_decref(rpc_error);
        goxelpool_client_free(client);
        return EXIT_FAILURE;
    }

    pthread_t threads[THREADS];
    int started = 0;
    for (int t = 0; t < THREADS; t++) {
        if (pthread_create(&threads[t], NULL, worker, (void *)(intptr_t)t) != 0) {
            fprintf(stderr, "pool_threads: pthread_create failed\n");
            atomic_fetch_add(&calls_failed, 1);
            break;
        }
        started++;
    }
    for (int t = 0; t < started; t++) pthread_join(threads[t], NULL);

    printf("%d threads x %d calls: %d ok, %d failed\n", THREADS, CALLS_PER_THREAD,
           atomic_load(&calls_ok), atomic_load(&calls_failed));
    json_t *stats = goxelpool_stats(client);
    char *text = stats ? json_dumps(stats, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    printf("stats:\n%s\n", text ? text : "(none)");
    free(text);
    json_decref(stats);

    goxelpool_client_close(client, -1);
    goxelpool_client_free(client);
    if (atomic_load(&calls_failed) != 0 || atomic_load(&calls_ok) != THREADS * CALLS_PER_THREAD) {
        fprintf(stderr, "pool_threads: FAILED\n");
        return EXIT_FAILURE;
    }
    printf("pool_threads: ok\n");
    return EXIT_SUCCESS;
}
