/*
 * boundary.c - bad input at the C boundary of libgoxelpool, table-driven.
 *
 * Every exported function is called with NULL handles, NULL or empty method names, NULL out
 * pointers, scalar params, malformed batches, invalid configurations (every key with every wrong
 * JSON type, negative, out of range, min > max, unknown keys, deeply nested junk), after close,
 * twice, and from inside its own callbacks and listeners. Each case checks the documented status
 * and that a message is available (errbuf for goxelpool_client_new, goxelpool_last_error() for the
 * rest). None may abort the process: a Swift trap inside the library would kill this program.
 *
 *   cc -std=c11 -Wall -Wextra -Werror boundary.c $(pkg-config --cflags --libs goxelpool) -lpthread
 *   ./boundary SOCKET      (a goxel-refd listening on SOCKET; its control socket SOCKET.ctl)
 *
 * Prints PASS/FAIL per case and ends with "N passed, N failed"; exits 1 if anything failed.
 */
#define _POSIX_C_SOURCE 200809L
#include <goxelpool.h>
#include <jansson.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int n_passed, n_failed;
static const char *sock_path;

static void result(int ok, const char *name, const char *fmt, ...) {
    char detail[512] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    if (ok) n_passed++; else n_failed++;
    printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, detail[0] ? ": " : "", detail);
    fflush(stdout);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Checks a status; for failures also that goxelpool_last_error() explains it. */
static void expect(const char *name, goxelpool_status got, goxelpool_status want) {
    const char *err = goxelpool_last_error();
    if (got != want) {
        result(0, name, "got %s, want %s (%s)", goxelpool_status_name(got), goxelpool_status_name(want), err ? err : "(null)");
    } else if (want != GOXELPOOL_OK && want != GOXELPOOL_ERPC && (!err || !err[0])) {
        result(0, name, "%s but goxelpool_last_error() is empty", goxelpool_status_name(got));
    } else {
        result(1, name, "%s%s%s", goxelpool_status_name(got), want != GOXELPOOL_OK ? " - " : "", want != GOXELPOOL_OK ? err : "");
    }
}

/* A status obtained on another thread (a callback): its message was captured there. */
static void expect_from(const char *name, goxelpool_status got, goxelpool_status want, const char *message) {
    if (got != want) result(0, name, "got %s, want %s (%s)", goxelpool_status_name(got), goxelpool_status_name(want), message);
    else if (want != GOXELPOOL_OK && !message[0]) result(0, name, "%s without a message", goxelpool_status_name(got));
    else result(1, name, "%s - %s", goxelpool_status_name(got), message);
}

/* ---- a tiny wait helper ------------------------------------------------------------------- */

typedef struct {
    pthread_mutex_t m;
    pthread_cond_t c;
    int count;         /* callbacks / events seen */
    int after_free;    /* callbacks seen after the client was freed from a callback */
    int freed;
    goxelpool_status status, inner;
    goxelpool_client *client;
    int listener_id, other_id, other_count;
    char message[256];
} box_t;

static void box_init(box_t *b) {
    memset(b, 0, sizeof *b);
    pthread_mutex_init(&b->m, NULL);
    pthread_cond_init(&b->c, NULL);
    b->status = b->inner = (goxelpool_status)-1;
}

static void box_destroy(box_t *b) {
    pthread_mutex_destroy(&b->m);
    pthread_cond_destroy(&b->c);
}

static int box_wait(box_t *b, int count, int ms) {
    double deadline = now_s() + ms / 1000.0;
    pthread_mutex_lock(&b->m);
    while (b->count < count && now_s() < deadline) {
        pthread_mutex_unlock(&b->m);
        sleep_ms(5);
        pthread_mutex_lock(&b->m);
    }
    int got = b->count;
    pthread_mutex_unlock(&b->m);
    return got >= count;
}

/* ---- clients ------------------------------------------------------------------------------ */

static goxelpool_client *make_client(const char *extra_pool) {
    char text[1024];
    snprintf(text, sizeof text,
             "{\"socket_path\": \"%s\", \"timeout_ms\": 3000, \"retry_delay_ms\": 10,"
             " \"pool\": {%s}, \"health\": {\"interval_ms\": 0}}",
             sock_path, extra_pool ? extra_pool : "\"min_connections\": 1, \"max_connections\": 2");
    json_error_t error;
    json_t *config = json_loads(text, 0, &error);
    goxelpool_client *client = NULL;
    char err[256];
    if (!config || goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) {
        fprintf(stderr, "boundary: cannot create a client: %s\n", config ? err : error.text);
        exit(2);
    }
    json_decref(config);
    return client;
}

/* ---- 1. static functions ------------------------------------------------------------------ */

static void test_static(void) {
    int values[] = {-1, GOXELPOOL_ELOST + 1, 100, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "strerror(%d)", values[i]);
        const char *s = goxelpool_strerror((goxelpool_status)values[i]);
        result(s && s[0], name, "%s", s ? s : "NULL");
        snprintf(name, sizeof name, "status_name(%d)", values[i]);
        s = goxelpool_status_name((goxelpool_status)values[i]);
        result(s && strcmp(s, "UNKNOWN") == 0, name, "%s", s ? s : "NULL");
    }
    for (int v = 0; v <= GOXELPOOL_ELOST; v++) {
        const char *n = goxelpool_status_name((goxelpool_status)v), *s = goxelpool_strerror((goxelpool_status)v);
        if (!n || !s || !n[0] || !s[0] || strcmp(n, "UNKNOWN") == 0) {
            result(0, "status names", "status %d has no name or sentence", v);
            return;
        }
    }
    result(1, "status names", "0..%d named", GOXELPOOL_ELOST);
    const char *v = goxelpool_version();
    result(v && strcmp(v, GOXELPOOL_VERSION_STRING) == 0, "version", "%s", v ? v : "NULL");
    const char *e = goxelpool_last_error();
    result(e != NULL, "last_error never NULL", NULL);
}

/* ---- 2. NULL handles ---------------------------------------------------------------------- */

static void cb_noop(goxelpool_status s, const json_t *r, const json_t *e, void *u) { (void)s; (void)r; (void)e; (void)u; }
static void ev_noop(const json_t *e, void *u) { (void)e; (void)u; }

static void test_null_client(void) {
    json_t *params = json_array();
    json_t *sentinel = json_string("sentinel");
    json_t *res = sentinel, *rerr = sentinel;
    expect("call(NULL client)", goxelpool_call(NULL, "ping", params, 100, &res, &rerr), GOXELPOOL_EINVAL);
    result(res == NULL && rerr == NULL, "call(NULL client) clears result and rpc_error", NULL);
    expect("call(NULL client, NULL method, NULL outs)", goxelpool_call(NULL, NULL, NULL, -1, NULL, NULL), GOXELPOOL_EINVAL);
    expect("call_async(NULL client)", goxelpool_call_async(NULL, "ping", NULL, -1, cb_noop, NULL), GOXELPOOL_EINVAL);
    expect("notify(NULL client)", goxelpool_notify(NULL, "ping", NULL), GOXELPOOL_EINVAL);
    json_t *batch = json_array();
    json_t *results = sentinel;
    expect("call_batch(NULL client)", goxelpool_call_batch(NULL, batch, -1, &results), GOXELPOOL_EINVAL);
    result(results == NULL, "call_batch(NULL client) clears results", NULL);
    result(goxelpool_stats(NULL) == NULL, "stats(NULL) is NULL", NULL);
    result(goxelpool_health(NULL) == NULL, "health(NULL) is NULL", NULL);
    char *text = (char *)"sentinel";
    expect("metrics_text(NULL client)", goxelpool_metrics_text(NULL, &text), GOXELPOOL_EINVAL);
    result(text == NULL, "metrics_text(NULL client) clears out", NULL);
    expect("metrics_text(NULL client, NULL out)", goxelpool_metrics_text(NULL, NULL), GOXELPOOL_EINVAL);
    goxelpool_free(NULL);
    result(1, "goxelpool_free(NULL) is a no-op", NULL);
    int id = 12345;
    expect("add_listener(NULL client)", goxelpool_add_listener(NULL, GOXELPOOL_EVENT_ALL, ev_noop, NULL, &id), GOXELPOOL_EINVAL);
    expect("remove_listener(NULL client)", goxelpool_remove_listener(NULL, 1), GOXELPOOL_EINVAL);
    expect("client_close(NULL)", goxelpool_client_close(NULL, 0), GOXELPOOL_EINVAL);
    result(goxelpool_event_fd(NULL) == -1 && goxelpool_last_error()[0], "event_fd(NULL) is -1 with a message", "%s", goxelpool_last_error());
    int ran = 99;
    expect("dispatch(NULL)", goxelpool_dispatch(NULL, 0, &ran), GOXELPOOL_EINVAL);
    result(ran == 0, "dispatch(NULL) sets ran to 0", "%d", ran);
    expect("dispatch(NULL, ran NULL)", goxelpool_dispatch(NULL, -1, NULL), GOXELPOOL_EINVAL);
    goxelpool_client_free(NULL);
    result(1, "client_free(NULL) is a no-op", NULL);
    json_decref(params);
    json_decref(batch);
    json_decref(sentinel);
}

/* ---- 3. configurations -------------------------------------------------------------------- */

/* goxelpool_client_new must fail with EINVAL, set *out to NULL and name `key` in errbuf. */
static void expect_bad_config(const char *name, const json_t *config, const char *key) {
    goxelpool_client *client = (goxelpool_client *)&n_passed; /* garbage that must be overwritten */
    char err[256];
    memset(err, 'x', sizeof err);
    goxelpool_status st = goxelpool_client_new(config, &client, err, sizeof err);
    int terminated = memchr(err, 0, sizeof err) != NULL;
    if (st != GOXELPOOL_EINVAL) {
        result(0, name, "got %s, want EINVAL", goxelpool_status_name(st));
        if (st == GOXELPOOL_OK) goxelpool_client_free(client);
    } else if (client != NULL) {
        result(0, name, "EINVAL but *out not set to NULL");
    } else if (!terminated || !err[0]) {
        result(0, name, "errbuf empty or not terminated");
    } else if (key && !strstr(err, key)) {
        result(0, name, "message does not name %s: %s", key, err);
    } else if (strcmp(err, goxelpool_last_error()) != 0) {
        result(0, name, "errbuf \"%s\" != last_error \"%s\"", err, goxelpool_last_error());
    } else {
        result(1, name, "%s", err);
    }
}

static void expect_bad_config_text(const char *name, const char *text, const char *key) {
    json_error_t error;
    json_t *config = json_loads(text, JSON_DECODE_ANY, &error);
    if (!config) { result(0, name, "test bug: cannot parse %s: %s", text, error.text); return; }
    expect_bad_config(name, config, key);
    json_decref(config);
}

static void expect_good_config_text(const char *name, const char *text) {
    json_error_t error;
    json_t *config = json_loads(text, 0, &error);
    if (!config) { result(0, name, "test bug: cannot parse %s: %s", text, error.text); return; }
    goxelpool_client *client = NULL;
    char err[256] = "";
    goxelpool_status st = goxelpool_client_new(config, &client, err, sizeof err);
    json_decref(config);
    result(st == GOXELPOOL_OK && client != NULL, name, "%s %s", goxelpool_status_name(st), err);
    goxelpool_client_free(client);
}

/* kind: i integer, n number, b boolean, s string, a array of strings, e enum string, o object of strings */
typedef struct { const char *section, *key; char kind; const char *bad_values[5]; } config_key;

static const config_key keys[] = {
    {NULL, "socket_path", 's', {"\"\""}},
    {NULL, "pooling", 'b', {NULL}},
    {NULL, "timeout_ms", 'i', {"0", "-1", "2147483648", "-9223372036854775807"}},
    {NULL, "retry_attempts", 'i', {"-1", "101", "9223372036854775807"}},
    {NULL, "retry_delay_ms", 'i', {"-1", "2147483648"}},
    {NULL, "max_message_size", 'i', {"-1", "0", "1023", "1073741825"}},
    {NULL, "verify_peer", 'b', {NULL}},
    {NULL, "idempotent_methods", 'a', {"[\"\"]", "[1]", "[\"ok\", null]", "[[\"nested\"]]"}},
    {NULL, "log_level", 'e', {"\"verbose\"", "\"WARN\"", "\"\""}},
    {NULL, "event_queue_size", 'i', {"0", "-1", "1000001"}},
    {NULL, "callbacks", 'e', {"\"threads\"", "\"\"", "\"DISPATCH\""}},
    {"pool", "min_connections", 'i', {"-1", "1025"}},
    {"pool", "max_connections", 'i', {"0", "-1", "1025"}},
    {"pool", "acquire_timeout_ms", 'i', {"0", "-1", "2147483648"}},
    {"pool", "idle_timeout_ms", 'i', {"-1", "2147483648"}},
    {"pool", "max_lifetime_ms", 'i', {"-1", "2147483648"}},
    {"pool", "max_requests_per_connection", 'i', {"-1", "2147483648"}},
    {"pool", "max_waiters", 'i', {"-1", "1000001"}},
    {"pool", "reuse_while_waiting", 'i', {"-1", "1000001"}},
    {"pool", "reuse_grace_us", 'i', {"0", "-1", "1000001"}},
    {"pool", "reuse_window_us", 'i', {"0", "-1", "60000001"}},
    {"pool", "load_balancing", 'e', {"\"fastest\"", "\"\"", "\"LEAST_USED\""}},
    {"pool", "connect_timeout_ms", 'i', {"0", "-1"}},
    {"pool", "fast_path", 'b', {NULL}},
    {"pool", "validate_on_connect", 'b', {NULL}},
    {"reconnect", "initial_backoff_ms", 'i', {"0", "-1"}},
    {"reconnect", "multiplier", 'n', {"0.5", "-1", "101", "1e300"}},
    {"reconnect", "jitter", 'n', {"-0.1", "1.5", "-1"}},
    {"reconnect", "max_backoff_ms", 'i', {"0", "-1", "2147483648"}},
    {"health", "interval_ms", 'i', {"-1", "1", "9", "2147483648"}},
    {"health", "timeout_ms", 'i', {"0", "-1"}},
    {"health", "method", 's', {"\"\""}},
    {"health", "failure_threshold", 'i', {"0", "-1", "1001"}},
    {"health", "success_threshold", 'i', {"0", "-1", "1001"}},
    {"health", "healthy_latency_ms", 'i', {"-1", "2147483648"}},
    {"health", "degraded_latency_ms", 'i', {"-1", "2147483648"}},
    {"health", "trend_analysis", 'b', {NULL}},
    {"health", "trend_sample_size", 'i', {"0", "1", "-1", "10001"}},
    {"health", "latency_spike_factor", 'n', {"0.5", "-3", "1000.5"}},
    {"circuit_breaker", "enabled", 'b', {NULL}},
    {"circuit_breaker", "consecutive_connect_failures", 'i', {"0", "-1", "1001"}},
    {"circuit_breaker", "failure_rate", 'n', {"0", "-0.5", "1.5"}},
    {"circuit_breaker", "window_size", 'i', {"0", "-1", "10001"}},
    {"circuit_breaker", "minimum_calls", 'i', {"0", "-1"}},
    {"circuit_breaker", "cooldown_ms", 'i', {"0", "-1", "2147483648"}},
    {"spawn", "command", 'a', {"[]", "[\"\"]", "[1]", "[\"goxel-refd\"]"}},
    {"spawn", "instances", 'i', {"0", "-1", "65"}},
    {"spawn", "env", 'o', {"{\"A\": 1}", "{\"\": \"x\"}", "{\"A=B\": \"x\"}", "{\"A\": null}"}},
    {"spawn", "max_connections_per_process", 'i', {"-1", "7", "1000001"}},
    {"spawn", "max_age_ms", 'i', {"-1", "999", "2147483648"}},
    {"spawn", "start_timeout_ms", 'i', {"0", "-1"}},
    {"spawn", "stop_grace_ms", 'i', {"-1", "2147483648"}},
    {"spawn", "drain_timeout_ms", 'i', {"-1"}},
    {"spawn", "output", 'e', {"\"stderr\"", "\"\"", "\"LOG\""}},
    {NULL, "dns_refresh_ms", 'i', {"-1", "1", "99", "2147483648"}},
    {"tls", "ca_file", 's', {"\"\""}},
    {"tls", "cert_file", 's', {"\"\""}},
    {"tls", "key_file", 's', {"\"\"", "\"/key/without/cert.pem\""}},
    {"tls", "server_name", 's', {"\"\""}},
    {"tls", "verify", 'b', {NULL}},
    {"tls", "min_version", 'e', {"\"1.1\"", "\"TLSv1.3\"", "\"\""}},
};

static int type_fits(char kind, const char *type) {
    switch (kind) {
    case 'i': return strcmp(type, "integer") == 0;
    case 'n': return strcmp(type, "integer") == 0 || strcmp(type, "real") == 0;
    case 'b': return strcmp(type, "boolean") == 0;
    case 's': case 'e': return strcmp(type, "string") == 0;
    case 'a': return strcmp(type, "array") == 0;
    case 'o': return strcmp(type, "object") == 0;
    }
    return 0;
}

static int config_cases;

static void bad_key_value(const config_key *k, const char *value, const char *what) {
    char text[512], full[128], name[256];
    if (k->section) {
        snprintf(text, sizeof text, "{\"%s\": {\"%s\": %s}}", k->section, k->key, value);
        snprintf(full, sizeof full, "%s.%s", k->section, k->key);
    } else {
        snprintf(text, sizeof text, "{\"%s\": %s}", k->key, value);
        snprintf(full, sizeof full, "%s", k->key);
    }
    snprintf(name, sizeof name, "config %s = %s (%s)", full, value, what);
    expect_bad_config_text(name, text, full);
    config_cases++;
}

static json_t *nested(int depth, int objects) {
    json_t *v = json_string("junk");
    for (int i = 0; i < depth; i++) {
        json_t *outer = objects ? json_object() : json_array();
        if (objects) json_object_set_new(outer, "k", v); else json_array_append_new(outer, v);
        v = outer;
    }
    return v;
}

static void test_config(void) {
    static const struct { const char *type, *literal; } wrong[] = {
        {"string", "\"12\""}, {"integer", "12"}, {"real", "1.5"}, {"boolean", "true"},
        {"null", "null"}, {"array", "[1]"}, {"object", "{\"a\": 1}"},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        for (size_t w = 0; w < sizeof wrong / sizeof wrong[0]; w++) {
            if (type_fits(keys[i].kind, wrong[w].type)) continue;
            bad_key_value(&keys[i], wrong[w].literal, wrong[w].type);
        }
        for (size_t v = 0; v < 5 && keys[i].bad_values[v]; v++) bad_key_value(&keys[i], keys[i].bad_values[v], "range");
    }

    /* The document itself. */
    expect_bad_config_text("config is an array", "[]", "config");
    expect_bad_config_text("config is a string", "\"socket_path\"", "config");
    expect_bad_config_text("config is an integer", "1", "config");
    expect_bad_config_text("config is true", "true", "config");
    expect_bad_config_text("config is JSON null (not a NULL pointer)", "null", "config");
    /* Sections. */
    const char *sections[] = {"pool", "reconnect", "health", "circuit_breaker", "spawn", "tls"};
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
        char text[128], name[128];
        const char *junk[] = {"[]", "1", "null", "\"x\"", "true"};
        for (size_t j = 0; j < 5; j++) {
            snprintf(text, sizeof text, "{\"%s\": %s}", sections[i], junk[j]);
            snprintf(name, sizeof name, "config section %s = %s", sections[i], junk[j]);
            expect_bad_config_text(name, text, sections[i]);
        }
        snprintf(text, sizeof text, "{\"%s\": {\"bogus\": 1}}", sections[i]);
        snprintf(name, sizeof name, "config unknown key %s.bogus", sections[i]);
        char key[64];
        snprintf(key, sizeof key, "%s.bogus", sections[i]);
        expect_bad_config_text(name, text, key);
    }
    expect_bad_config_text("config spawn and socket_path", "{\"socket_path\": \"/tmp/x.sock\", \"spawn\": {\"command\": [\"d\", \"{socket}\"]}}", "spawn");
    expect_bad_config_text("config spawn and endpoints", "{\"endpoints\": [\"unix:/tmp/x.sock\"], \"spawn\": {\"command\": [\"d\", \"{socket}\"]}}", "spawn");
    expect_bad_config_text("config spawn without command", "{\"spawn\": {\"instances\": 2}}", "spawn.command");
    expect_bad_config_text("config unknown key bogus", "{\"bogus\": 1}", "bogus");
    expect_bad_config_text("config unknown key Socket_Path (case)", "{\"Socket_Path\": \"/tmp/x\"}", "Socket_Path");
    expect_bad_config_text("config unknown key \"\"", "{\"\": 1}", NULL);
    expect_bad_config_text("config unknown camelCase maxConnections", "{\"pool\": {\"maxConnections\": 3}}", "pool.maxConnections");
    expect_bad_config_text("config seed-style loadBalancing true", "{\"pool\": {\"load_balancing\": true}}", "pool.load_balancing");
    /* Cross-field rules. */
    expect_bad_config_text("config min_connections > max_connections",
                           "{\"pool\": {\"min_connections\": 5, \"max_connections\": 2}}", "pool.min_connections");
    expect_bad_config_text("config min_connections > default max", "{\"pool\": {\"min_connections\": 11}}", "pool.min_connections");
    expect_bad_config_text("config initial_backoff_ms > max_backoff_ms",
                           "{\"reconnect\": {\"initial_backoff_ms\": 5000, \"max_backoff_ms\": 100}}", "reconnect.max_backoff_ms");
    expect_bad_config_text("config healthy_latency_ms > degraded_latency_ms",
                           "{\"health\": {\"healthy_latency_ms\": 500, \"degraded_latency_ms\": 100}}", "health.degraded_latency_ms");
    expect_bad_config_text("config minimum_calls > window_size",
                           "{\"circuit_breaker\": {\"minimum_calls\": 50, \"window_size\": 10}}", "circuit_breaker.minimum_calls");
    /* Socket paths. */
    char path[300], text[400];
    memset(path, 'a', sizeof path);
    path[0] = '/';
    path[108] = 0;
    snprintf(text, sizeof text, "{\"socket_path\": \"%s\"}", path);
    expect_bad_config_text("config socket_path of 108 bytes (sun_path holds 107 + NUL)", text, "socket_path");
    path[108] = 'a';
    path[250] = 0;
    snprintf(text, sizeof text, "{\"socket_path\": \"%s\"}", path);
    expect_bad_config_text("config socket_path of 250 bytes", text, "socket_path");
    /* 107 bytes of a multi-byte character path: 36 x 3-byte characters = 108 bytes. */
    char utf8[200] = "/";
    for (int i = 0; i < 36; i++) strcat(utf8, "\xe2\x82\xac");
    snprintf(text, sizeof text, "{\"socket_path\": \"%s\"}", utf8);
    expect_bad_config_text("config socket_path of 109 UTF-8 bytes (36 euro signs)", text, "socket_path");
    {
        json_t *config = json_object();
        json_object_set_new(config, "socket_path", json_stringn("/tmp/a\0b", 8));
        expect_bad_config("config socket_path with an embedded NUL", config, "socket_path");
        json_decref(config);
    }
    /* Not tested: a socket_path made with json_stringn_nocheck from invalid UTF-8 (a breach of
     * jansson's contract by the caller) is decoded with U+FFFD replacements, not rejected. */
    {
        json_t *config = json_object();
        json_object_set_new(config, "idempotent_methods", json_pack("[s, s#]", "ok", "a\0b", (int)3));
        expect_bad_config("config idempotent_methods[1] with an embedded NUL", config, "idempotent_methods[1]");
        json_decref(config);
    }
    /* Integers jansson can hold but Int32 cannot. */
    {
        json_t *config = json_pack("{s:I}", "timeout_ms", (json_int_t)LLONG_MIN);
        expect_bad_config("config timeout_ms = LLONG_MIN", config, "timeout_ms");
        json_decref(config);
        config = json_pack("{s:{s:I}}", "pool", "max_waiters", (json_int_t)LLONG_MAX);
        expect_bad_config("config pool.max_waiters = LLONG_MAX", config, "pool.max_waiters");
        json_decref(config);
    }
    /* Deeply nested junk. */
    const int depths[] = {65, 200, 5000, 100000};
    for (size_t i = 0; i < sizeof depths / sizeof depths[0]; i++) {
        for (int objects = 0; objects <= 1; objects++) {
            char name[128];
            json_t *config = json_object();
            json_object_set_new(config, "bogus", nested(depths[i], objects));
            snprintf(name, sizeof name, "config bogus = %d nested %s", depths[i], objects ? "objects" : "arrays");
            expect_bad_config(name, config, "config");
            json_decref(config);
        }
    }
    {
        json_t *config = json_pack("{s:{s:o}}", "pool", "max_connections", nested(1000, 0));
        expect_bad_config("config pool.max_connections = 1000 nested arrays", config, "config");
        json_decref(config);
        config = json_pack("{s:o}", "idempotent_methods", nested(30, 0));
        expect_bad_config("config idempotent_methods = 30 nested arrays", config, "idempotent_methods[0]");
        json_decref(config);
        config = json_pack("{s:o}", "socket_path", nested(10, 1));
        expect_bad_config("config socket_path = 10 nested objects", config, "socket_path");
        json_decref(config);
    }
    /* errbuf handling. */
    {
        json_t *config = json_pack("{s:s}", "timeout_ms", "soon");
        goxelpool_client *client = NULL;
        expect("client_new(bad config, errbuf NULL)", goxelpool_client_new(config, &client, NULL, 0), GOXELPOOL_EINVAL);
        expect("client_new(bad config, errbuf NULL, len 100)", goxelpool_client_new(config, &client, NULL, 100), GOXELPOOL_EINVAL);
        char err[16];
        memset(err, 'x', sizeof err);
        goxelpool_client_new(config, &client, err, 0);
        result(err[0] == 'x', "client_new(errbuf_len 0) does not write errbuf", NULL);
        goxelpool_client_new(config, &client, err, 1);
        result(err[0] == 0 && err[1] == 'x', "client_new(errbuf_len 1) writes only the NUL", NULL);
        memset(err, 'x', sizeof err);
        goxelpool_client_new(config, &client, err, 8);
        result(strlen(err) == 7 && err[8] == 'x', "client_new(errbuf_len 8) truncates to 7 bytes", "\"%s\"", err);
        char ok_err[32];
        memset(ok_err, 'x', sizeof ok_err);
        expect("client_new(out NULL)", goxelpool_client_new(NULL, NULL, ok_err, sizeof ok_err), GOXELPOOL_EINVAL);
        result(ok_err[0] != 'x' && memchr(ok_err, 0, sizeof ok_err) && ok_err[0], "client_new(out NULL) fills errbuf", "%s", ok_err);
        json_decref(config);
    }
    /* A few valid edge configurations (no daemon needed: min_connections 0). */
    expect_good_config_text("config valid: empty object", "{\"socket_path\": \"/nonexistent/x.sock\", \"pool\": {\"min_connections\": 0}}");
    memset(path, 'b', sizeof path);
    path[0] = '/';
    path[107] = 0;
    snprintf(text, sizeof text, "{\"socket_path\": \"%s\", \"pool\": {\"min_connections\": 0}}", path);
    expect_good_config_text("config valid: socket_path of exactly 107 bytes", text);
    expect_good_config_text("config valid: integers for real keys, interval 0, min 0 = max",
                            "{\"socket_path\": \"/nonexistent/x.sock\", \"reconnect\": {\"multiplier\": 2, \"jitter\": 0},"
                            " \"health\": {\"interval_ms\": 0, \"latency_spike_factor\": 1},"
                            " \"pool\": {\"min_connections\": 0, \"max_connections\": 1, \"max_waiters\": 0}}");
    printf("# %d per-key configuration cases (wrong type and out of range)\n", config_cases);
}

static void cb_count(goxelpool_status s, const json_t *r, const json_t *e, void *u);

/* ---- 4. calls with bad arguments on a live client ------------------------------------------ */

static void test_bad_calls(void) {
    goxelpool_client *client = make_client(NULL);
    json_t *sentinel = json_string("sentinel");
    json_t *res = sentinel, *rerr = sentinel;

    expect("call ping (sanity)", goxelpool_call(client, "ping", NULL, -1, &res, &rerr), GOXELPOOL_OK);
    json_decref(res);
    res = rerr = sentinel;
    expect("call(method NULL)", goxelpool_call(client, NULL, NULL, -1, &res, &rerr), GOXELPOOL_EINVAL);
    result(res == NULL && rerr == NULL, "call(method NULL) clears result and rpc_error", NULL);
    expect("call(method \"\")", goxelpool_call(client, "", NULL, -1, NULL, NULL), GOXELPOOL_EINVAL);
    expect("call(method not UTF-8)", goxelpool_call(client, "goxel.\xff\xfe", NULL, -1, NULL, NULL), GOXELPOOL_EINVAL);
    expect("call_async(method NULL)", goxelpool_call_async(client, NULL, NULL, -1, cb_noop, NULL), GOXELPOOL_EINVAL);
    expect("call_async(method \"\")", goxelpool_call_async(client, "", NULL, -1, cb_noop, NULL), GOXELPOOL_EINVAL);
    expect("call_async(cb NULL)", goxelpool_call_async(client, "ping", NULL, -1, NULL, NULL), GOXELPOOL_EINVAL);
    expect("notify(method NULL)", goxelpool_notify(client, NULL, NULL), GOXELPOOL_EINVAL);
    expect("notify(method \"\")", goxelpool_notify(client, "", NULL), GOXELPOOL_EINVAL);

    json_t *scalars[] = {json_integer(1), json_string("x"), json_true(), json_null(), json_real(2.5)};
    const char *scalar_names[] = {"integer", "string", "true", "JSON null", "real"};
    for (int i = 0; i < 5; i++) {
        char name[96];
        snprintf(name, sizeof name, "call(params %s)", scalar_names[i]);
        expect(name, goxelpool_call(client, "echo", scalars[i], -1, NULL, NULL), GOXELPOOL_EINVAL);
        snprintf(name, sizeof name, "call_async(params %s)", scalar_names[i]);
        expect(name, goxelpool_call_async(client, "echo", scalars[i], -1, cb_noop, NULL), GOXELPOOL_EINVAL);
        snprintf(name, sizeof name, "notify(params %s)", scalar_names[i]);
        expect(name, goxelpool_notify(client, "echo", scalars[i]), GOXELPOOL_EINVAL);
        json_decref(scalars[i]);
    }
    /* NULL out pointers: results dropped without a leak (ASan/valgrind check that). */
    json_t *params = json_pack("[i,i,i]", 1, 2, 3);
    expect("call(result NULL, rpc_error NULL) OK", goxelpool_call(client, "echo", params, -1, NULL, NULL), GOXELPOOL_OK);
    expect("call(unknown method, rpc_error NULL) ERPC", goxelpool_call(client, "no.such.method", params, -1, NULL, NULL), GOXELPOOL_ERPC);
    res = rerr = sentinel;
    expect("call(unknown method) ERPC", goxelpool_call(client, "no.such.method", params, -1, &res, &rerr), GOXELPOOL_ERPC);
    result(res == NULL && json_is_object(rerr) && json_is_integer(json_object_get(rerr, "code")), "ERPC sets rpc_error only", NULL);
    if (rerr != sentinel) json_decref(rerr);
    res = rerr = sentinel;
    expect("call(timeout_ms 0)", goxelpool_call(client, "ping", NULL, 0, &res, &rerr), GOXELPOOL_ETIMEDOUT);
    result(res == NULL && rerr == NULL, "failed call clears result and rpc_error", NULL);
    expect("call(timeout_ms INT_MAX)", goxelpool_call(client, "ping", NULL, INT_MAX, NULL, NULL), GOXELPOOL_OK);
    expect("call(timeout_ms INT_MIN = default)", goxelpool_call(client, "ping", NULL, INT_MIN, NULL, NULL), GOXELPOOL_OK);
    expect("notify ping", goxelpool_notify(client, "ping", NULL), GOXELPOOL_OK);
    /* Too big for the daemon: refused before anything is written, connection kept. */
    char *big = malloc(70000);
    memset(big, 'z', 69999);
    big[69999] = 0;
    json_t *bigp = json_pack("[s]", big);
    expect("call(70 kB params)", goxelpool_call(client, "echo", bigp, -1, NULL, NULL), GOXELPOOL_ETOOBIG);
    expect("notify(70 kB params)", goxelpool_notify(client, "echo", bigp), GOXELPOOL_ETOOBIG);
    json_t *big_method_p = NULL;
    expect("call(70 kB method name)", goxelpool_call(client, big, NULL, -1, &big_method_p, NULL), GOXELPOOL_ETOOBIG);
    json_decref(bigp);
    free(big);
    /* Deeply nested params: jansson's dump recursed off the end of a 512 KiB library thread
     * stack at ~1700 levels (regression: params deeper than 1000 levels are EINVAL). */
    {
        const int depths[] = {1001, 3000, 100000};
        for (size_t i = 0; i < sizeof depths / sizeof depths[0]; i++) {
            char name[128];
            json_t *deep = nested(depths[i], i == 1);
            snprintf(name, sizeof name, "call(params nested %d deep)", depths[i]);
            expect(name, goxelpool_call(client, "echo", deep, 300, NULL, NULL), GOXELPOOL_EINVAL);
            snprintf(name, sizeof name, "call_async(params nested %d deep)", depths[i]);
            expect(name, goxelpool_call_async(client, "echo", deep, 300, cb_noop, NULL), GOXELPOOL_EINVAL);
            snprintf(name, sizeof name, "notify(params nested %d deep)", depths[i]);
            expect(name, goxelpool_notify(client, "echo", deep), GOXELPOOL_EINVAL);
            json_t *requests = json_pack("[{s:s},{s:s,s:O}]", "method", "ping", "method", "echo", "params", deep);
            json_t *results = NULL;
            snprintf(name, sizeof name, "call_batch(params nested %d deep)", depths[i]);
            expect(name, goxelpool_call_batch(client, requests, 300, &results), GOXELPOOL_EINVAL);
            json_decref(requests);
            json_decref(deep);
        }
        /* 1000 levels (the limit) still go out, also from a library thread. */
        box_t b;
        box_init(&b);
        json_t *deep = nested(999, 0);
        json_t *wrapped = json_pack("[o]", deep);
        goxelpool_status st = goxelpool_call_async(client, "echo", wrapped, 2000, cb_count, &b);
        box_wait(&b, 1, 5000);
        result(st == GOXELPOOL_OK && b.count == 1, "call_async(params nested 1000 deep) completes", "%s, callback %s",
               goxelpool_status_name(st), goxelpool_status_name(b.status));
        json_decref(wrapped);
        box_destroy(&b);
        /* A DAG: each level holds the level below twice (2^40 values when dumped). */
        json_t *dag = json_string("x");
        for (int i = 0; i < 40; i++) { json_t *level = json_pack("[O,O]", dag, dag); json_decref(dag); dag = level; }
        expect("call(params: a DAG of 2^40 values)", goxelpool_call(client, "echo", dag, 300, NULL, NULL), GOXELPOOL_ETOOBIG);
        expect("call_async(params: a DAG of 2^40 values)", goxelpool_call_async(client, "echo", dag, 300, cb_noop, NULL), GOXELPOOL_ETOOBIG);
        json_decref(dag);
        json_t *wide = json_array();
        for (int i = 0; i < 70000; i++) json_array_append_new(wide, json_integer(0));
        expect("call(params: 70000 integers)", goxelpool_call(client, "echo", wide, 300, NULL, NULL), GOXELPOOL_ETOOBIG);
        json_decref(wide);
    }
    /* Batches. */
    json_t *results = sentinel;
    json_t *empty = json_array();
    expect("call_batch(results NULL)", goxelpool_call_batch(client, empty, -1, NULL), GOXELPOOL_EINVAL);
    json_decref(empty);
    static const struct { const char *name, *requests; } bad_batches[] = {
        {"call_batch(requests is an object)", "{\"method\": \"ping\"}"},
        {"call_batch(requests is a string)", "\"ping\""},
        {"call_batch(requests is JSON null)", "null"},
        {"call_batch(element is a string)", "[{\"method\": \"ping\"}, \"ping\"]"},
        {"call_batch(element is an array)", "[[\"ping\"]]"},
        {"call_batch(element lacks method)", "[{\"params\": []}]"},
        {"call_batch(method is an integer)", "[{\"method\": 1}]"},
        {"call_batch(method is \"\")", "[{\"method\": \"\"}]"},
        {"call_batch(method is null)", "[{\"method\": null}]"},
        {"call_batch(params is an integer)", "[{\"method\": \"echo\", \"params\": 1}]"},
        {"call_batch(params is a string)", "[{\"method\": \"echo\", \"params\": \"x\"}]"},
        {"call_batch(unknown key id)", "[{\"method\": \"echo\", \"id\": 1}]"},
        {"call_batch(bad element after 100 good)", NULL},
    };
    for (size_t i = 0; i < sizeof bad_batches / sizeof bad_batches[0]; i++) {
        json_t *requests;
        if (bad_batches[i].requests) {
            json_error_t error;
            requests = json_loads(bad_batches[i].requests, JSON_DECODE_ANY, &error);
        } else {
            requests = json_array();
            for (int j = 0; j < 100; j++) json_array_append_new(requests, json_pack("{s:s}", "method", "ping"));
            json_array_append_new(requests, json_pack("{s:i}", "method", 5));
        }
        results = sentinel;
        expect(bad_batches[i].name, goxelpool_call_batch(client, requests, -1, &results), GOXELPOOL_EINVAL);
        if (results != NULL) result(0, bad_batches[i].name, "results not cleared");
        json_decref(requests);
    }
    {
        json_t *requests = json_array();
        json_array_append_new(requests, json_pack("{s:s#}", "method", "pi\0ng", (int)5));
        expect("call_batch(method with embedded NUL)", goxelpool_call_batch(client, requests, -1, &results), GOXELPOOL_EINVAL);
        json_decref(requests);
        expect("call_batch(requests NULL)", goxelpool_call_batch(client, NULL, -1, &results), GOXELPOOL_EINVAL);
        requests = json_array();
        results = sentinel;
        expect("call_batch([])", goxelpool_call_batch(client, requests, -1, &results), GOXELPOOL_OK);
        result(json_is_array(results) && json_array_size(results) == 0, "call_batch([]) gives []", NULL);
        if (results != sentinel) json_decref(results);
        json_array_append_new(requests, json_pack("{s:s, s:n}", "method", "ping", "params"));
        json_array_append_new(requests, json_pack("{s:s}", "method", "no.such"));
        results = NULL;
        expect("call_batch(params null, unknown method)", goxelpool_call_batch(client, requests, -1, &results), GOXELPOOL_OK);
        const char *s0 = json_string_value(json_object_get(json_array_get(results, 0), "status"));
        const char *s1 = json_string_value(json_object_get(json_array_get(results, 1), "status"));
        result(s0 && s1 && strcmp(s0, "OK") == 0 && strcmp(s1, "ERPC") == 0, "call_batch outcomes OK, ERPC", "%s, %s",
               s0 ? s0 : "?", s1 ? s1 : "?");
        json_decref(results);
        results = NULL;
        expect("call_batch(timeout_ms 0)", goxelpool_call_batch(client, requests, 0, &results), GOXELPOOL_OK);
        json_decref(results);
        json_decref(requests);
    }
    /* Listeners. */
    int id = -7;
    expect("add_listener(cb NULL)", goxelpool_add_listener(client, GOXELPOOL_EVENT_ALL, NULL, NULL, &id), GOXELPOOL_EINVAL);
    expect("add_listener(kinds 0)", goxelpool_add_listener(client, 0, ev_noop, NULL, &id), GOXELPOOL_EINVAL);
    expect("add_listener(kinds 0x100)", goxelpool_add_listener(client, 0x100, ev_noop, NULL, &id), GOXELPOOL_EINVAL);
    expect("add_listener(kinds ~0u)", goxelpool_add_listener(client, ~0u, ev_noop, NULL, &id), GOXELPOOL_EINVAL);
    expect("add_listener(listener_id NULL)", goxelpool_add_listener(client, GOXELPOOL_EVENT_ALERT, ev_noop, NULL, NULL), GOXELPOOL_OK);
    expect("add_listener", goxelpool_add_listener(client, GOXELPOOL_EVENT_ALL, ev_noop, NULL, &id), GOXELPOOL_OK);
    expect("remove_listener(id)", goxelpool_remove_listener(client, id), GOXELPOOL_OK);
    expect("remove_listener(same id again)", goxelpool_remove_listener(client, id), GOXELPOOL_EINVAL);
    expect("remove_listener(0)", goxelpool_remove_listener(client, 0), GOXELPOOL_EINVAL);
    expect("remove_listener(-1)", goxelpool_remove_listener(client, -1), GOXELPOOL_EINVAL);
    expect("remove_listener(INT_MAX)", goxelpool_remove_listener(client, INT_MAX), GOXELPOOL_EINVAL);
    expect("remove_listener(INT_MIN)", goxelpool_remove_listener(client, INT_MIN), GOXELPOOL_EINVAL);

    json_decref(params);
    json_decref(sentinel);
    goxelpool_client_free(client);
}

/* ---- 5b. sessions: NULL handles, bad options, use after the client closed ------------------- */

static void test_sessions(void) {
    goxelpool_session *session = (goxelpool_session *)0x1;
    json_t *res = NULL, *rerr = NULL;
    expect("session_open(NULL client)", goxelpool_session_open(NULL, NULL, 100, &session), GOXELPOOL_EINVAL);
    result(session == NULL, "session_open(NULL client) clears out", NULL);
    expect("session_call(NULL session)", goxelpool_session_call(NULL, "ping", NULL, 100, &res, &rerr), GOXELPOOL_EINVAL);
    result(res == NULL && rerr == NULL, "session_call(NULL) clears result and rpc_error", NULL);
    result(goxelpool_session_info(NULL) == NULL, "session_info(NULL) is NULL", NULL);
    expect("session_close(NULL)", goxelpool_session_close(NULL), GOXELPOOL_OK);

    goxelpool_client *client = make_client(NULL);
    expect("session_open(out NULL)", goxelpool_session_open(client, NULL, 100, NULL), GOXELPOOL_EINVAL);
    static const struct { const char *name, *options, *key; } bad[] = {
        {"session options: an array", "[]", "options"},
        {"session options: JSON null", "null", "options"},
        {"session options: unknown key", "{\"colour\": 1}", "colour"},
        {"session options: key not a string", "{\"key\": 7}", "key"},
        {"session options: empty key", "{\"key\": \"\"}", "key"},
        {"session options: exclusive not a boolean", "{\"exclusive\": \"yes\"}", "exclusive"},
        {"session options: durable not a boolean", "{\"durable\": 1}", "durable"},
        {"session options: durable without checkpoint_dir", "{\"durable\": true}", "checkpoint_dir"},
        {"session options: durable and shared", "{\"durable\": true, \"exclusive\": false, \"checkpoint_dir\": \"/tmp\"}", "exclusive"},
        {"session options: relative checkpoint_dir", "{\"checkpoint_dir\": \"cp\"}", "checkpoint_dir"},
        {"session options: checkpoint_every 0", "{\"checkpoint_every\": 0}", "checkpoint_every"},
        {"session options: checkpoint_every real", "{\"checkpoint_every\": 1.5}", "checkpoint_every"},
        {"session options: checkpoint_interval_ms -1", "{\"checkpoint_interval_ms\": -1}", "checkpoint_interval_ms"},
        {"session options: max_journal_entries 0", "{\"max_journal_entries\": 0}", "max_journal_entries"},
        {"session options: restore_timeout_ms huge", "{\"restore_timeout_ms\": 99999999999}", "restore_timeout_ms"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *options = json_loads(bad[i].options, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        session = (goxelpool_session *)0x1;
        goxelpool_status st = goxelpool_session_open(client, options, 200, &session);
        const char *message = goxelpool_last_error();
        result(st == GOXELPOOL_EINVAL && session == NULL && strstr(message, bad[i].key) != NULL, bad[i].name,
               "%s: %s", goxelpool_status_name(st), message);
        if (st == GOXELPOOL_OK) goxelpool_session_close(session);
        json_decref(options);
    }
    /* A good session: bad calls on it, then the client closes under it. */
    expect("session_open", goxelpool_session_open(client, NULL, 2000, &session), GOXELPOOL_OK);
    expect("session_call(method NULL)", goxelpool_session_call(session, NULL, NULL, -1, NULL, NULL), GOXELPOOL_EINVAL);
    expect("session_call(method \"\")", goxelpool_session_call(session, "", NULL, -1, NULL, NULL), GOXELPOOL_EINVAL);
    json_t *scalar = json_integer(1);
    expect("session_call(scalar params)", goxelpool_session_call(session, "echo", scalar, -1, NULL, NULL), GOXELPOOL_EINVAL);
    json_decref(scalar);
    expect("session_call(unknown method) ERPC", goxelpool_session_call(session, "no.such", NULL, -1, &res, &rerr), GOXELPOOL_ERPC);
    result(res == NULL && rerr != NULL, "session_call ERPC gives rpc_error only", NULL);
    json_decref(rerr);
    rerr = NULL;
    expect("session_call(timeout_ms 0)", goxelpool_session_call(session, "ping", NULL, 0, NULL, NULL), GOXELPOOL_ETIMEDOUT);
    goxelpool_session *second = NULL;
    expect("second exclusive session on the only daemon: ETIMEDOUT", goxelpool_session_open(client, NULL, 100, &second), GOXELPOOL_ETIMEDOUT);
    goxelpool_client_free(client);
    expect("session_call after client_free", goxelpool_session_call(session, "ping", NULL, -1, NULL, NULL), GOXELPOOL_ECLOSED);
    json_t *info = goxelpool_session_info(session);
    const char *state = json_string_value(json_object_get(info, "state"));
    result(state && strcmp(state, "closed") == 0, "session_info after client_free: closed", "%s", state ? state : "?");
    json_decref(info);
    expect("session_close after client_free", goxelpool_session_close(session), GOXELPOOL_OK);
}

/* ---- 5. use after close, double close -------------------------------------------------------- */

static void cb_count(goxelpool_status s, const json_t *r, const json_t *e, void *u) {
    (void)r; (void)e;
    box_t *b = u;
    pthread_mutex_lock(&b->m);
    b->count++;
    b->status = s;
    pthread_mutex_unlock(&b->m);
}

static void test_after_close(void) {
    goxelpool_client *client = make_client(NULL);
    box_t b;
    box_init(&b);
    /* Async calls still queued at close get ECLOSED (or finish) exactly once. */
    for (int i = 0; i < 20; i++) goxelpool_call_async(client, "ping", NULL, -1, cb_count, &b);
    expect("client_close", goxelpool_client_close(client, 1000), GOXELPOOL_OK);
    result(b.count == 20, "async calls queued at close: each callback ran once", "%d of 20", b.count);
    expect("client_close again (idempotent)", goxelpool_client_close(client, 0), GOXELPOOL_OK);
    expect("client_close again, drain -1", goxelpool_client_close(client, -1), GOXELPOOL_OK);
    json_t *res = NULL;
    expect("call after close", goxelpool_call(client, "ping", NULL, -1, &res, NULL), GOXELPOOL_ECLOSED);
    expect("call(method NULL) after close", goxelpool_call(client, NULL, NULL, -1, NULL, NULL), GOXELPOOL_EINVAL);
    expect("call_async after close", goxelpool_call_async(client, "ping", NULL, -1, cb_count, &b), GOXELPOOL_ECLOSED);
    expect("notify after close", goxelpool_notify(client, "ping", NULL), GOXELPOOL_ECLOSED);
    json_t *requests = json_pack("[{s:s}]", "method", "ping"), *results = NULL;
    expect("call_batch after close", goxelpool_call_batch(client, requests, -1, &results), GOXELPOOL_ECLOSED);
    json_decref(requests);
    json_t *stats = goxelpool_stats(client);
    const char *state = json_string_value(json_object_get(stats, "pool_state"));
    result(stats && state && strcmp(state, "closed") == 0, "stats after close: pool_state closed", "%s", state ? state : "?");
    json_decref(stats);
    json_t *health = goxelpool_health(client);
    result(health != NULL, "health after close", NULL);
    json_decref(health);
    char *text = NULL;
    expect("metrics_text after close", goxelpool_metrics_text(client, &text), GOXELPOOL_OK);
    result(text && strstr(text, "goxelpool_client_state{state=\"closed\"} 1\n"), "metrics after close: client_state closed", NULL);
    goxelpool_free(text);
    expect("metrics_text(NULL out)", goxelpool_metrics_text(client, NULL), GOXELPOOL_EINVAL);
    int id = 0;
    expect("add_listener after close", goxelpool_add_listener(client, GOXELPOOL_EVENT_ALL, ev_noop, NULL, &id), GOXELPOOL_ECLOSED);
    expect("remove_listener(unknown) after close", goxelpool_remove_listener(client, 77), GOXELPOOL_EINVAL);
    sleep_ms(50);
    result(b.count == 20, "no callback after close", "%d", b.count);
    goxelpool_client_free(client);
    result(1, "free after close", NULL);
    box_destroy(&b);

    /* Closing a client that never reached its daemon. */
    json_t *config = json_pack("{s:s, s:{s:i}}", "socket_path", "/nonexistent/goxel.sock", "pool", "min_connections", 2);
    goxelpool_client *c2 = NULL;
    goxelpool_client_new(config, &c2, NULL, 0);
    json_decref(config);
    expect("call to a missing socket", goxelpool_call(c2, "ping", NULL, 300, NULL, NULL), GOXELPOOL_ECONNECT);
    expect("close a client that never connected", goxelpool_client_close(c2, 0), GOXELPOOL_OK);
    goxelpool_client_free(c2);
}

/* ---- 5b. dispatch mode ("callbacks": "dispatch") ------------------------------------------- */

static goxelpool_client *make_dispatch_client(void) {
    json_t *config = json_pack("{s:s, s:s, s:i, s:{s:i, s:i}}", "socket_path", sock_path, "callbacks", "dispatch",
                               "timeout_ms", 3000, "pool", "min_connections", 1, "max_connections", 2);
    goxelpool_client *client = NULL;
    goxelpool_client_new(config, &client, NULL, 0);
    json_decref(config);
    return client;
}

/* Dispatches until `count` callbacks of b ran (or 5 s passed). */
static int dispatch_until(goxelpool_client *client, box_t *b, int count) {
    double deadline = now_s() + 5;
    while (b->count < count && now_s() < deadline) {
        if (goxelpool_dispatch(client, 0, NULL) != GOXELPOOL_OK) return 0;
        sleep_ms(2);
    }
    return b->count >= count;
}

static void cb_dispatch_inside(goxelpool_status s, const json_t *r, const json_t *e, void *u) {
    (void)s; (void)r; (void)e;
    box_t *b = u;
    int ran = 5;
    b->inner = goxelpool_dispatch(b->client, 0, &ran);
    snprintf(b->message, sizeof b->message, "%s (ran %d)", goxelpool_last_error(), ran);
    b->count++;
}

static void cb_free_then_count(goxelpool_status s, const json_t *r, const json_t *e, void *u) {
    (void)r; (void)e;
    box_t *b = u;
    b->count++;
    b->status = s;
    if (!b->freed) {
        b->freed = 1;
        goxelpool_client_free(b->client); /* deferred until this callback returns */
        b->inner = goxelpool_call_async(b->client, "ping", NULL, -1, cb_free_then_count, b);
    }
}

static void test_dispatch_mode(void) {
    goxelpool_client *threaded = make_client(NULL);
    result(goxelpool_event_fd(threaded) == -1 && strstr(goxelpool_last_error(), "thread"),
           "event_fd of a thread-mode client is -1", "%s", goxelpool_last_error());
    int ran = 3;
    expect("dispatch on a thread-mode client", goxelpool_dispatch(threaded, 0, &ran), GOXELPOOL_EINVAL);
    result(ran == 0, "dispatch on a thread-mode client sets ran to 0", "%d", ran);
    goxelpool_client_free(threaded);

    goxelpool_client *client = make_dispatch_client();
    result(client && goxelpool_event_fd(client) >= 0, "dispatch-mode client has an event fd", "%d", goxelpool_event_fd(client));
    expect("dispatch, nothing queued, ran NULL", goxelpool_dispatch(client, 0, NULL), GOXELPOOL_OK);
    expect("dispatch max_items INT_MIN", goxelpool_dispatch(client, INT_MIN, &ran), GOXELPOOL_OK);
    expect("dispatch max_items INT_MAX", goxelpool_dispatch(client, INT_MAX, &ran), GOXELPOOL_OK);

    box_t b;
    box_init(&b);
    b.client = client;
    goxelpool_call_async(client, "ping", NULL, -1, cb_dispatch_inside, &b);
    result(dispatch_until(client, &b, 1), "dispatch runs the callback", "%d", b.count);
    expect_from("dispatch from its own callback", b.inner, GOXELPOOL_EINVAL, b.message);
    box_destroy(&b);

    /* Close with calls queued: callbacks wait for dispatch, each runs once with ECLOSED or OK. */
    box_init(&b);
    for (int i = 0; i < 20; i++) goxelpool_call_async(client, "ping", NULL, -1, cb_count, &b);
    expect("close a dispatch-mode client", goxelpool_client_close(client, 0), GOXELPOOL_OK);
    int before = b.count;
    expect("dispatch after close", goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK);
    result(before == 0 && b.count == 20 && ran == 20, "after close: no callback until dispatch, then 20", "%d before, %d after, ran %d", before, b.count, ran);
    expect("call_async after close (dispatch mode)", goxelpool_call_async(client, "ping", NULL, -1, cb_count, &b), GOXELPOOL_ECLOSED);
    result(goxelpool_event_fd(client) >= 0, "event fd still valid after close", NULL);
    goxelpool_client_free(client);
    box_destroy(&b);

    /* Free from a dispatched callback: deferred; the call made after it still completes once. */
    client = make_dispatch_client();
    box_init(&b);
    b.client = client;
    goxelpool_call_async(client, "ping", NULL, -1, cb_free_then_count, &b);
    double deadline = now_s() + 5;
    while (!b.freed && now_s() < deadline) {
        goxelpool_dispatch(client, 0, &ran); /* the last one frees the client */
        if (!b.freed) sleep_ms(2);
    }
    result(b.freed && b.count == 2 && b.inner == GOXELPOOL_OK, "free from a dispatched callback: deferred, later callback ran once",
           "freed %d, %d callbacks, inner %s", b.freed, b.count, goxelpool_status_name(b.inner));
    box_destroy(&b);
}

/* ---- 6. re-entrancy: callbacks and listeners calling back -------------------------------- */

static void cb_close_inside(goxelpool_status s, const json_t *r, const json_t *e, void *u) {
    (void)s; (void)r; (void)e;
    box_t *b = u;
    goxelpool_status st = goxelpool_client_close(b->client, 0);
    const char *msg = goxelpool_last_error();
    pthread_mutex_lock(&b->m);
    b->inner = st;
    snprintf(b->message, sizeof b->message, "%s", msg ? msg : "");
    b->count++;
    pthread_mutex_unlock(&b->m);
}

static void cb_call_inside(goxelpool_status s, const json_t *r, const json_t *e, void *u) {
    (void)r; (void)e;
    box_t *b = u;
    json_t *result = NULL;
    goxelpool_status st = goxelpool_call(b->client, "echo", NULL, -1, &result, NULL);
    json_decref(result);
    json_t *stats = goxelpool_stats(b->client), *health = goxelpool_health(b->client);
    char *metrics = NULL;
    goxelpool_status st4 = goxelpool_metrics_text(b->client, &metrics);
    goxelpool_free(metrics);
    goxelpool_status st2 = goxelpool_call_async(b->client, "ping", NULL, -1, cb_count, &b->other_count);
    json_t *requests = json_pack("[{s:s},{s:s}]", "method", "ping", "method", "version"), *results = NULL;
    goxelpool_status st3 = goxelpool_call_batch(b->client, requests, -1, &results);
    json_decref(requests);
    json_decref(results);
    pthread_mutex_lock(&b->m);
    b->status = s;
    b->inner = (st == GOXELPOOL_OK && stats && health && st2 == GOXELPOOL_OK && st3 == GOXELPOOL_OK && st4 == GOXELPOOL_OK)
                   ? GOXELPOOL_OK : GOXELPOOL_EIO;
    snprintf(b->message, sizeof b->message, "call %s, async %s, batch %s, metrics %s", goxelpool_status_name(st),
             goxelpool_status_name(st2), goxelpool_status_name(st3), goxelpool_status_name(st4));
    b->count++;
    pthread_mutex_unlock(&b->m);
    json_decref(stats);
    json_decref(health);
}

static void cb_free_inside(goxelpool_status s, const json_t *r, const json_t *e, void *u) {
    (void)s; (void)r; (void)e;
    box_t *b = u;
    pthread_mutex_lock(&b->m);
    if (b->freed) b->after_free++;
    int first = !b->freed;
    b->freed = 1;
    pthread_mutex_unlock(&b->m);
    if (first) goxelpool_client_free(b->client);
    pthread_mutex_lock(&b->m);
    b->count++;
    pthread_mutex_unlock(&b->m);
}

static void ev_close_inside(const json_t *ev, void *u) {
    (void)ev;
    box_t *b = u;
    pthread_mutex_lock(&b->m);
    int first = b->count == 0;
    pthread_mutex_unlock(&b->m);
    if (!first) return;
    goxelpool_status st = goxelpool_client_close(b->client, 0);
    snprintf(b->message, sizeof b->message, "%s", goxelpool_last_error());
    json_t *res = NULL;
    goxelpool_status st2 = goxelpool_call(b->client, "ping", NULL, -1, &res, NULL);
    json_decref(res);
    pthread_mutex_lock(&b->m);
    b->inner = st;
    b->status = st2;
    b->count++;
    pthread_mutex_unlock(&b->m);
}

static void ev_remove_self(const json_t *ev, void *u) {
    (void)ev;
    box_t *b = u;
    pthread_mutex_lock(&b->m);
    b->count++;
    int id = b->listener_id;
    pthread_mutex_unlock(&b->m);
    goxelpool_status st = goxelpool_remove_listener(b->client, id);
    goxelpool_status st2 = goxelpool_remove_listener(b->client, b->other_id);
    pthread_mutex_lock(&b->m);
    if (b->count == 1) { b->inner = st; b->status = st2; }
    pthread_mutex_unlock(&b->m);
}

static void ev_other(const json_t *ev, void *u) {
    (void)ev;
    box_t *b = u;
    pthread_mutex_lock(&b->m);
    b->other_count++;
    pthread_mutex_unlock(&b->m);
}

static void ev_add_inside(const json_t *ev, void *u) {
    (void)ev;
    box_t *b = u;
    pthread_mutex_lock(&b->m);
    int first = b->count == 0;
    b->count++;
    pthread_mutex_unlock(&b->m);
    if (first) {
        int id = 0;
        b->inner = goxelpool_add_listener(b->client, GOXELPOOL_EVENT_REQUEST, ev_other, b, &id);
        b->other_id = id;
    }
}

static void ev_free_inside(const json_t *ev, void *u) {
    (void)ev;
    box_t *b = u;
    pthread_mutex_lock(&b->m);
    if (b->freed) b->after_free++;
    int first = !b->freed;
    b->freed = 1;
    b->count++;
    pthread_mutex_unlock(&b->m);
    if (first) goxelpool_client_free(b->client);
}

static void test_reentrancy(void) {
    box_t b;

    /* close from an async callback: EINVAL with a message. */
    box_init(&b);
    b.client = make_client(NULL);
    goxelpool_call_async(b.client, "ping", NULL, -1, cb_close_inside, &b);
    box_wait(&b, 1, 5000);
    expect_from("client_close from an async callback", b.inner, GOXELPOOL_EINVAL, b.message);
    result(strstr(b.message, "callback") != NULL, "client_close from a callback: message", "%s", b.message);
    expect("client still works after refused close", goxelpool_call(b.client, "ping", NULL, -1, NULL, NULL), GOXELPOOL_OK);
    goxelpool_client_free(b.client);
    box_destroy(&b);

    /* calls, stats, health, async and batch from an async callback. */
    box_init(&b);
    b.client = make_client("\"min_connections\": 1, \"max_connections\": 1");
    goxelpool_call_async(b.client, "ping", NULL, -1, cb_call_inside, &b);
    box_wait(&b, 1, 8000);
    result(b.count == 1 && b.inner == GOXELPOOL_OK, "call/stats/health/async/batch from an async callback (max 1 connection)",
           "%s", b.message);
    goxelpool_client_free(b.client);
    box_destroy(&b);

    /* free from an async callback: deferred; later callbacks do not run. */
    box_init(&b);
    b.client = make_client("\"min_connections\": 1, \"max_connections\": 1");
    for (int i = 0; i < 5; i++) goxelpool_call_async(b.client, "ping", NULL, -1, cb_free_inside, &b);
    box_wait(&b, 1, 5000);
    sleep_ms(300);
    result(b.count == 1 && b.after_free == 0, "client_free from an async callback: no callback after it", "%d callbacks", b.count);
    box_destroy(&b);

    /* close and call from a listener. */
    box_init(&b);
    b.client = make_client("\"min_connections\": 0, \"max_connections\": 2");
    goxelpool_add_listener(b.client, GOXELPOOL_EVENT_CONNECTION, ev_close_inside, &b, NULL);
    goxelpool_call(b.client, "ping", NULL, -1, NULL, NULL);
    box_wait(&b, 1, 5000);
    expect_from("client_close from a listener", b.inner, GOXELPOOL_EINVAL, b.message);
    expect("call from a listener", b.status, GOXELPOOL_OK);
    goxelpool_client_free(b.client);
    box_destroy(&b);

    /* a listener removing itself and another listener. */
    box_init(&b);
    b.client = make_client(NULL);
    int self_id = 0, other_id = 0;
    goxelpool_add_listener(b.client, GOXELPOOL_EVENT_REQUEST, ev_remove_self, &b, &self_id);
    goxelpool_add_listener(b.client, GOXELPOOL_EVENT_REQUEST, ev_other, &b, &other_id);
    pthread_mutex_lock(&b.m);
    b.listener_id = self_id;
    b.other_id = other_id;
    pthread_mutex_unlock(&b.m);
    for (int i = 0; i < 20; i++) goxelpool_call(b.client, "ping", NULL, -1, NULL, NULL);
    sleep_ms(200);
    expect("remove_listener(itself) from the listener", b.inner, GOXELPOOL_OK);
    expect("remove_listener(another) from a listener", b.status, GOXELPOOL_OK);
    result(b.count == 1, "a listener that removed itself runs no more", "ran %d times", b.count);
    result(b.other_count <= 1, "a listener removed from another runs no more", "ran %d times", b.other_count);
    expect("remove_listener(itself) again from outside", goxelpool_remove_listener(b.client, self_id), GOXELPOOL_EINVAL);
    goxelpool_client_free(b.client);
    box_destroy(&b);

    /* add_listener from a listener. */
    box_init(&b);
    b.client = make_client(NULL);
    goxelpool_add_listener(b.client, GOXELPOOL_EVENT_REQUEST, ev_add_inside, &b, NULL);
    for (int i = 0; i < 10; i++) goxelpool_call(b.client, "ping", NULL, -1, NULL, NULL);
    sleep_ms(200);
    expect("add_listener from a listener", b.inner, GOXELPOOL_OK);
    result(b.other_count > 0, "the listener added from a listener receives events", "%d events", b.other_count);
    goxelpool_client_free(b.client);
    box_destroy(&b);

    /* free from a listener: deferred; no event afterwards. */
    box_init(&b);
    b.client = make_client(NULL);
    goxelpool_add_listener(b.client, GOXELPOOL_EVENT_REQUEST, ev_free_inside, &b, NULL);
    goxelpool_client *c = b.client;
    for (int i = 0; i < 5; i++) {
        pthread_mutex_lock(&b.m);
        int freed = b.freed;
        pthread_mutex_unlock(&b.m);
        if (freed) break;
        goxelpool_call(c, "ping", NULL, -1, NULL, NULL);
    }
    sleep_ms(300);
    result(b.freed && b.after_free == 0, "client_free from a listener: no event after it", "%d events", b.count);
    box_destroy(&b);
}

/* ---- 7. params never logged ------------------------------------------------------------------- */

static void ev_find_secret(const json_t *ev, void *u) {
    box_t *b = u;
    char *text = json_dumps(ev, JSON_COMPACT);
    pthread_mutex_lock(&b->m);
    b->count++;
    if (text && strstr(text, "SECRET-7f3a")) b->after_free++;
    pthread_mutex_unlock(&b->m);
    free(text);
}

static void test_no_params_in_logs(void) {
    box_t b;
    box_init(&b);
    goxelpool_client *client = NULL;
    json_t *config = json_pack("{s:s, s:s, s:{s:i}}", "socket_path", sock_path, "log_level", "debug", "pool", "min_connections", 1);
    goxelpool_client_new(config, &client, NULL, 0);
    json_decref(config);
    goxelpool_add_listener(client, GOXELPOOL_EVENT_ALL, ev_find_secret, &b, NULL);
    json_t *params = json_pack("{s:s}", "token", "SECRET-7f3a");
    goxelpool_call(client, "echo", params, -1, NULL, NULL);
    goxelpool_call(client, "no.such.method", params, -1, NULL, NULL);
    goxelpool_call(client, "echo", params, 0, NULL, NULL);
    json_decref(params);
    goxelpool_client_close(client, 1000);
    result(b.after_free == 0, "params never appear in events or logs (log_level debug)", "%d events seen", b.count);
    goxelpool_client_free(client);
    box_destroy(&b);
}

/* Threads of this process (/proc/self/task). */
static int thread_count(void) {
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return -1;
    int n = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) if (entry->d_name[0] != '.') n++;
    closedir(dir);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET (a goxel-refd listening there)\n", argv[0]);
        return 2;
    }
    sock_path = argv[1];
    double started = now_s();
    test_static();
    test_null_client();
    test_config();
    test_bad_calls();
    test_after_close();
    test_dispatch_mode();
    test_sessions();
    test_reentrancy();
    test_no_params_in_logs();
    /* Clients freed from their own callbacks are closed and freed on detached library threads:
     * wait (up to 10 s) until only this thread is left, so the leak check at exit does not see
     * the memory of a close that is still under way. */
    for (int i = 0; i < 1000 && thread_count() > 1; i++) sleep_ms(10);
    printf("# %.1f s\n", now_s() - started);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
