/*
 * demo.c - a guided tour of libgoxelpool (run by `make demo`).
 *
 *   demo --spawn DAEMON [--control]     (make demo: the library starts the daemon itself)
 *   demo SOCKET [--control]             (make demo SOCKET=/path: a daemon already running)
 *
 * With --spawn the client starts DAEMON (goxel-refd, or goxel-daemon) itself on a socket of its
 * own (spawn mode: no daemon to start by hand) and restarts it when it dies; with SOCKET it
 * connects to a daemon that is already running. It pools 2..6 connections with a health check
 * every second, registers a listener that prints every alert, health, connection, pool and
 * daemon event as it arrives, then:
 *   1. 4 threads add voxels and read them back;
 *   2. a batch of requests fanned out over the pool;
 *   3. statistics and health, as JSON.
 * With --control (the daemon is the reference daemon goxel-refd: started by the library with
 * --spawn, else started by hand with --supervise):
 *   4. the daemon is made slow (refd.set_faults {"latency_ms": 400}) for 3 s of traffic, then
 *      fast again: health tiers go down and come back;
 *   5. the daemon crashes (refd.crash) and is restarted (by the library with --spawn, else by
 *      its supervisor): 3 s of traffic show the failures and the recovery;
 *   6. final statistics and health.
 * Exits 0 when the traffic of steps 1-2 succeeded and, with --control, the daemon is reachable
 * again at the end.
 *
 *   cc -Wall -Wextra -Werror demo.c $(pkg-config --cflags --libs goxelpool) -lpthread -o demo
 */
#include <goxelpool.h>
#include <jansson.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_STATUS = 16 };

static goxelpool_client *client;
static struct timespec started;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static double elapsed(void) {
    return now_s() - ((double)started.tv_sec + (double)started.tv_nsec / 1e9);
}

/* One line of narrative, prefixed with the seconds since the start. Thread-safe. */
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&out_lock);
    printf("[%7.3f] ", elapsed());
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    va_end(ap);
}

static void print_json(const char *title, json_t *value /* borrowed */) {
    char *text =
        value ? json_dumps(value, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(6)) : NULL;
    pthread_mutex_lock(&out_lock);
    printf("[%7.3f] %s:\n%s\n", elapsed(), title, text ? text : "(null)");
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    free(text);
}

/* The listener: runs on the client's event thread, one event at a time. event is borrowed. */
static void on_event(const json_t *event, void *userdata) {
    (void)userdata;
    const char *kind = json_string_value(json_object_get(event, "kind"));
    const char *type = json_string_value(json_object_get(event, "type"));
    /* Everything but kind, type and timestamp_ms, on one line. json_copy is shallow and does not
     * modify its argument (jansson's prototype lacks the const). */
    json_t *rest = json_copy((json_t *)event);
    json_object_del(rest, "kind");
    json_object_del(rest, "type");
    json_t *ts = json_object_get(event, "timestamp_ms");
    char clock[32] = "";
    if (json_is_integer(ts) || json_is_real(ts)) {
        json_int_t ms = json_is_integer(ts) ? json_integer_value(ts) : (json_int_t)json_real_value(ts);
        time_t secs = (time_t)(ms / 1000);
        struct tm tm;
        localtime_r(&secs, &tm);
        snprintf(clock, sizeof clock, "%02d:%02d:%02d.%03d ", tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(ms % 1000));
        json_object_del(rest, "timestamp_ms");
    }
    char *details =
        rest ? json_dumps(rest, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(4)) : NULL;
    say("  event %s%-10s %-22s %s", clock, kind ? kind : "?", type ? type : "?",
        details ? details : "");
    free(details);
    json_decref(rest);
}

/* The health snapshot, one line for the pool and one per connection (latency history left out). */
static void print_health(const char *title) {
    json_t *health = goxelpool_health(client); /* new reference */
    if (!health) {
        say("%s: (none)", title);
        return;
    }
    json_t *copy = json_deep_copy(health);
    json_t *pool = json_object_get(copy, "pool"), *conns = json_object_get(copy, "connections");
    json_object_del(pool, "latencies_ms");
    char *text = pool ? json_dumps(pool, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(4)) : NULL;
    say("%s: state %s, %lld of %lld connections healthy; pool %s", title,
        json_string_value(json_object_get(copy, "state")),
        (long long)json_integer_value(json_object_get(copy, "healthy_connections")),
        (long long)json_integer_value(json_object_get(copy, "total_connections")),
        text ? text : "{}");
    free(text);
    size_t i;
    json_t *conn;
    json_array_foreach(conns, i, conn) {
        json_object_del(conn, "latencies_ms");
        text = json_dumps(conn, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(4));
        say("  connection %s", text ? text : "?");
        free(text);
    }
    json_decref(copy);
    json_decref(health);
}

/* ---- traffic ----------------------------------------------------------------------------- */

struct tally {
    int ok;
    int by_status[MAX_STATUS + 1]; /* failures per status; [MAX_STATUS]: unknown values */
    double latency_sum_ms;
};

static pthread_mutex_t tally_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tally interval_tally, total_tally;

static void count(goxelpool_status st, double latency_ms) {
    int idx = (int)st >= 0 && (int)st < MAX_STATUS ? (int)st : MAX_STATUS;
    pthread_mutex_lock(&tally_lock);
    struct tally *ts[2] = {&interval_tally, &total_tally};
    for (int i = 0; i < 2; i++) {
        if (st == GOXELPOOL_OK) ts[i]->ok++; else ts[i]->by_status[idx]++;
        ts[i]->latency_sum_ms += latency_ms;
    }
    pthread_mutex_unlock(&tally_lock);
}

static int failures(const struct tally *t) {
    int n = 0;
    for (int i = 0; i <= MAX_STATUS; i++) n += t->by_status[i];
    return n;
}

static void describe(const struct tally *t, char *buf, size_t len) {
    int fails = failures(t), calls = t->ok + fails;
    int off = snprintf(buf, len, "%4d calls: %4d ok, %3d failed", calls, t->ok, fails);
    for (int i = 0; i <= MAX_STATUS && off > 0 && (size_t)off < len; i++)
        if (t->by_status[i])
            off += snprintf(buf + off, len - (size_t)off, " %s x%d",
                            i == MAX_STATUS ? "other" : goxelpool_status_name((goxelpool_status)i),
                            t->by_status[i]);
    if (calls > 0 && off > 0 && (size_t)off < len)
        snprintf(buf + off, len - (size_t)off, ", mean latency %.1f ms",
                 t->latency_sum_ms / calls);
}

struct worker_args {
    int id;
    double until;       /* traffic: run until this instant (now_s) */
    int voxels;         /* write phase: voxels to add and read back */
    int mismatches;
};

static goxelpool_status timed_call(const char *method, json_t *params, int timeout_ms,
                                   json_t **result) {
    double t = now_s();
    json_t *rpc_error = NULL;
    goxelpool_status st = goxelpool_call(client, method, params, timeout_ms, result, &rpc_error);
    count(st, (now_s() - t) * 1000.0);
    json_decref(rpc_error);
    return st;
}

/* Phase 1: add voxels in this thread's own row, read each one back. */
static void *writer(void *arg) {
    struct worker_args *w = arg;
    for (int i = 0; i < w->voxels; i++) {
        json_t *params = json_pack("{s:i, s:i, s:i, s:[i,i,i,i]}", "x", i, "y", w->id, "z", 0,
                                   "color", 60 * w->id, 4 * i, 180, 255);
        goxelpool_status st = timed_call("goxel.add_voxel", params, -1, NULL);
        json_decref(params);
        if (st != GOXELPOOL_OK) continue;
        json_t *result = NULL;
        params = json_pack("[i,i,i]", i, w->id, 0);
        st = timed_call("goxel.get_voxel", params, -1, &result);
        json_decref(params);
        if (st == GOXELPOOL_OK && !json_is_true(json_object_get(result, "exists"))) w->mismatches++;
        json_decref(result);
    }
    return NULL;
}

/* Phases 4-5: read voxels until the deadline. */
static void *reader(void *arg) {
    struct worker_args *w = arg;
    for (int i = 0; now_s() < w->until; i++) {
        json_t *params = json_pack("[i,i,i]", i % 25, w->id % 4, 0);
        goxelpool_status st = timed_call("goxel.get_voxel", params, 2000, NULL);
        json_decref(params);
        /* About 50 calls a second per thread; longer pauses while the daemon is away. */
        sleep_ms(st == GOXELPOOL_OK ? 20 : 100);
    }
    return NULL;
}

/* Runs `threads` readers for `seconds`, printing one summary line every 0.5 s. */
static struct tally traffic(int threads, double seconds) {
    pthread_t tids[8];
    struct worker_args args[8];
    memset(args, 0, sizeof args);
    pthread_mutex_lock(&tally_lock);
    memset(&total_tally, 0, sizeof total_tally);
    memset(&interval_tally, 0, sizeof interval_tally);
    pthread_mutex_unlock(&tally_lock);
    double until = now_s() + seconds;
    int n = 0;
    for (; n < threads && n < 8; n++) {
        args[n].id = n;
        args[n].until = until;
        if (pthread_create(&tids[n], NULL, reader, &args[n]) != 0) break;
    }
    while (now_s() < until) {
        sleep_ms(500);
        pthread_mutex_lock(&tally_lock);
        struct tally t = interval_tally;
        memset(&interval_tally, 0, sizeof interval_tally);
        pthread_mutex_unlock(&tally_lock);
        char line[256];
        describe(&t, line, sizeof line);
        say("traffic: %s", line);
    }
    for (int i = 0; i < n; i++) pthread_join(tids[i], NULL);
    pthread_mutex_lock(&tally_lock);
    struct tally total = total_tally;
    pthread_mutex_unlock(&tally_lock);
    return total;
}

/* ---- control of the reference daemon ----------------------------------------------------- */

static void control(const char *method, json_t *params /* stolen */) {
    json_t *rpc_error = NULL;
    goxelpool_status st = goxelpool_call(client, method, params, 2000, NULL, &rpc_error);
    char *text = params ? json_dumps(params, JSON_COMPACT) : NULL;
    if (st == GOXELPOOL_OK)
        say("%s%s%s: OK", method, text ? " " : "", text ? text : "");
    else
        say("%s%s%s: %s (%s)", method, text ? " " : "", text ? text : "",
            goxelpool_status_name(st), goxelpool_last_error());
    free(text);
    json_decref(params);
    json_decref(rpc_error);
}

static void show_health_summary(const char *when) {
    json_t *health = goxelpool_health(client); /* new reference */
    say("health %s: pool state %s", when, json_string_value(json_object_get(health, "state")));
    json_decref(health);
}

int main(int argc, char **argv) {
    int spawn = argc > 2 && strcmp(argv[1], "--spawn") == 0;
    const char *target = spawn ? argv[2] : argc > 1 ? argv[1] : "/tmp/goxel-daemon.sock";
    int next = spawn ? 3 : 2;
    int with_control = argc > next && strcmp(argv[next], "--control") == 0;
    int ok = 1;
    clock_gettime(CLOCK_MONOTONIC, &started);
    setvbuf(stdout, NULL, _IOLBF, 0);

    say("libgoxelpool %s: demo %s %s%s", goxelpool_version(), spawn ? "starting its own daemon:" : "against",
        target, with_control ? " (reference daemon under our control)" : "");
    json_t *config = json_pack(
        "{s:b, s:i,"
        " s:{s:i, s:i},"
        " s:{s:i, s:i, s:i, s:i, s:i},"
        " s:{s:i}}",
        "pooling", 1, "timeout_ms", 2000,
        "pool", "min_connections", 2, "max_connections", 6,
        "health", "interval_ms", 1000, "healthy_latency_ms", 200, "degraded_latency_ms", 800,
        "failure_threshold", 2, "success_threshold", 2,
        "reconnect", "initial_backoff_ms", 200);
    if (spawn) {
        /* Spawn mode: the library runs the daemon on a socket in a private directory of its own
         * ({socket}), waits until it answers, restarts it when it dies, stops it at free. For the
         * real daemon: ["goxel-daemon", "--foreground", "--socket", "{socket}"]. */
        json_object_set_new(config, "spawn", json_pack("{s:[s,s,s], s:i}", "command", target, "--socket", "{socket}",
                                                       "instances", 1));
    } else {
        json_object_set_new(config, "socket_path", json_string(target));
    }
    char errbuf[256];
    goxelpool_status st = goxelpool_client_new(config, &client, errbuf, sizeof errbuf);
    say("client: pooled, 2..6 connections, health check every 1000 ms (healthy < 200 ms, "
        "degraded < 800 ms), reconnect backoff from 200 ms%s: %s",
        spawn ? ", one managed daemon" : "", goxelpool_status_name(st));
    json_decref(config);
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "demo: goxelpool_client_new: %s\n", errbuf);
        return EXIT_FAILURE;
    }
    int listener = -1;
    st = goxelpool_add_listener(client,
                                GOXELPOOL_EVENT_ALERT | GOXELPOOL_EVENT_HEALTH |
                                    GOXELPOOL_EVENT_CONNECTION | GOXELPOOL_EVENT_POOL |
                                    GOXELPOOL_EVENT_DAEMON,
                                on_event, NULL, &listener);
    say("listener for alert, health, connection, pool and daemon events: %s (id %d)",
        goxelpool_status_name(st), listener);
    if (st != GOXELPOOL_OK) ok = 0;

    /* 1. Writers. */
    json_t *params = json_pack("[s,i,i,i]", "demo", 32, 32, 32);
    st = timed_call("goxel.create_project", params, 10000, NULL);
    json_decref(params);
    say("goxel.create_project demo 32x32x32: %s", goxelpool_status_name(st));
    if (st != GOXELPOOL_OK) ok = 0;

    say("step 1: 4 threads add 25 voxels each and read every one back");
    pthread_t tids[4];
    struct worker_args wargs[4];
    memset(wargs, 0, sizeof wargs);
    memset(&total_tally, 0, sizeof total_tally);
    for (int i = 0; i < 4; i++) {
        wargs[i].id = i;
        wargs[i].voxels = 25;
        pthread_create(&tids[i], NULL, writer, &wargs[i]);
    }
    int mismatches = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(tids[i], NULL);
        mismatches += wargs[i].mismatches;
    }
    char line[256];
    describe(&total_tally, line, sizeof line);
    say("step 1 done: %s; %d voxels missing on read-back", line, mismatches);
    if (failures(&total_tally) || mismatches) ok = 0;

    /* 2. A batch. */
    say("step 2: a batch of 6 requests, fanned out over the pool");
    json_t *requests = json_pack("[{s:s}, {s:s}, {s:s, s:[i]}, {s:s, s:[i,i,i]}, {s:s, s:[i,i,i]},"
                                 " {s:s}]",
                                 "method", "ping", "method", "version", "method", "echo",
                                 "params", 42, "method", "goxel.get_voxel", "params", 0, 0, 0,
                                 "method", "goxel.get_voxel", "params", 24, 3, 0,
                                 "method", "status");
    json_t *results = NULL;
    st = goxelpool_call_batch(client, requests, -1, &results);
    if (st == GOXELPOOL_OK) {
        for (size_t i = 0; i < json_array_size(results); i++) {
            json_t *item = json_array_get(results, i);
            const char *status = json_string_value(json_object_get(item, "status"));
            char *res = json_dumps(json_object_get(item, "result"), JSON_COMPACT | JSON_ENCODE_ANY);
            say("  batch[%zu] %-16s %s %.80s", i,
                json_string_value(json_object_get(json_array_get(requests, i), "method")),
                status ? status : "?", res ? res : "");
            if (!status || strcmp(status, "OK") != 0) ok = 0;
            free(res);
        }
    } else {
        say("batch: %s (%s)", goxelpool_status_name(st), goxelpool_last_error());
        ok = 0;
    }
    json_decref(results);
    json_decref(requests);

    /* 3. Statistics and health. */
    json_t *stats = goxelpool_stats(client);
    print_json("statistics", stats);
    json_decref(stats);
    print_health("health");

    if (with_control) {
        /* 4. A slow daemon. */
        say("step 4: the daemon becomes slow (400 ms per request) for 3 s of traffic");
        control("refd.set_faults", json_pack("{s:i}", "latency_ms", 400));
        struct tally slow = traffic(2, 3.0);
        describe(&slow, line, sizeof line);
        say("slow daemon: %s", line);
        show_health_summary("while slow");
        control("refd.set_faults", json_pack("{s:i}", "latency_ms", 0));
        say("the daemon is fast again: 2 s of traffic");
        struct tally fast = traffic(2, 2.0);
        describe(&fast, line, sizeof line);
        say("fast again: %s", line);
        show_health_summary("after recovery");

        /* 5. A crash and a restart. */
        say("step 5: the daemon crashes (refd.crash); %s restarts it", spawn ? "the library" : "its supervisor");
        control("refd.crash", NULL);
        struct tally crash = traffic(2, 3.0);
        describe(&crash, line, sizeof line);
        say("through the crash: %s", line);
        /* The pool must be back: a plain call succeeds. */
        json_t *result = NULL;
        st = GOXELPOOL_ECONNECT;
        for (int attempt = 0; attempt < 10 && st != GOXELPOOL_OK; attempt++) {
            json_decref(result);
            result = NULL;
            st = goxelpool_call(client, "ping", NULL, 2000, &result, NULL);
            if (st != GOXELPOOL_OK) sleep_ms(300);
        }
        json_decref(result);
        say("after the restart: ping %s", goxelpool_status_name(st));
        if (st != GOXELPOOL_OK) ok = 0;
        show_health_summary("at the end");

        /* 6. Final statistics and health. */
        stats = goxelpool_stats(client);
        print_json("final statistics", stats);
        json_decref(stats);
        print_health("final health");
    } else {
        say("(no --control: skipping the slow-daemon and crash steps, which need goxel-refd)");
    }

    st = goxelpool_client_close(client, 1000);
    say("close: %s", goxelpool_status_name(st));
    goxelpool_client_free(client);
    say("demo %s", ok ? "finished: ok" : "FAILED");
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
