/*
 * harness.h - what tls.c and dns.c share: PASS/FAIL lines, child processes (goxel-refd, stunnel),
 * free ports, goxel-refd's control socket, event capture. Header-only (static functions): each
 * test is one C file built against the installed library with pkg-config.
 */
#ifndef GOXELPOOL_TLS_HARNESS_H
#define GOXELPOOL_TLS_HARNESS_H

#define _GNU_SOURCE
#include <goxelpool.h>
#include <jansson.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int n_passed, n_failed;
/* The arguments both programs take: REFD STUNNEL CERTDIR WORKDIR. */
static const char *refd_bin, *stunnel_bin, *certs, *work;

/* Each test uses some of these helpers. */
#define HARNESS static __attribute__((unused))

HARNESS void check(int ok, const char *name, const char *fmt, ...) {
    char detail[1024] = "";
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

HARNESS int finish(void) {
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}

HARNESS double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

HARNESS void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Reads REFD STUNNEL CERTDIR WORKDIR (and more, `extra`, to the usage line); SIGPIPE ignored. */
HARNESS void harness_arguments(int argc, char **argv, const char *extra) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s REFD STUNNEL CERTDIR WORKDIR%s\n", argv[0], extra);
        exit(2);
    }
    signal(SIGPIPE, SIG_IGN);
    refd_bin = argv[1];
    stunnel_bin = argv[2];
    certs = argv[3];
    work = argv[4];
}

/* ---- child processes ------------------------------------------------------------------------ */

/* Starts argv[0] in a process group of its own, stdout and stderr appended to `log`. */
HARNESS pid_t spawn(char *const argv[], const char *log) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); }
        if (null >= 0) dup2(null, 0);
        execv(argv[0], argv);
        _exit(127);
    }
    setpgid(pid, pid);
    return pid;
}

/* Stops a process started by spawn and whatever it forked (socat forks per connection, and a
 * child may outlive its parent's SIGTERM). */
HARNESS void stop(pid_t pid, int sig) {
    if (pid <= 0) return;
    kill(-pid, sig);
    kill(pid, sig);
    int reaped = 0;
    for (int i = 0; i < 50 && !reaped; i++) {
        reaped = waitpid(pid, NULL, WNOHANG) == pid;
        if (!reaped) sleep_ms(20);
    }
    kill(-pid, SIGKILL);
    if (!reaped) waitpid(pid, NULL, 0);
}

/* Occurrences of `needle` in the file at `path`. */
HARNESS int count_in_file(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        for (const char *p = line; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    }
    fclose(f);
    return n;
}

HARNESS int wait_for_text(const char *path, const char *needle, int timeout_ms) {
    double until = now_ms() + timeout_ms;
    while (now_ms() < until) {
        if (count_in_file(path, needle) > 0) return 1;
        sleep_ms(20);
    }
    return 0;
}

/* `address` (IPv4 or IPv6, numeric) and `port` as a socket address; its length, 0 if invalid. */
HARNESS socklen_t socket_address(const char *address, int port, struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return sizeof *v4;
    }
    if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        return sizeof *v6;
    }
    return 0;
}

/* A TCP port free on `address` now (bound to port 0, then released), or -1. */
HARNESS int free_port(const char *address) {
    struct sockaddr_storage sa;
    socklen_t len = socket_address(address, 0, &sa);
    int fd = len ? socket(sa.ss_family, SOCK_STREAM, 0) : -1;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, len) == 0 && getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.ss_family == AF_INET ? ((struct sockaddr_in *)&sa)->sin_port : ((struct sockaddr_in6 *)&sa)->sin6_port);
    if (fd >= 0) close(fd);
    return port;
}

HARNESS int port_open(const char *address, int port) {
    struct sockaddr_storage sa;
    socklen_t len = socket_address(address, port, &sa);
    int fd = len ? socket(sa.ss_family, SOCK_STREAM, 0) : -1;
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, len) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

HARNESS int wait_port(const char *address, int port, int timeout_ms) {
    double until = now_ms() + timeout_ms;
    while (now_ms() < until) {
        if (port_open(address, port)) return 1;
        sleep_ms(20);
    }
    return 0;
}

/* goxel-refd on `sock` (and on TCP `tcp` "host:port" when not NULL); waits until it listens.
 * Its control socket is sock.ctl. */
HARNESS pid_t start_refd(const char *refd, const char *sock, const char *tcp, const char *log) {
    char *argv[] = {(char *)refd, "--socket", (char *)sock, tcp ? "--tcp" : NULL, (char *)tcp, NULL};
    unlink(log);
    pid_t pid = spawn(argv, log);
    char ready[512];
    snprintf(ready, sizeof ready, "listening on %s", sock);
    if (pid > 0 && wait_for_text(log, ready, 10000)) return pid;
    fprintf(stderr, "goxel-refd did not start on %s (log %s)\n", sock, log);
    stop(pid, SIGKILL);
    return -1;
}

/* stunnel (the good server certificate of CERTDIR, client certificates required) on `address`
 * `port` in front of the Unix socket `sock`, its files named WORKDIR/`name`.*; waits until it
 * listens. Returns its pid, or -1 after a FAIL line. */
HARNESS pid_t start_one_stunnel(const char *name, const char *address, int port, const char *sock) {
    char conf[300], log[300];
    snprintf(conf, sizeof conf, "%s/%s.conf", work, name);
    snprintf(log, sizeof log, "%s/%s.log", work, name);
    FILE *f = fopen(conf, "w");
    if (!f) return -1;
    fprintf(f, "foreground = yes\npid =\nsyslog = no\noutput = %s\n[%s]\naccept = %s:%d\nconnect = %s\ncert = %s/server.pem\n"
               "key = %s/server.key\nCAfile = %s/ca.pem\nverifyChain = yes\nrequireCert = yes\n",
            log, name, address, port, sock, certs, certs, certs);
    fclose(f);
    char *argv[] = {(char *)stunnel_bin, conf, NULL};
    pid_t pid = spawn(argv, log);
    if (wait_port(address, port, 5000)) return pid;
    check(0, "stunnel started", "%s:%d, see %s", address, port, log);
    stop(pid, SIGKILL);
    return -1;
}

/* One JSON-RPC call on goxel-refd's control socket: the "result" (new reference) or NULL. */
HARNESS json_t *refd_control(const char *sock, const char *method, json_t *params) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock) + sizeof ".ctl" > sizeof sa.sun_path) return NULL;
    memcpy(sa.sun_path, sock, strlen(sock));
    memcpy(sa.sun_path + strlen(sock), ".ctl", sizeof ".ctl");
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { close(fd); return NULL; }
    json_t *request = json_pack("{s:s, s:s, s:i}", "jsonrpc", "2.0", "method", method, "id", 1);
    if (params) json_object_set(request, "params", params);
    char *text = json_dumps(request, JSON_COMPACT);
    json_decref(request);
    ssize_t sent = write(fd, text, strlen(text));
    sent += write(fd, "\n", 1);
    free(text);
    char buffer[65536];
    size_t got = 0;
    while (got < sizeof buffer - 1) {
        ssize_t n = read(fd, buffer + got, sizeof buffer - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        if (memchr(buffer, '\n', got)) break;
    }
    close(fd);
    buffer[got] = 0;
    json_t *answer = json_loads(buffer, 0, NULL);
    json_t *result = json_incref(json_object_get(answer, "result"));
    json_decref(answer);
    return result;
}

/* Requests refd received (refd.stats), or -1. */
HARNESS long refd_requests(const char *sock) {
    json_t *stats = refd_control(sock, "refd.stats", NULL);
    long n = stats ? (long)json_integer_value(json_object_get(stats, "requests")) : -1;
    json_decref(stats);
    return n;
}

/* ---- the library ---------------------------------------------------------------------------- */

HARNESS goxelpool_client *new_client(json_t *config) {
    goxelpool_client *client = NULL;
    char err[512];
    if (goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) {
        char *text = json_dumps(config, JSON_COMPACT);
        printf("FAIL client_new %s: %s\n", text, err);
        free(text);
        n_failed++;
    }
    json_decref(config);
    return client;
}

/* A call and how long it took. */
HARNESS goxelpool_status timed_call(goxelpool_client *client, const char *method, int timeout_ms, double *elapsed_ms) {
    double began = now_ms();
    json_t *result = NULL;
    goxelpool_status st = goxelpool_call(client, method, NULL, timeout_ms, &result, NULL);
    if (elapsed_ms) *elapsed_ms = now_ms() - began;
    json_decref(result);
    return st;
}

/* stats[key] (or stats.endpoints[index][key] when index >= 0) as an integer. */
HARNESS long long stat_int(goxelpool_client *client, int index, const char *key) {
    json_t *stats = goxelpool_stats(client);
    json_t *scope = index < 0 ? stats : json_array_get(json_object_get(stats, "endpoints"), (size_t)index);
    long long value = json_integer_value(json_object_get(scope, key));
    json_decref(stats);
    return value;
}

/* Events captured by a listener, for later checks. */
typedef struct {
    pthread_mutex_t lock;
    json_t *list;
} captured_events;

HARNESS void capture(const json_t *event, void *userdata) {
    captured_events *events = userdata;
    pthread_mutex_lock(&events->lock);
    json_array_append_new(events->list, json_deep_copy(event));
    pthread_mutex_unlock(&events->lock);
}

HARNESS void capture_init(captured_events *events) {
    pthread_mutex_init(&events->lock, NULL);
    events->list = json_array();
}

/* The first captured event of `type` (a new reference), or NULL. */
HARNESS json_t *find_event(captured_events *events, const char *type) {
    json_t *found = NULL;
    pthread_mutex_lock(&events->lock);
    size_t i;
    json_t *event;
    json_array_foreach(events->list, i, event) {
        const char *t = json_string_value(json_object_get(event, "type"));
        if (t && strcmp(t, type) == 0) { found = json_incref(event); break; }
    }
    pthread_mutex_unlock(&events->lock);
    return found;
}

/* The first captured event of `type`, waiting up to `ms` for it: listeners run on the library's
 * event thread, so an event can arrive after the state change it reports is visible. */
HARNESS json_t *wait_event(captured_events *events, const char *type, int ms) {
    json_t *found = find_event(events, type);
    for (double end = now_ms() + ms; !found && now_ms() < end; sleep_ms(20)) found = find_event(events, type);
    return found;
}

HARNESS int count_events(captured_events *events, const char *type) {
    int n = 0;
    pthread_mutex_lock(&events->lock);
    size_t i;
    json_t *event;
    json_array_foreach(events->list, i, event) {
        const char *t = json_string_value(json_object_get(event, "type"));
        if (t && strcmp(t, type) == 0) n++;
    }
    pthread_mutex_unlock(&events->lock);
    return n;
}

HARNESS void capture_clear(captured_events *events) {
    pthread_mutex_lock(&events->lock);
    json_array_clear(events->list);
    pthread_mutex_unlock(&events->lock);
}

/* The event as compact JSON in `out` (for PASS/FAIL details). */
HARNESS const char *event_text(json_t *event, char *out, size_t size) {
    char *text = event ? json_dumps(event, JSON_COMPACT) : NULL;
    snprintf(out, size, "%s", text ? text : "(none)");
    free(text);
    return out;
}

#endif
