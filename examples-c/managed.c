/*
 * managed.c - the library starts, supervises and recycles its own daemons (spawn mode).
 *
 *   managed [DAEMON]
 *
 * DAEMON is the daemon's executable: goxel-refd (the default, looked up in PATH) or
 * goxel-daemon. No daemon needs to be running: the client starts two, each on a socket in a
 * private directory, and makes them its endpoints as they answer `ping`. To show recycling in a
 * few seconds, each daemon gets at most 16 connections in its life (the real daemon accepts 256)
 * and every connection is closed after 4 requests; the library starts a replacement before the
 * limit, moves new calls there and stops the old daemon. Events of kind "daemon" and the alerts
 * are printed as they happen; the statistics show each daemon at the end.
 * Exits 0 when every call succeeded and at least one daemon was replaced.
 *
 *   cc -Wall -Wextra -Werror managed.c $(pkg-config --cflags --libs goxelpool) -lpthread -o managed
 */
#include <goxelpool.h>
#include <jansson.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static goxelpool_client *client;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int failures, replaced;

/* Daemon events and alerts, one line each (runs on the client's event thread; event is borrowed). */
static void on_event(const json_t *event, void *userdata) {
    (void)userdata;
    const char *kind = json_string_value(json_object_get(event, "kind"));
    const char *type = json_string_value(json_object_get(event, "type"));
    json_t *pid = json_object_get(event, "pid");
    if (kind && strcmp(kind, "alert") == 0) {
        /* The managed daemons' alerts (daemon_start_failed, daemon_crashed, daemon_crash_loop). */
        if (type && strncmp(type, "daemon_", 7) == 0)
            printf("  alert %s: %s\n", type, json_string_value(json_object_get(event, "message")));
    } else if (type && strcmp(type, "daemon_recycling") == 0) {
        printf("  %s pid %lld (%s: %lld connections so far)\n", type, (long long)json_integer_value(pid),
               json_string_value(json_object_get(event, "reason")),
               (long long)json_integer_value(json_object_get(event, "lifetime_connections")));
    } else if (type) {
        printf("  %s pid %lld %s\n", type, (long long)json_integer_value(pid),
               json_string_value(json_object_get(event, "endpoint")));
    }
    if (type && strcmp(type, "daemon_retired") == 0) {
        pthread_mutex_lock(&lock);
        replaced++;
        pthread_mutex_unlock(&lock);
    }
}

/* Adds voxels in this thread's row and reads each one back. */
static void *worker(void *arg) {
    int row = (int)(long)arg;
    for (int i = 0; i < 60; i++) {
        json_t *params = json_pack("[i,i,i,i,i,i,i,i]", i, row, 0, 200, 100, 50, 255, 0);
        goxelpool_status st = goxelpool_call(client, "goxel.add_voxel", params, -1, NULL, NULL);
        json_decref(params);
        json_t *result = NULL;
        if (st == GOXELPOOL_OK) {
            params = json_pack("[i,i,i]", i, row, 0);
            st = goxelpool_call(client, "goxel.get_voxel", params, -1, &result, NULL);
            json_decref(params);
            json_decref(result);
        }
        if (st != GOXELPOOL_OK) {
            pthread_mutex_lock(&lock);
            failures++;
            fprintf(stderr, "call failed: %s: %s\n", goxelpool_status_name(st), goxelpool_last_error());
            pthread_mutex_unlock(&lock);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *daemon = argc > 1 ? argv[1] : "goxel-refd";
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* For the real daemon: ["goxel-daemon", "--foreground", "--socket", "{socket}"]. */
    json_t *config = json_pack("{s:{s:[s,s,s], s:i, s:i}, s:{s:i, s:i, s:i}}",
                               "spawn", "command", daemon, "--socket", "{socket}", "instances", 2,
                               "max_connections_per_process", 16,
                               "pool", "min_connections", 1, "max_connections", 2, "max_requests_per_connection", 4);
    char err[512];
    goxelpool_status st = goxelpool_client_new(config, &client, err, sizeof err);
    json_decref(config); /* borrowed by goxelpool_client_new */
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "goxelpool_client_new: %s\n", err);
        return 1;
    }
    goxelpool_add_listener(client, GOXELPOOL_EVENT_DAEMON | GOXELPOOL_EVENT_ALERT, on_event, NULL, NULL);

    /* The first call waits (within its deadline) for a daemon to answer. */
    json_t *version = NULL;
    st = goxelpool_call(client, "version", NULL, 10000, &version, NULL);
    if (st != GOXELPOOL_OK) {
        /* E.g. the command does not exist: the message says what was run and how it ended. */
        fprintf(stderr, "version: %s: %s\n", goxelpool_status_name(st), goxelpool_last_error());
        goxelpool_client_free(client);
        return 1;
    }
    char *text = json_dumps(version, JSON_COMPACT);
    printf("version: %s\n", text);
    free(text);
    json_decref(version);

    printf("4 threads add and read back 60 voxels each:\n");
    pthread_t threads[4];
    for (long i = 0; i < 4; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);

    json_t *stats = goxelpool_stats(client); /* new reference */
    text = json_dumps(json_object_get(stats, "spawn"), JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(6));
    printf("spawn: %s\n", text);
    free(text);
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(stats, "daemons"), i, item) {
        text = json_dumps(item, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(6));
        printf("daemon: %s\n", text);
        free(text);
    }
    json_decref(stats);

    /* Stops both daemons (SIGTERM, SIGKILL after spawn.stop_grace_ms), reaps them, removes
     * their sockets and the private directory. */
    goxelpool_client_free(client);
    printf("%d calls failed, %d daemons replaced\n", failures, replaced);
    return failures == 0 && replaced > 0 ? 0 : 1;
}
