/*
 * goxelpool - a shell's view of the Goxel daemon through libgoxelpool: call a method, print the
 * pool's statistics, health or Prometheus metrics, or watch the pool live.
 *
 *   goxelpool [OPTIONS] call METHOD [PARAMS-JSON] | stats | health | metrics | watch
 *
 * Written on the public header alone (include/goxelpool.h), as any program using the library
 * would be; the manual is goxelpool.1 beside this file. Built and installed by `make install`:
 *
 *   cc -Wall -Wextra -Werror goxelpool.c $(pkg-config --cflags --libs goxelpool) -lpthread -o goxelpool
 *
 * Exit status: 0 success; 1 an error outside the library (a file that cannot be read, a
 * terminal that cannot be set up); 2 usage error; 10 + the library's status otherwise
 * (11 EINVAL, 12 ETIMEDOUT, 14 ECONNECT, 17 ERPC: the daemon answered with an error, ...).
 */
#define _POSIX_C_SOURCE 200809L

#include <goxelpool.h>
#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum {
    EXIT_OTHER = 1,       /* outside the library: unreadable file, terminal set-up */
    EXIT_USAGE = 2,       /* bad command line */
    EXIT_STATUS_BASE = 10 /* 10 + goxelpool_status */
};

static const char *program = "goxelpool";

static const char usage_text[] =
    "usage: goxelpool [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  call METHOD [PARAMS-JSON]  call METHOD (params: a JSON array or object); print the result\n"
    "  stats                      the pool's statistics as JSON (after one ping)\n"
    "  health                     the health monitor's view as JSON (after one ping)\n"
    "  metrics                    the statistics in the Prometheus text format (after one ping)\n"
    "  watch                      a live view: pool state, connections, alerts as they happen\n"
    "\n"
    "Connection (every key of the library's configuration can be set):\n"
    "  -s, --socket PATH          the daemon's Unix socket (default $GOXELPOOL_SOCKET, else\n"
    "                             /tmp/goxel-daemon.sock)\n"
    "  -e, --endpoint E           a daemon: unix:/path, tcp:host:port (repeat for several)\n"
    "  -c, --config FILE          a JSON configuration file (the library's keys)\n"
    "  -t, --timeout MS           deadline of each call (timeout_ms)\n"
    "      --set KEY=VALUE        any configuration key, dotted (pool.max_connections=4); VALUE is\n"
    "                             JSON, or else a string\n"
    "Output:\n"
    "      --compact              JSON on one line\n"
    "  -i, --interval MS          watch: refresh period (default 1000)\n"
    "  -n, --frames N             watch: stop after N refreshes (default: until q or Ctrl-C)\n"
    "  -h, --help                 this help\n"
    "  -V, --version              the tool's and the library's versions\n"
    "\n"
    "Exit status: 0 success, 1 other error, 2 usage error, 10 + the library's status otherwise\n"
    "(11 EINVAL, 12 ETIMEDOUT, 13 ECLOSED, 14 ECONNECT, 15 EIO, 16 EPROTO, 17 ERPC, 18 EBUSY,\n"
    "19 EUNAVAILABLE, 20 ETOOBIG, 21 EPEER, 22 ENOMEM). See goxelpool(1).\n";

/* ---- messages and exit statuses ---------------------------------------------------------- */

static void complain(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", program);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", program);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry '%s --help'.\n", program);
    va_end(ap);
    return EXIT_USAGE;
}

static int exit_status(goxelpool_status st) {
    if (st == GOXELPOOL_OK) return EXIT_SUCCESS;
    int code = EXIT_STATUS_BASE + (int)st;
    return code > EXIT_STATUS_BASE && code < 126 ? code : EXIT_OTHER;
}

/* A failed library call: its status's name and the detail of goxelpool_last_error(). */
static int library_failure(const char *what, goxelpool_status st) {
    complain("%s: %s: %s", what, goxelpool_status_name(st), goxelpool_last_error());
    return exit_status(st);
}

/* ---- the configuration from the command line ---------------------------------------------- */

struct options {
    json_t *edits;          /* [[key, value], ...] in command-line order (key dotted) */
    const char *config_file;
    int compact;
    long interval_ms;
    long frames;
};

static int parse_long(const char *text, long min, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) return -1;
    *out = v;
    return 0;
}

static void add_edit(struct options *o, const char *key, json_t *value /* stolen */) {
    json_array_append_new(o->edits, json_pack("[s,o]", key, value));
}

/* Sets a dotted key ("pool.max_connections") in config, creating objects on the way.
 * Returns 0, or -1 when a part of the path is already something other than an object. */
static int set_dotted(json_t *config, const char *key, json_t *value /* stolen */) {
    char *path = strdup(key);
    if (!path) { json_decref(value); return -1; }
    json_t *node = config;
    char *part = path, *dot;
    while ((dot = strchr(part, '.')) != NULL) {
        *dot = '\0';
        json_t *next = json_object_get(node, part);
        if (!next) {
            next = json_object();
            json_object_set_new(node, part, next);
        } else if (!json_is_object(next)) {
            free(path);
            json_decref(value);
            return -1;
        }
        node = next;
        part = dot + 1;
    }
    int rc = json_object_set_new(node, part, value) == 0 ? 0 : -1;
    free(path);
    return rc;
}

/* The configuration: the --config file, then the other options in the order given. --socket and
 * --endpoint replace each other (the library takes one or the other). */
static int build_config(const struct options *o, json_t **out) {
    json_t *config;
    if (o->config_file) {
        json_error_t error;
        config = json_load_file(o->config_file, 0, &error);
        if (!config) {
            complain("--config %s: %s (line %d)", o->config_file, error.text, error.line);
            return EXIT_OTHER;
        }
        if (!json_is_object(config)) {
            json_decref(config);
            complain("--config %s: the configuration must be a JSON object", o->config_file);
            return EXIT_OTHER;
        }
    } else {
        config = json_object();
        const char *env = getenv("GOXELPOOL_SOCKET");
        if (env && *env) json_object_set_new(config, "socket_path", json_string(env));
    }
    int endpoints_given = 0;
    size_t i;
    json_t *edit;
    json_array_foreach(o->edits, i, edit) {
        const char *key = json_string_value(json_array_get(edit, 0));
        json_t *value = json_array_get(edit, 1);
        if (strcmp(key, "socket_path") == 0) {
            json_object_del(config, "endpoints");
        } else if (strcmp(key, "endpoints") == 0) {
            json_object_del(config, "socket_path");
            if (!endpoints_given++) json_object_set_new(config, "endpoints", json_array());
            json_array_append(json_object_get(config, "endpoints"), value);
            continue;
        }
        if (set_dotted(config, key, json_incref(value)) != 0) {
            json_decref(config);
            return usage_error("--set %s: a part of that key is not an object", key);
        }
    }
    *out = config;
    return EXIT_SUCCESS;
}

/* A default the user did not set ("pool", "min_connections"): one-shot commands open one
 * connection, not two, and watch checks health every second. */
static void default_key(json_t *config, const char *section, const char *key, json_t *value /* stolen */) {
    json_t *object = json_object_get(config, section);
    if (!object) {
        object = json_object();
        json_object_set_new(config, section, object);
    }
    if (json_is_object(object) && !json_object_get(object, key))
        json_object_set_new(object, key, value);
    else
        json_decref(value);
}

static int open_client(json_t *config, goxelpool_client **client) {
    char err[512];
    goxelpool_status st = goxelpool_client_new(config, client, err, sizeof err);
    if (st != GOXELPOOL_OK) {
        complain("configuration: %s: %s", goxelpool_status_name(st), err);
        return exit_status(st);
    }
    return EXIT_SUCCESS;
}

static void print_json(const json_t *value, int compact) {
    size_t flags = JSON_ENCODE_ANY | JSON_REAL_PRECISION(10) | (compact ? JSON_COMPACT : JSON_INDENT(2));
    json_dumpf(value, stdout, flags);
    fputc('\n', stdout);
}

/* ---- call, stats, health, metrics ---------------------------------------------------------- */

/* PARAMS-JSON: a JSON array or object (the daemon takes nothing else). */
static int parse_params(const char *text, json_t **params) {
    json_error_t error;
    *params = json_loads(text, 0, &error);
    if (!*params) return usage_error("PARAMS-JSON: %s (column %d)", error.text, error.column);
    if (!json_is_array(*params) && !json_is_object(*params)) {
        json_decref(*params);
        *params = NULL;
        return usage_error("PARAMS-JSON must be a JSON array or object");
    }
    return EXIT_SUCCESS;
}

/* params: borrowed, may be NULL. */
static int cmd_call(goxelpool_client *client, const char *method, const json_t *params, int compact) {
    json_t *result = NULL, *rpc_error = NULL;
    goxelpool_status st = goxelpool_call(client, method, params, -1, &result, &rpc_error);
    if (st == GOXELPOOL_OK) {
        print_json(result ? result : json_null(), compact);
        json_decref(result);
        return EXIT_SUCCESS;
    }
    if (st == GOXELPOOL_ERPC) {
        char *text = json_dumps(rpc_error, JSON_COMPACT | JSON_ENCODE_ANY);
        complain("%s: the daemon answered with an error: %s", method, text ? text : "?");
        free(text);
        json_decref(rpc_error);
        return exit_status(st);
    }
    return library_failure(method, st);
}

/* A fresh client knows nothing about its daemon: one call of the health method first, so that the
 * figures printed say whether it answers and how fast. Returns that call's status. */
static goxelpool_status probe(goxelpool_client *client, const json_t *config) {
    const char *method = json_string_value(json_object_get(json_object_get(config, "health"), "method"));
    goxelpool_status st = goxelpool_call(client, method ? method : "ping", NULL, -1, NULL, NULL);
    if (st != GOXELPOOL_OK) complain("probe (%s): %s: %s", method ? method : "ping", goxelpool_status_name(st), goxelpool_last_error());
    return st;
}

static int cmd_snapshot(goxelpool_client *client, const json_t *config, const char *command, int compact) {
    goxelpool_status probed = probe(client, config);
    if (strcmp(command, "metrics") == 0) {
        char *text = NULL;
        goxelpool_status st = goxelpool_metrics_text(client, &text);
        if (st != GOXELPOOL_OK) return library_failure("metrics", st);
        fputs(text, stdout);
        goxelpool_free(text);
    } else {
        json_t *value = strcmp(command, "stats") == 0 ? goxelpool_stats(client) : goxelpool_health(client);
        if (!value) {
            complain("%s: out of memory", command);
            return exit_status(GOXELPOOL_ENOMEM);
        }
        print_json(value, compact);
        json_decref(value);
    }
    return exit_status(probed);
}

/* ---- watch ------------------------------------------------------------------------------- */

enum { EVENT_LINES = 200, EVENT_LINE_BYTES = 400 };

/* Event lines, written by the listener (the client's event thread), read by the screen. */
static struct {
    pthread_mutex_t lock;
    char lines[EVENT_LINES][EVENT_LINE_BYTES];
    int severity[EVENT_LINES]; /* 0 none, 1 info, 2 warning, 3 critical */
    unsigned long count;       /* lines ever added; the newest is at (count - 1) % EVENT_LINES */
} events = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int wake_pipe[2] = {-1, -1};
static volatile sig_atomic_t stop_requested;

static void wake(void) {
    if (wake_pipe[1] >= 0) {
        ssize_t ignored = write(wake_pipe[1], "x", 1); /* non-blocking: a full pipe already wakes */
        (void)ignored;
    }
}

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
    int saved = errno;
    wake();
    errno = saved;
}

static int severity_rank(const char *severity) {
    if (!severity) return 0;
    if (strcmp(severity, "critical") == 0) return 3;
    if (strcmp(severity, "warning") == 0) return 2;
    return 1;
}

/* Control characters (a socket path may hold a line feed) would break the screen: shown as '?'. */
static void printable(char *text) {
    for (; *text; text++)
        if ((unsigned char)*text < 0x20 || *text == 0x7f) *text = '?';
}

/* "HH:MM:SS.mmm" of an event's timestamp_ms. */
static void event_clock(const json_t *event, char *out, size_t len) {
    json_int_t ms = json_integer_value(json_object_get(event, "timestamp_ms"));
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&secs, &tm);
    snprintf(out, len, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* The listener: one line per event, "time  kind  type  what happened". event is borrowed;
 * userdata points at an int: non-zero when the client has several endpoints (then each line
 * names its endpoint). */
static void on_event(const json_t *event, void *userdata) {
    int several_endpoints = *(const int *)userdata;
    const char *kind = json_string_value(json_object_get(event, "kind"));
    const char *type = json_string_value(json_object_get(event, "type"));
    const char *message = json_string_value(json_object_get(event, "message"));
    const char *endpoint = several_endpoints ? json_string_value(json_object_get(event, "endpoint")) : NULL;
    const char *previous = json_string_value(json_object_get(event, "previous"));
    const char *current = json_string_value(json_object_get(event, "current"));
    const char *reason = json_string_value(json_object_get(event, "reason"));
    json_t *id = json_object_get(event, "connection_id");
    char what[256] = "";
    if (message) {
        snprintf(what, sizeof what, "%s", message);
    } else if (previous && current && json_is_integer(id)) {
        snprintf(what, sizeof what, "connection %lld: %s -> %s", (long long)json_integer_value(id), previous, current);
    } else if (previous && current) {
        snprintf(what, sizeof what, "%s -> %s", previous, current);
    } else if (json_is_integer(id)) {
        snprintf(what, sizeof what, "connection %lld%s%s%s", (long long)json_integer_value(id),
                 reason ? " (" : "", reason ? reason : "", reason ? ")" : "");
    } else {
        /* Kinds this tool does not know yet: their fields as JSON. json_copy is shallow and
         * leaves its argument alone (jansson's prototype lacks the const). */
        json_t *rest = json_copy((json_t *)event);
        json_object_del(rest, "kind");
        json_object_del(rest, "type");
        json_object_del(rest, "timestamp_ms");
        char *text = json_dumps(rest, JSON_COMPACT | JSON_SORT_KEYS);
        snprintf(what, sizeof what, "%s", text ? text : "");
        free(text);
        json_decref(rest);
    }
    char clock[16];
    event_clock(event, clock, sizeof clock);
    const char *severity = json_string_value(json_object_get(event, "severity"));
    pthread_mutex_lock(&events.lock);
    unsigned long slot = events.count % EVENT_LINES;
    snprintf(events.lines[slot], EVENT_LINE_BYTES, "%s %-10s %-20s %s%s%s", clock, kind ? kind : "?",
             type ? type : "?", endpoint ? endpoint : "", endpoint ? "  " : "", what);
    printable(events.lines[slot]);
    events.severity[slot] = kind && strcmp(kind, "alert") == 0 ? severity_rank(severity) : 0;
    events.count++;
    pthread_mutex_unlock(&events.lock);
    wake();
}

/* The screen: colours only on a terminal, and only without NO_COLOR. */
struct screen {
    int tty;     /* refresh in place (ANSI cursor movement) */
    int color;
    int rows, cols;
    FILE *out;   /* the frame being built (open_memstream) */
};

static const char *paint(const struct screen *s, const char *word) {
    if (!s->color || !word) return "";
    if (!strcmp(word, "healthy") || !strcmp(word, "ready") || !strcmp(word, "closed") || !strcmp(word, "improving"))
        return "\033[32m";
    if (!strcmp(word, "degraded") || !strcmp(word, "half_open") || !strcmp(word, "mixed") || !strcmp(word, "degrading"))
        return "\033[33m";
    if (!strcmp(word, "unhealthy") || !strcmp(word, "open")) return "\033[31m";
    return "";
}

static const char *reset(const struct screen *s) { return s->color ? "\033[0m" : ""; }

static const char *severity_color(const struct screen *s, int rank) {
    if (!s->color) return "";
    return rank == 3 ? "\033[31m" : rank == 2 ? "\033[33m" : rank == 1 ? "\033[36m" : "";
}

/* One line of the frame: cut to the terminal's width (at a character boundary), then, on a
 * terminal, "erase to the end of the line" so that a shorter line leaves nothing behind. */
static void line(struct screen *s, const char *fmt, ...) {
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (s->tty) {
        /* Visible width: escapes (ESC [ ... letter) take no columns; UTF-8 continuation bytes
         * neither. */
        int visible = 0;
        size_t i = 0, cut = strlen(text);
        while (text[i]) {
            if (text[i] == '\033') {
                while (text[i] && !((text[i] >= 'A' && text[i] <= 'Z') || (text[i] >= 'a' && text[i] <= 'z'))) i++;
                if (text[i]) i++;
                continue;
            }
            if (((unsigned char)text[i] & 0xC0) != 0x80 && visible++ == s->cols) { cut = i; break; }
            i++;
        }
        fprintf(s->out, "%.*s%s\033[K\n", (int)cut, text, reset(s));
    } else {
        fprintf(s->out, "%s\n", text);
    }
}

static double number(const json_t *object, const char *key) {
    json_t *v = json_object_get(object, key);
    return json_is_number(v) ? json_number_value(v) : 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

struct rate { double at, calls; };

static void draw(struct screen *s, goxelpool_client *client, const char *target, struct rate *rate) {
    json_t *health = goxelpool_health(client), *stats = goxelpool_stats(client);
    time_t wall = time(NULL);
    struct tm tm;
    localtime_r(&wall, &tm);
    line(s, "%sgoxelpool watch%s  %s  %02d:%02d:%02d%s", s->color ? "\033[1m" : "", reset(s), target,
         tm.tm_hour, tm.tm_min, tm.tm_sec, s->tty ? "   (q: quit)" : "");

    const char *state = json_string_value(json_object_get(health, "state"));
    const char *circuit = json_string_value(json_object_get(health, "circuit_state"));
    line(s, "pool %s%s%s   circuit %s%s%s   connections %d open, %d healthy, %d opening, %d busy   waiting %d",
         paint(s, state), state ? state : "?", reset(s), paint(s, circuit), circuit ? circuit : "?", reset(s),
         (int)number(stats, "total_connections"), (int)number(stats, "healthy_connections"),
         (int)number(stats, "opening_connections"), (int)number(stats, "busy_connections"),
         (int)number(stats, "waiting_requests"));

    double calls = number(stats, "total_requests_served"), t = now_s();
    double per_s = rate->at > 0 && t > rate->at ? (calls - rate->calls) / (t - rate->at) : 0;
    rate->at = t;
    rate->calls = calls;
    char failed[256] = "";
    int off = 0, total_failed = 0;
    const char *name;
    json_t *count;
    json_object_foreach(json_object_get(stats, "failed_requests"), name, count) {
        total_failed += (int)json_integer_value(count);
        if (off < (int)sizeof failed)
            off += snprintf(failed + off, sizeof failed - (size_t)off, "%s%s %lld", off ? ", " : " (", name,
                            (long long)json_integer_value(count));
    }
    if (off > 0 && off < (int)sizeof failed - 1) strcat(failed, ")");
    json_t *latency = json_object_get(stats, "request_latency_ms");
    line(s, "calls %.0f (%.1f/s)   failed %d%s   latency p50 %.2f ms, p99 %.2f ms",
         calls, per_s, total_failed, failed, number(latency, "p50"), number(latency, "p99"));
    line(s, "health checks %.0f (%.0f failed)   reconnections %.0f   connection failures %.0f",
         number(stats, "health_checks"), number(stats, "health_check_failures"),
         number(stats, "reconnection_attempts"), number(stats, "connection_failures"));
    char last_error[256];
    const char *error_text = json_string_value(json_object_get(stats, "last_connect_error"));
    snprintf(last_error, sizeof last_error, "%s", error_text ? error_text : "none");
    printable(last_error);
    line(s, "last connect error: %s", last_error);
    line(s, "");

    line(s, "%s%4s  %-28s %-10s %9s %9s  %-10s %7s %8s%s", s->color ? "\033[1m" : "", "CONN", "ENDPOINT", "TIER",
         "AVG ms", "LAST ms", "TREND", "CALLS", "UP s", reset(s));
    json_t *connections = json_object_get(health, "connections");
    size_t shown = 0, i;
    json_t *conn;
    int used = 7, budget = s->rows - used - 4; /* rows left for connections and events */
    int conn_rows = budget / 2 > 3 ? budget / 2 : 3;
    json_array_foreach(connections, i, conn) {
        if ((int)shown >= conn_rows) break;
        const char *tier = json_string_value(json_object_get(conn, "tier"));
        const char *trend = json_string_value(json_object_get(conn, "trend"));
        json_t *samples = json_object_get(conn, "latencies_ms");
        json_t *last = json_array_get(samples, json_array_size(samples) ? json_array_size(samples) - 1 : 0);
        json_t *average = json_object_get(conn, "average_latency_ms");
        const char *endpoint = json_string_value(json_object_get(conn, "endpoint"));
        char where[32];
        size_t len = endpoint ? strlen(endpoint) : 0;
        snprintf(where, sizeof where, "%s%s", len > 28 ? "..." : "", len > 28 ? endpoint + len - 25 : (endpoint ? endpoint : ""));
        printable(where);
        char avg_text[32] = "-", last_text[32] = "-";
        if (json_is_number(average)) snprintf(avg_text, sizeof avg_text, "%.2f", json_number_value(average));
        if (json_is_number(last)) snprintf(last_text, sizeof last_text, "%.2f", json_number_value(last));
        line(s, "%4lld  %-28s %s%-10s%s %9s %9s  %s%-10s%s %7lld %8.1f",
             (long long)json_integer_value(json_object_get(conn, "connection_id")), where, paint(s, tier), tier ? tier : "?", reset(s), avg_text, last_text, paint(s, trend), trend ? trend : "?",
             reset(s), (long long)json_integer_value(json_object_get(conn, "requests_served")),
             number(conn, "uptime_ms") / 1000);
        shown++;
    }
    if (json_array_size(connections) == 0) line(s, "  (no connection open)");
    else if (shown < json_array_size(connections)) line(s, "  ... %zu more", json_array_size(connections) - shown);
    line(s, "");

    line(s, "%salerts and events%s (newest last)", s->color ? "\033[1m" : "", reset(s));
    int event_rows = s->rows - used - (int)shown - 5;
    if (event_rows < 3) event_rows = 3;
    pthread_mutex_lock(&events.lock);
    unsigned long n = events.count < (unsigned long)event_rows ? events.count : (unsigned long)event_rows;
    if (n > EVENT_LINES) n = EVENT_LINES;
    for (unsigned long k = events.count - n; k < events.count; k++) {
        int rank = events.severity[k % EVENT_LINES];
        line(s, "%s%s%s", severity_color(s, rank), events.lines[k % EVENT_LINES], rank ? reset(s) : "");
    }
    if (events.count == 0) line(s, "  (none yet)");
    pthread_mutex_unlock(&events.lock);
    json_decref(health);
    json_decref(stats);
}

static struct termios saved_tty;
static int tty_saved;

static void restore_terminal(const struct screen *s) {
    if (tty_saved) tcsetattr(STDIN_FILENO, TCSANOW, &saved_tty);
    tty_saved = 0;
    if (s->tty) {
        fputs("\033[?25h\033[?1049l", stdout); /* cursor back, main screen back */
        fflush(stdout);
    }
}

static void screen_size(struct screen *s) {
    struct winsize ws;
    s->rows = 24;
    s->cols = 80;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
        s->rows = ws.ws_row;
        s->cols = ws.ws_col;
    }
}

/* A short name for the header: the socket or the endpoints. */
static void describe_target(const json_t *config, char *out, size_t len) {
    json_t *endpoints = json_object_get(config, "endpoints");
    if (json_array_size(endpoints) > 0) {
        size_t off = 0, i;
        json_t *e;
        out[0] = '\0';
        json_array_foreach(endpoints, i, e) {
            if (off < len) off += (size_t)snprintf(out + off, len - off, "%s%s", i ? ", " : "", json_string_value(e) ? json_string_value(e) : "?");
        }
        return;
    }
    const char *path = json_string_value(json_object_get(config, "socket_path"));
    snprintf(out, len, "unix:%s", path ? path : "/tmp/goxel-daemon.sock");
}

static int cmd_watch(goxelpool_client *client, const json_t *config, const struct options *o) {
    struct screen s = {0};
    const char *term = getenv("TERM");
    const char *no_color = getenv("NO_COLOR");
    s.tty = isatty(STDOUT_FILENO) && !(term && strcmp(term, "dumb") == 0);
    s.color = s.tty && !(no_color && *no_color);
    char target[256];
    describe_target(config, target, sizeof target);
    printable(target);

    if (pipe(wake_pipe) != 0) {
        complain("pipe: %s", strerror(errno));
        return EXIT_OTHER;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(wake_pipe[i], F_SETFL, fcntl(wake_pipe[i], F_GETFL) | O_NONBLOCK);
        fcntl(wake_pipe[i], F_SETFD, FD_CLOEXEC);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    static int several_endpoints; /* the listener's userdata: lives as long as the listener */
    several_endpoints = json_array_size(json_object_get(config, "endpoints")) > 1;
    int listener = -1;
    goxelpool_status st = goxelpool_add_listener(
        client, GOXELPOOL_EVENT_ALERT | GOXELPOOL_EVENT_HEALTH | GOXELPOOL_EVENT_CONNECTION | GOXELPOOL_EVENT_POOL,
        on_event, &several_endpoints, &listener);
    if (st != GOXELPOOL_OK) return library_failure("listener", st);

    /* Keys without Enter and without echo; Ctrl-C stays a signal (ISIG is left on). */
    int keys = isatty(STDIN_FILENO);
    if (keys && tcgetattr(STDIN_FILENO, &saved_tty) == 0) {
        struct termios raw = saved_tty;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0) tty_saved = 1;
    }
    if (s.tty) fputs("\033[?1049h\033[?25l", stdout); /* alternate screen, cursor hidden */

    struct rate rate = {0, 0};
    long frames = 0;
    int stdin_open = 1;
    int rc = EXIT_SUCCESS;
    while (!stop_requested) {
        screen_size(&s);
        char *frame = NULL;
        size_t frame_len = 0;
        s.out = open_memstream(&frame, &frame_len);
        if (!s.out) {
            complain("out of memory");
            rc = EXIT_OTHER;
            break;
        }
        if (s.tty) fputs("\033[H", s.out); /* home: the frame overwrites the previous one */
        draw(&s, client, target, &rate);
        if (s.tty) fputs("\033[J", s.out); /* erase whatever the previous frame left below */
        else fputs("\n", s.out);
        fclose(s.out);
        fwrite(frame, 1, frame_len, stdout);
        fflush(stdout);
        free(frame);
        if (o->frames > 0 && ++frames >= o->frames) break;

        /* Wait for the next refresh, an event (redrawn at once, at most 10 times a second), a
         * key or a signal. */
        double next = now_s() + (double)o->interval_ms / 1000.0;
        int redraw = 0;
        while (!stop_requested && !redraw) {
            double left = next - now_s();
            if (left <= 0) break;
            struct pollfd fds[2] = {{.fd = wake_pipe[0], .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
            int n = poll(fds, stdin_open ? 2 : 1, (int)(left * 1000) + 1);
            if (n < 0 && errno != EINTR) break;
            if (n <= 0) continue;
            if (fds[0].revents & POLLIN) {
                char drain[64];
                while (read(wake_pipe[0], drain, sizeof drain) > 0) {}
                if (!stop_requested) {
                    struct timespec pause = {0, 100 * 1000 * 1000};
                    nanosleep(&pause, NULL); /* gather a burst of events into one frame */
                    redraw = 1;
                }
            }
            if (stdin_open && (fds[1].revents & (POLLIN | POLLHUP))) {
                char key[16];
                ssize_t got = read(STDIN_FILENO, key, sizeof key);
                if (got <= 0) stdin_open = 0; /* end of input: keep watching, without keys */
                for (ssize_t k = 0; k < got; k++)
                    if (key[k] == 'q' || key[k] == 'Q') stop_requested = 1;
            }
        }
    }
    restore_terminal(&s);
    goxelpool_remove_listener(client, listener);
    return rc;
}

/* ---- main -------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    struct options o = {.edits = json_array(), .interval_ms = 1000, .frames = 0};
    enum { OPT_SET = 1000, OPT_COMPACT };
    static const struct option long_options[] = {
        {"socket", required_argument, NULL, 's'},   {"endpoint", required_argument, NULL, 'e'},
        {"config", required_argument, NULL, 'c'},   {"timeout", required_argument, NULL, 't'},
        {"set", required_argument, NULL, OPT_SET},  {"compact", no_argument, NULL, OPT_COMPACT},
        {"interval", required_argument, NULL, 'i'}, {"frames", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},           {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int opt, rc = EXIT_SUCCESS;
    long number_value;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":s:e:c:t:i:n:hV", long_options, NULL)) != -1) {
        switch (opt) {
        case 's': add_edit(&o, "socket_path", json_string(optarg)); break;
        case 'e': add_edit(&o, "endpoints", json_string(optarg)); break;
        case 'c': o.config_file = optarg; break;
        case 't':
            if (parse_long(optarg, 0, 2147483647L, &number_value) != 0)
                return usage_error("--timeout: expected milliseconds (0 or more), got '%s'", optarg);
            add_edit(&o, "timeout_ms", json_integer(number_value));
            break;
        case OPT_SET: {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) return usage_error("--set: expected KEY=VALUE, got '%s'", optarg);
            char key[256];
            if ((size_t)(eq - optarg) >= sizeof key) return usage_error("--set: key too long");
            memcpy(key, optarg, (size_t)(eq - optarg));
            key[eq - optarg] = '\0';
            if (key[strlen(key) - 1] == '.' || strstr(key, "..") || key[0] == '.')
                return usage_error("--set: bad key '%s'", key);
            json_t *value = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
            add_edit(&o, key, value ? value : json_string(eq + 1));
            break;
        }
        case OPT_COMPACT: o.compact = 1; break;
        case 'i':
            if (parse_long(optarg, 50, 3600000L, &o.interval_ms) != 0)
                return usage_error("--interval: expected milliseconds from 50 to 3600000, got '%s'", optarg);
            break;
        case 'n':
            if (parse_long(optarg, 1, 1000000000L, &o.frames) != 0)
                return usage_error("--frames: expected a positive count, got '%s'", optarg);
            break;
        case 'h': fputs(usage_text, stdout); return EXIT_SUCCESS;
        case 'V':
            printf("goxelpool %s (libgoxelpool %s)\n", GOXELPOOL_VERSION_STRING, goxelpool_version());
            return EXIT_SUCCESS;
        case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc) return usage_error("no command (call, stats, health, metrics or watch)");
    const char *command = argv[optind];
    int args = argc - optind - 1;
    char **arg = argv + optind + 1;
    int one_shot = strcmp(command, "stats") == 0 || strcmp(command, "health") == 0 || strcmp(command, "metrics") == 0;
    json_t *params = NULL;
    if (strcmp(command, "call") == 0) {
        if (args < 1 || args > 2) return usage_error("usage: goxelpool call METHOD [PARAMS-JSON]");
        if (!*arg[0]) return usage_error("METHOD is empty");
        if (args == 2 && (rc = parse_params(arg[1], &params)) != EXIT_SUCCESS) return rc;
    } else if (one_shot || strcmp(command, "watch") == 0) {
        if (args != 0) return usage_error("%s takes no arguments ('%s')", command, arg[0]);
    } else {
        return usage_error("unknown command '%s' (call, stats, health, metrics or watch)", command);
    }

    json_t *config = NULL;
    rc = build_config(&o, &config);
    json_decref(o.edits);
    if (rc != EXIT_SUCCESS) {
        json_decref(params);
        return rc;
    }
    if (strcmp(command, "watch") == 0) {
        default_key(config, "health", "interval_ms", json_integer(1000));
    } else {
        default_key(config, "pool", "min_connections", json_integer(1));
    }
    goxelpool_client *client = NULL;
    rc = open_client(config, &client);
    if (rc == EXIT_SUCCESS) {
        if (strcmp(command, "call") == 0) rc = cmd_call(client, arg[0], params, o.compact);
        else if (one_shot) rc = cmd_snapshot(client, config, command, o.compact);
        else rc = cmd_watch(client, config, &o);
        goxelpool_client_free(client);
    }
    json_decref(params);
    json_decref(config);
    if (fflush(stdout) != 0 && rc == EXIT_SUCCESS) rc = EXIT_OTHER; /* e.g. a closed pipe */
    return rc;
}
