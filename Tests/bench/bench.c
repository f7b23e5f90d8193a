/* libgoxelpool benchmark: the library against the physical limit (a hand-written raw client).
 *
 * Built like a user's program:
 *   cc -std=c11 -O2 -Wall -Wextra -Werror bench.c $(pkg-config --cflags --libs goxelpool) -lpthread
 *
 * Usage: bench [--quick] [--rounds N] [--duration SECONDS] [--cycles N] [--slice SECONDS] [--refd PATH] [--socket PATH]
 *              [--shared-threads] [--thread-history] [--decompose]
 *   Starts `goxel-refd` (--refd, default: goxel-refd from PATH) on a temporary socket, or uses the
 *   daemon at --socket / $SOCKET. Daemon latency is set through its control socket PATH.ctl
 *   (refd.set_faults); without one, the 2 ms rows are skipped. $BENCH_QUICK=1 is --quick.
 *
 * Output (stdout): readable tables, then one JSON object per row, one per line (lines starting
 * with '{'). Progress goes to stderr. Every figure in the tables is the median over the rounds; a
 * ratio is the median of the per-round ratios (the baseline and the library run back to back in
 * each round). The pool-of-10 section is measured differently, interleaved (--cycles N, --slice
 * SECONDS; see pool10_interleaved): the modes take turns in short slices, and a ratio is the
 * median of the per-cycle ratios, shown with a 95 % confidence interval and quartiles, and with
 * the raw client's ratio to itself (the method's noise in that run).
 *
 * Every call is `goxel.get_voxel [x, y, z]` (idempotent, cheap in the daemon). The raw baseline
 * builds each request with jansson (json_pack + json_dumpb), writes it with one send(), reads the
 * answer with recv() into a buffer up to '\n', parses it with json_loadb and checks the id and the
 * result: the fastest honest client, one persistent blocking connection per thread.
 */
#define _GNU_SOURCE
#include <goxelpool.h>
#include <jansson.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ----------------------------------------------------------------------------------------------
 * Options and small helpers
 * -------------------------------------------------------------------------------------------- */

static int opt_quick = 0;
static int opt_rounds = 3;
static double opt_duration = 2.0;   /* measured seconds per throughput row */
static double opt_warmup = 0.3;
static long opt_memory_calls = 1000000;
static const char *opt_refd = "goxel-refd";
static int opt_threads = 0;          /* --threads T: only this T in the throughput table */
static const char *opt_only = NULL;
static const char *opt_mode = NULL;
static int opt_async_inflight = 64;  /* --async-inflight N: calls kept in flight in the async rows */
static int opt_async_conns = 8;      /* --async-connections C */
static int opt_latency = -1;         /* --latency 0|2: only this daemon latency in the throughput table */  /* --only SECTION: throughput, scaling, health, async, acquire, batch, memory, endpoints, tls */
static char socket_path[108];
static char control_path[112];
static int have_control = 0;
static pid_t refd_pid = -1;
static char tmpdir[64];
static int progress_tty = 0;
static int step_no = 0, step_total = 0;

static const char *METHOD = "goxel.get_voxel";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec * 1e-6;
}

/* CPU seconds of the daemon this benchmark started (-1: it uses one started elsewhere), in the
 * kernel's clock ticks (10 ms): a sum over many slices is exact to well under 1 %. */
static double daemon_cpu_s(void) {
    if (refd_pid <= 0) return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)refd_pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *after_name = strrchr(buf, ')'); /* the name may hold spaces */
    unsigned long utime = 0, stime = 0;
    if (!after_name || sscanf(after_name + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages_total = 0, pages_rss = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages_total, &pages_rss) != 2) pages_rss = -1;
    fclose(f);
    return pages_rss < 0 ? -1 : pages_rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static void progress(const char *what) {
    step_no++;
    if (progress_tty)
        fprintf(stderr, "\r\033[Kbench: [%d/%d] %s", step_no, step_total, what);
    else
        fprintf(stderr, "bench: [%d/%d] %s\n", step_no, step_total, what);
    fflush(stderr);
}

static void progress_done(void) {
    if (progress_tty) fprintf(stderr, "\r\033[K");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    if (n <= 0) return 0;
    double tmp[64];
    if (n > 64) n = 64;
    memcpy(tmp, v, (size_t)n * sizeof *v);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

/* ----------------------------------------------------------------------------------------------
 * The reference daemon and its control socket
 * -------------------------------------------------------------------------------------------- */

static int unix_connect(const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) return -1;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void stop_refd(void) {
    if (refd_pid > 0) {
        kill(refd_pid, SIGTERM);
        for (int i = 0; i < 50; i++) {
            if (waitpid(refd_pid, NULL, WNOHANG) == refd_pid) { refd_pid = -1; break; }
            sleep_s(0.05);
        }
        if (refd_pid > 0) { kill(refd_pid, SIGKILL); waitpid(refd_pid, NULL, 0); }
        refd_pid = -1;
    }
    if (tmpdir[0]) {
        unlink(socket_path);
        unlink(control_path);
        rmdir(tmpdir);
        tmpdir[0] = 0;
    }
}

static void on_signal(int sig) {
    stop_refd();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void start_refd(void) {
    strcpy(tmpdir, "/tmp/goxelpool-bench.XXXXXX");
    if (!mkdtemp(tmpdir)) die("mkdtemp: %s", strerror(errno));
    snprintf(socket_path, sizeof socket_path, "%s/refd.sock", tmpdir);
    refd_pid = fork();
    if (refd_pid < 0) die("fork: %s", strerror(errno));
    if (refd_pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); }
        execlp(opt_refd, opt_refd, "--socket", socket_path, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        int status;
        if (waitpid(refd_pid, &status, WNOHANG) == refd_pid) {
            refd_pid = -1;
            die("%s exited at start (use --refd PATH or SOCKET=/path)", opt_refd);
        }
        int fd = unix_connect(socket_path);
        if (fd >= 0) { close(fd); return; }
        sleep_s(0.05);
    }
    die("%s did not listen within 10 s", opt_refd);
}

/* One JSON-RPC call on the control socket; returns 0 on a result. */
static int control_call(const char *method, json_t *params) {
    int fd = unix_connect(control_path);
    if (fd < 0) { json_decref(params); return -1; }
    json_t *req = json_pack("{s:s,s:s,s:o,s:i}", "jsonrpc", "2.0", "method", method, "params", params, "id", 1);
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    size_t len = strlen(text);
    int ok = send(fd, text, len, MSG_NOSIGNAL) == (ssize_t)len && send(fd, "\n", 1, MSG_NOSIGNAL) == 1;
    free(text);
    char buf[4096];
    size_t have = 0;
    while (ok && have < sizeof buf - 1) {
        ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (n <= 0) { ok = 0; break; }
        have += (size_t)n;
        if (memchr(buf, '\n', have)) break;
    }
    close(fd);
    if (!ok) return -1;
    json_t *ans = json_loadb(buf, have, JSON_DISABLE_EOF_CHECK, NULL);
    int rc = ans && json_object_get(ans, "result") ? 0 : -1;
    json_decref(ans);
    return rc;
}

static int current_latency = -1;

static void set_latency(int ms) {
    if (ms == current_latency) return;
    if (control_call("refd.set_faults", json_pack("{s:i}", "latency_ms", ms)) != 0)
        die("refd.set_faults on %s failed", control_path);
    current_latency = ms;
}

/* ----------------------------------------------------------------------------------------------
 * The raw baseline client: one blocking connection, jansson both ways
 * -------------------------------------------------------------------------------------------- */

typedef struct {
    int fd;
    json_int_t next_id;
    size_t start, end;
    char wbuf[4096];
    char rbuf[65536];
} raw_conn;

static int raw_open(raw_conn *c) {
    c->fd = unix_connect(socket_path);
    c->next_id = 1;
    c->start = c->end = 0;
    return c->fd >= 0 ? 0 : -1;
}

/* Returns 0 when the answer carries our id and a result. */
static int raw_call(raw_conn *c, const char *method, json_t *params) {
    json_int_t id = c->next_id++;
    json_t *req = json_pack("{s:s,s:s,s:O,s:I}", "jsonrpc", "2.0", "method", method, "params", params, "id", id);
    if (!req) return -1;
    size_t n = json_dumpb(req, c->wbuf, sizeof c->wbuf - 1, JSON_COMPACT);
    json_decref(req);
    if (n == 0 || n >= sizeof c->wbuf - 1) return -1;
    c->wbuf[n++] = '\n';
    for (size_t off = 0; off < n;) {
        ssize_t w = send(c->fd, c->wbuf + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    for (;;) {
        char *nl = c->end > c->start ? memchr(c->rbuf + c->start, '\n', c->end - c->start) : NULL;
        if (nl) {
            size_t len = (size_t)(nl - (c->rbuf + c->start));
            json_t *ans = json_loadb(c->rbuf + c->start, len, 0, NULL);
            c->start += len + 1;
            if (c->start == c->end) c->start = c->end = 0;
            int ok = ans && json_is_object(ans) && json_integer_value(json_object_get(ans, "id")) == id &&
                     json_object_get(ans, "result") != NULL;
            json_decref(ans);
            return ok ? 0 : -1;
        }
        if (c->start > 0) {
            memmove(c->rbuf, c->rbuf + c->start, c->end - c->start);
            c->end -= c->start;
            c->start = 0;
        }
        if (c->end == sizeof c->rbuf) return -1;
        ssize_t r = recv(c->fd, c->rbuf + c->end, sizeof c->rbuf - c->end, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        c->end += (size_t)r;
    }
}

/* ----------------------------------------------------------------------------------------------
 * Library clients
 * -------------------------------------------------------------------------------------------- */

static json_int_t stat_int(goxelpool_client *client, const char *key) {
    json_t *stats = goxelpool_stats(client);
    json_int_t v = json_integer_value(json_object_get(stats, key));
    json_decref(stats);
    return v;
}

/* A client of `cfg` (stolen) once `want` connections are open. */
static goxelpool_client *lib_open_config(json_t *cfg, int want) {
    goxelpool_client *client = NULL;
    char err[256];
    if (goxelpool_client_new(cfg, &client, err, sizeof err) != GOXELPOOL_OK) die("goxelpool_client_new: %s", err);
    json_decref(cfg);
    double until = now_s() + 20;
    while (stat_int(client, "total_connections") < want) {
        if (now_s() > until) die("%s", "the pool did not open its connections within 20 s");
        sleep_s(0.005);
    }
    return client;
}

/* The benchmark's client configuration (new reference). pooling: 1 pooled, 0 single-connection
 * mode. health_ms: 0 leaves the default (30 s). callbacks: "thread" or "dispatch". */
static json_t *lib_config(int pooling, int min_conns, int max_conns, int health_ms, const char *callbacks) {
    json_t *cfg = json_pack("{s:s, s:b, s:i, s:s, s:{s:i, s:i, s:i}}", "socket_path", socket_path, "pooling", pooling,
                            "timeout_ms", 30000, "callbacks", callbacks, "pool", "min_connections", min_conns,
                            "max_connections", max_conns, "max_waiters", 4096);
    if (health_ms > 0) json_object_set_new(cfg, "health", json_pack("{s:i}", "interval_ms", health_ms));
    return cfg;
}

static goxelpool_client *lib_open_with(int pooling, int min_conns, int max_conns, int health_ms, const char *callbacks) {
    return lib_open_config(lib_config(pooling, min_conns, max_conns, health_ms, callbacks), pooling ? min_conns : 1);
}

static goxelpool_client *lib_open(int pooling, int min_conns, int max_conns, int health_ms) {
    return lib_open_with(pooling, min_conns, max_conns, health_ms, "thread");
}

/* ----------------------------------------------------------------------------------------------
 * Throughput runs
 * -------------------------------------------------------------------------------------------- */

enum { MODE_RAW, MODE_POOL, MODE_SINGLE, MODE_ACQ, MODE_ASYNC_THREAD, MODE_ASYNC_DISPATCH };
static const char *mode_names[] = {"raw", "pool", "single", "acquire", "thread", "dispatch"};

enum { PHASE_WARMUP, PHASE_MEASURE, PHASE_STOP };

typedef struct {
    int mode;
    goxelpool_client *client;
    _Atomic int *phase;
    _Atomic long *budget; /* when not NULL: stop after this many calls in total */
    raw_conn *raw;
    json_t *params;
    uint32_t *lat;        /* measured latencies, ns (saturated at UINT32_MAX) */
    size_t nlat, caplat;
    long calls, errors;
    long steady;          /* interleaved: calls that ended before their slice did (not in its tail) */
    int index;
} worker;

static void record(worker *w, uint64_t ns) {
    if (w->nlat == w->caplat) {
        w->caplat = w->caplat ? w->caplat * 2 : 4096;
        w->lat = realloc(w->lat, w->caplat * sizeof *w->lat);
        if (!w->lat) die("%s", "out of memory");
    }
    w->lat[w->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int one_call(worker *w) {
    switch (w->mode) {
    case MODE_RAW: return raw_call(w->raw, METHOD, w->params);
    case MODE_ACQ: {
        /* Refused after the lease: params jansson cannot encode. No I/O. */
        goxelpool_status st = goxelpool_call(w->client, METHOD, w->params, -1, NULL, NULL);
        return st == GOXELPOOL_EINVAL ? 0 : -1;
    }
    default: {
        json_t *result = NULL;
        goxelpool_status st = goxelpool_call(w->client, METHOD, w->params, -1, &result, NULL);
        if (st == GOXELPOOL_OK) { json_decref(result); return 0; }
        return -1;
    }
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    int measure_latency = w->mode != MODE_ACQ;
    for (;;) {
        int phase = atomic_load_explicit(w->phase, memory_order_relaxed);
        if (phase == PHASE_STOP) break;
        if (w->budget && atomic_fetch_sub_explicit(w->budget, 1, memory_order_relaxed) <= 0) break;
        uint64_t t0 = measure_latency ? now_ns() : 0;
        int rc = one_call(w);
        if (phase == PHASE_MEASURE) {
            if (rc == 0) {
                w->calls++;
                if (measure_latency) record(w, now_ns() - t0);
            } else {
                w->errors++;
            }
        }
    }
    return NULL;
}

typedef struct {
    double calls_s, p50_us, p99_us, max_us, cpu_us_call, ns_per_op;
    double switches_call; /* async rows: context switches of the whole process per call */
    double calls, errors;
    double seconds;
} run_result;

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static json_t *make_params(int i, int bad) {
    if (bad) {
        /* A string that is not valid UTF-8: jansson refuses to encode it, so the library refuses
         * the call after leasing a connection and before any I/O. */
        json_t *p = json_array();
        json_array_append_new(p, json_stringn_nocheck("\xff", 1));
        return p;
    }
    return json_pack("[i,i,i]", i, 2, 3);
}

static long context_switches(void);

/* Runs `threads` workers for warm-up + duration. client NULL: raw baseline. */
static run_result run_threads(int mode, goxelpool_client *client, int threads, double duration) {
    worker *ws = calloc((size_t)threads, sizeof *ws);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    raw_conn *raws = mode == MODE_RAW ? calloc((size_t)threads, sizeof *raws) : NULL;
    _Atomic int phase = PHASE_WARMUP;
    for (int i = 0; i < threads; i++) {
        ws[i].mode = mode;
        ws[i].client = client;
        ws[i].phase = &phase;
        ws[i].params = make_params(i, mode == MODE_ACQ);
        ws[i].index = i;
        if (raws) {
            if (raw_open(&raws[i]) != 0) die("raw connect to %s failed", socket_path);
            ws[i].raw = &raws[i];
        }
    }
    for (int i = 0; i < threads; i++) pthread_create(&tids[i], NULL, worker_main, &ws[i]);
    sleep_s(opt_warmup);
    double c0 = cpu_s(), t0 = now_s();
    long s0 = context_switches();
    atomic_store(&phase, PHASE_MEASURE);
    sleep_s(duration);
    atomic_store(&phase, PHASE_STOP);
    double c1 = cpu_s(), t1 = now_s();
    long s1 = context_switches();
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);

    run_result r = {0};
    size_t total = 0;
    for (int i = 0; i < threads; i++) { r.calls += ws[i].calls; r.errors += ws[i].errors; total += ws[i].nlat; }
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        if (ws[i].nlat) memcpy(all + k, ws[i].lat, ws[i].nlat * sizeof *all);
        k += ws[i].nlat;
        free(ws[i].lat);
        json_decref(ws[i].params);
        if (raws) close(raws[i].fd);
    }
    qsort(all, total, sizeof *all, cmp_u32);
    r.seconds = t1 - t0;
    r.calls_s = (double)r.calls / r.seconds;
    if (total) {
        r.p50_us = all[total / 2] / 1e3;
        r.p99_us = all[(size_t)((double)total * 0.99)] / 1e3;
        r.max_us = all[total - 1] / 1e3;
    }
    r.cpu_us_call = r.calls ? (c1 - c0) * 1e6 / (double)r.calls : 0;
    r.ns_per_op = r.calls ? r.seconds * 1e9 / (double)r.calls : 0;
    r.switches_call = r.calls ? (double)(s1 - s0) / r.calls : 0;
    free(all);
    free(ws);
    free(tids);
    free(raws);
    return r;
}

/* ----------------------------------------------------------------------------------------------
 * Async calls: N kept in flight with goxelpool_call_async, each callback starting the next one.
 * thread: "callbacks": "thread", callbacks on library threads (the main thread only sleeps).
 * dispatch: "callbacks": "dispatch", the main thread runs an epoll loop on goxelpool_event_fd and
 * calls goxelpool_dispatch (level-triggered), so every callback runs there.
 * -------------------------------------------------------------------------------------------- */

typedef struct {
    goxelpool_client *client;
    _Atomic int phase;
    _Atomic int in_flight;
    pthread_mutex_t lock; /* thread mode: callbacks run on several library threads */
    worker stats;         /* calls, errors, latencies of the measured phase */
} async_bench;

typedef struct {
    async_bench *bench;
    json_t *params;
    uint64_t started_ns;
} async_slot;

/* Voluntary and involuntary context switches of every thread of this process. */
static long context_switches(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_nvcsw + u.ru_nivcsw;
}

static void async_done(goxelpool_status status, const json_t *result, const json_t *rpc_error, void *userdata);

static int async_start(async_slot *slot) {
    slot->started_ns = now_ns();
    return goxelpool_call_async(slot->bench->client, METHOD, slot->params, -1, async_done, slot) == GOXELPOOL_OK ? 0 : -1;
}

static void async_done(goxelpool_status status, const json_t *result, const json_t *rpc_error, void *userdata) {
    (void)result;
    (void)rpc_error;
    async_slot *slot = userdata;
    async_bench *b = slot->bench;
    uint64_t ns = now_ns() - slot->started_ns;
    int phase = atomic_load_explicit(&b->phase, memory_order_relaxed);
    if (phase == PHASE_MEASURE) {
        pthread_mutex_lock(&b->lock);
        if (status == GOXELPOOL_OK) { b->stats.calls++; record(&b->stats, ns); }
        else b->stats.errors++;
        pthread_mutex_unlock(&b->lock);
    }
    if (phase == PHASE_STOP || async_start(slot) != 0) atomic_fetch_sub(&b->in_flight, 1);
}

static run_result run_async(int dispatch, int conns, int inflight, double duration) {
    async_bench b = {0};
    pthread_mutex_init(&b.lock, NULL);
    b.client = lib_open_with(1, conns, conns, 0, dispatch ? "dispatch" : "thread");
    async_slot *slots = calloc((size_t)inflight, sizeof *slots);
    int ep = -1, fd = -1;
    if (dispatch) {
        fd = goxelpool_event_fd(b.client);
        ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event watch = {.events = EPOLLIN, .data.fd = fd};
        if (fd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &watch) != 0) die("%s", "cannot watch the event fd");
    }
    atomic_store(&b.phase, PHASE_WARMUP);
    for (int i = 0; i < inflight; i++) {
        slots[i].bench = &b;
        slots[i].params = make_params(i, 0);
        atomic_fetch_add(&b.in_flight, 1);
        if (async_start(&slots[i]) != 0) die("%s", "goxelpool_call_async refused a call");
    }
    double t_measure = now_s() + opt_warmup, t_stop = t_measure + duration, deadline = t_stop + 30;
    double c0 = 0, c1 = 0, t0 = 0, t1 = 0;
    long s0 = 0, s1 = 0;
    int phase = PHASE_WARMUP;
    while (atomic_load(&b.in_flight) > 0 && now_s() < deadline) {
        double now = now_s();
        if (phase == PHASE_WARMUP && now >= t_measure) {
            c0 = cpu_s(), t0 = now_s(), s0 = context_switches();
            atomic_store(&b.phase, phase = PHASE_MEASURE);
        } else if (phase == PHASE_MEASURE && now >= t_stop) {
            atomic_store(&b.phase, phase = PHASE_STOP);
            c1 = cpu_s(), t1 = now_s(), s1 = context_switches();
        }
        if (dispatch) {
            struct epoll_event ready;
            if (epoll_wait(ep, &ready, 1, 5) > 0 && goxelpool_dispatch(b.client, 0, NULL) != GOXELPOOL_OK)
                die("goxelpool_dispatch: %s", goxelpool_last_error());
        } else {
            sleep_s(0.002);
        }
    }
    if (atomic_load(&b.in_flight) > 0) die("%s", "async calls still in flight 30 s after the end of the run");
    if (ep >= 0) close(ep);
    goxelpool_client_free(b.client);

    run_result r = {0};
    r.calls = (double)b.stats.calls;
    r.errors = (double)b.stats.errors;
    r.seconds = t1 - t0;
    r.calls_s = r.seconds > 0 ? r.calls / r.seconds : 0;
    size_t total = b.stats.nlat;
    if (total) {
        qsort(b.stats.lat, total, sizeof *b.stats.lat, cmp_u32);
        r.p50_us = b.stats.lat[total / 2] / 1e3;
        r.p99_us = b.stats.lat[(size_t)((double)total * 0.99)] / 1e3;
        r.max_us = b.stats.lat[total - 1] / 1e3;
    }
    r.cpu_us_call = r.calls > 0 ? (c1 - c0) * 1e6 / r.calls : 0;
    r.switches_call = r.calls > 0 ? (double)(s1 - s0) / r.calls : 0;
    for (int i = 0; i < inflight; i++) json_decref(slots[i].params);
    free(slots);
    free(b.stats.lat);
    pthread_mutex_destroy(&b.lock);
    return r;
}

/* ----------------------------------------------------------------------------------------------
 * Several daemons: aggregate throughput over three goxel-refd (two Unix, one TCP loopback)
 * -------------------------------------------------------------------------------------------- */

typedef struct {
    double one_s, three_s;   /* calls/s with one daemon, with three */
    long per_daemon[3];      /* calls each of the three daemons answered */
    int ok;
} endpoints_result;

/* A free TCP port on 127.0.0.1 (bound, read, released). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* Starts a goxel-refd with 2 ms latency on PATH (and on 127.0.0.1:PORT when port > 0). */
static pid_t spawn_latency_refd(const char *path, int port) {
    char tcp[32];
    snprintf(tcp, sizeof tcp, "127.0.0.1:%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); }
        if (port > 0) execlp(opt_refd, opt_refd, "--socket", path, "--latency-ms", "2", "--tcp", tcp, (char *)NULL);
        else execlp(opt_refd, opt_refd, "--socket", path, "--latency-ms", "2", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && pid > 0; i++) {
        int fd = unix_connect(path);
        if (fd >= 0) { close(fd); return pid; }
        sleep_s(0.05);
    }
    return pid;
}

static long refd_requests(const char *path) {
    char ctl[128];
    snprintf(ctl, sizeof ctl, "%s.ctl", path);
    int fd = unix_connect(ctl);
    if (fd < 0) return -1;
    const char *req = "{\"jsonrpc\":\"2.0\",\"method\":\"refd.stats\",\"id\":1}\n";
    long n = -1;
    char buf[1024];
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) > 0) {
        ssize_t got = recv(fd, buf, sizeof buf - 1, 0);
        json_t *ans = got > 0 ? json_loadb(buf, (size_t)got, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
        n = (long)json_integer_value(json_object_get(json_object_get(ans, "result"), "requests"));
        json_decref(ans);
    }
    close(fd);
    return n;
}

/* 24 threads, 8 connections per daemon, 2 ms daemon latency: one daemon, then three. */
static endpoints_result endpoints_run(double duration) {
    endpoints_result r = {0};
    char dir[64] = "/tmp/goxelpool-bench-ep.XXXXXX", paths[3][128];
    if (!mkdtemp(dir)) return r;
    int port = free_port();
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/d%d.sock", dir, i);
        pids[i] = spawn_latency_refd(paths[i], i == 2 ? port : 0);
    }
    char tcp[48];
    snprintf(tcp, sizeof tcp, "tcp:127.0.0.1:%d", port);
    json_t *one = json_pack("{s:[s], s:i, s:{s:i, s:i, s:i}}", "endpoints", paths[0], "timeout_ms", 30000, "pool",
                            "min_connections", 8, "max_connections", 8, "max_waiters", 4096);
    json_t *three = json_pack("{s:[s,s,s], s:i, s:{s:i, s:i, s:i}}", "endpoints", paths[0], paths[1], tcp,
                              "timeout_ms", 30000, "pool", "min_connections", 8, "max_connections", 8, "max_waiters", 4096);
    json_t *configs[2] = {one, three};
    double results[2] = {0, 0};
    long before[3];
    for (int c = 0; c < 2; c++) {
        goxelpool_client *client = NULL;
        char err[256];
        if (goxelpool_client_new(configs[c], &client, err, sizeof err) != GOXELPOOL_OK) break;
        double until = now_s() + 10;
        while (stat_int(client, "total_connections") < (c ? 24 : 8) && now_s() < until) sleep_s(0.01);
        if (c == 1) for (int i = 0; i < 3; i++) before[i] = refd_requests(paths[i]);
        run_result rr = run_threads(MODE_POOL, client, 24, duration);
        results[c] = rr.errors ? 0 : rr.calls_s;
        if (c == 1) for (int i = 0; i < 3; i++) r.per_daemon[i] = refd_requests(paths[i]) - before[i];
        goxelpool_client_free(client);
    }
    json_decref(one);
    json_decref(three);
    for (int i = 0; i < 3; i++) {
        if (pids[i] > 0) { kill(pids[i], SIGTERM); waitpid(pids[i], NULL, 0); }
        unlink(paths[i]);
    }
    rmdir(dir);
    r.one_s = results[0];
    r.three_s = results[1];
    r.ok = results[0] > 0 && results[1] > 0;
    return r;
}

/* Health checks on idle connections: 10 connections, no calls, interval 1 s, for `seconds`:
 * how many checks ran and how much client CPU they cost (under load there are none: every
 * connection serves a call within the interval and real calls feed the health figures). */
static void health_idle_cost(double seconds, json_int_t *checks, double *cpu_ms) {
    goxelpool_client *client = lib_open(1, 10, 10, 1000);
    json_int_t c0 = stat_int(client, "health_checks");
    double cpu0 = cpu_s();
    sleep_s(seconds);
    *cpu_ms = (cpu_s() - cpu0) * 1e3;
    *checks = stat_int(client, "health_checks") - c0;
    goxelpool_client_free(client);
}

/* ----------------------------------------------------------------------------------------------
 * Pool of 10, interleaved: the raw client and the pools take turns in short slices, each mode on
 * threads of its own, so each slice of the pool has a slice of its baseline next to it in time. On this
 * shared 2-CPU machine the load moves by ±15 % over seconds (two runs of the same program 1 s
 * apart); rows run 2 s apart each cannot tell 5 % apart, slices a quarter-second apart can.
 * A cycle runs every mode once, in a random order (the same in every run), so neither a slow
 * drift nor a mode's place in the cycle favours one mode. Per mode: calls/s and CPU per call
 * over all its slices; against its baseline: the median of the per-cycle ratios and CPU
 * differences, with a 95 % confidence interval and quartiles. "raw-again" is the baseline
 * measured a second time (an A/A comparison): its spread is this method's noise in the same run.
 * -------------------------------------------------------------------------------------------- */

#define IL_MAX_MODES 16
#define IL_MAX_CYCLES 64

static int opt_cycles = 40;          /* --cycles N: interleaved cycles per experiment */
static double opt_slice = 0.25;      /* --slice SECONDS: one mode's turn */
/* --shared-threads: every mode on threads 0..T-1, as until run 15. By default each mode has
 * threads of its own: a thread's past changes what its calls cost (the raw client on threads
 * that also ran the pool's 32-thread slices was slower than on threads of its own, in the same
 * cycles), so modes sharing threads would measure each other. */
static int opt_shared_threads = 0;
/* --thread-history: at 32 threads also the raw client with 10 threads on the pool row's first 10
 * threads ("raw-on-pool-threads"), against the raw client on threads of its own: what running
 * the pool does to its threads' later calls (the pool row then runs on threads that also run
 * that mode, so it is not clean: off by default). */
static int opt_thread_history = 0;
/* --decompose: the 32-thread experiment with other rows, to tell apart what its pool row pays
 * for: more threads than connections, callers that wait, and hand-offs (see il_decomposition). */
static int opt_decompose = 0;
/* --one-cpu: this process and the daemon it starts run on CPU 0 only. With one caller the pool's
 * cost per call is a microsecond, below what a two-CPU virtual machine's cross-CPU wake-ups let
 * timing see; on one CPU the client and the daemon take turns and nothing else moves. */
static int opt_one_cpu = 0;
static char *il_table;               /* the lines of the table, printed with the other tables */
static size_t il_table_len;
static FILE *il_out;

static void emit(json_t *obj);

/* The raw connections of a pool written by hand, and the stack of the free ones. */
typedef struct {
    raw_conn *conns;
    raw_conn **free_list;
    int nconns, nfree;
} raw_stack;

static void raw_stack_open(raw_stack *s, int nconns) {
    s->conns = calloc((size_t)nconns, sizeof *s->conns);
    s->free_list = calloc((size_t)nconns, sizeof *s->free_list);
    if (!s->conns || !s->free_list) die("%s", "out of memory");
    for (int i = 0; i < nconns; i++) {
        if (raw_open(&s->conns[i]) != 0) die("raw connect to %s failed", socket_path);
        s->free_list[s->nfree++] = &s->conns[i];
    }
    s->nconns = nconns;
}

static void raw_stack_close(raw_stack *s) {
    for (int i = 0; i < s->nconns; i++) close(s->conns[i].fd);
    free(s->conns);
    free(s->free_list);
}

/* The pool a user would write by hand for more threads than connections: a mutex, a condition
 * variable and a stack of raw connections (no fairness beyond the condition variable's). */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t freed;
    raw_stack stack;
} hand_pool;

/* A free connection, waiting for one; with `active`, NULL once *active is 0 and none is free. */
static raw_conn *hand_take(hand_pool *h, _Atomic int *active) {
    pthread_mutex_lock(&h->lock);
    raw_stack *stack = &h->stack;
    while (stack->nfree == 0 && (!active || atomic_load(active))) pthread_cond_wait(&h->freed, &h->lock);
    raw_conn *c = stack->nfree > 0 ? stack->free_list[--stack->nfree] : NULL;
    pthread_mutex_unlock(&h->lock);
    return c;
}

static void hand_give_back(hand_pool *h, raw_conn *c) {
    pthread_mutex_lock(&h->lock);
    h->stack.free_list[h->stack.nfree++] = c;
    pthread_cond_signal(&h->freed);
    pthread_mutex_unlock(&h->lock);
}

static int hand_call(hand_pool *h, const char *method, json_t *params) {
    raw_conn *c = hand_take(h, NULL);
    int rc = raw_call(c, method, params);
    hand_give_back(h, c);
    return rc;
}

/* The library's fairness written by hand, as cheaply as C allows: while callers wait, a thread
 * keeps its connection for up to FAIR_STREAK calls in a row and FAIR_WINDOW_NS after it got it
 * (the library's defaults, reuse_while_waiting 16 and reuse_window_us 3000), then hands it to the
 * longest-waiting caller (FIFO) and queues for its next call behind the others. A waiter sleeps
 * on a futex word of its own (as the library's waiters do): one system call to wake it, and the
 * pool's mutex is never taken by the woken thread. */
enum { FAIR_STREAK = 16 };
#define FAIR_WINDOW_NS 3000000ull

typedef struct fair_waiter {
    _Atomic uint32_t word; /* 0: asleep or about to be; 1: `got` is set */
    raw_conn *got;
    struct fair_waiter *next;
} fair_waiter;

typedef struct {
    pthread_mutex_t lock;
    raw_stack stack;
    fair_waiter *head, *tail; /* FIFO of waiting callers (their own stack frames) */
    _Atomic int waiting;      /* read without the lock by holders deciding to hand over */
} fair_pool;

static raw_conn *fair_take(fair_pool *p) {
    pthread_mutex_lock(&p->lock);
    if (p->stack.nfree > 0) { /* a free connection means nobody waits: gives go to waiters first */
        raw_conn *c = p->stack.free_list[--p->stack.nfree];
        pthread_mutex_unlock(&p->lock);
        return c;
    }
    fair_waiter w = {.got = NULL, .next = NULL};
    atomic_init(&w.word, 0);
    if (p->tail) p->tail->next = &w;
    else p->head = &w;
    p->tail = &w;
    atomic_fetch_add(&p->waiting, 1);
    pthread_mutex_unlock(&p->lock);
    while (atomic_load_explicit(&w.word, memory_order_acquire) == 0)
        syscall(SYS_futex, &w.word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    return w.got;
}

static void fair_give(fair_pool *p, raw_conn *c) {
    pthread_mutex_lock(&p->lock);
    fair_waiter *w = p->head;
    if (w) {
        p->head = w->next;
        if (!p->head) p->tail = NULL;
        atomic_fetch_sub(&p->waiting, 1);
    } else {
        p->stack.free_list[p->stack.nfree++] = c;
    }
    pthread_mutex_unlock(&p->lock);
    if (!w) return;
    w->got = c;
    /* The waiter may return (and its frame go) as soon as the word is 1: the wake after that is
     * at worst a spurious one for whoever sleeps on that address next (futex users tolerate it). */
    atomic_store_explicit(&w->word, 1, memory_order_release);
    syscall(SYS_futex, &w->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static fair_pool *fair_pool_open(int nconns) {
    fair_pool *p = calloc(1, sizeof *p);
    if (!p) die("%s", "out of memory");
    pthread_mutex_init(&p->lock, NULL);
    raw_stack_open(&p->stack, nconns);
    return p;
}

static void fair_pool_free(fair_pool *p) {
    if (!p) return;
    raw_stack_close(&p->stack);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static hand_pool *hand_pool_open(int nconns) {
    hand_pool *h = calloc(1, sizeof *h);
    if (!h) die("%s", "out of memory");
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->freed, NULL);
    raw_stack_open(&h->stack, nconns);
    return h;
}

static void hand_pool_free(hand_pool *h) {
    if (!h) return;
    raw_stack_close(&h->stack);
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->freed);
    free(h);
}

typedef struct {
    const char *name;        /* raw, raw-again, pool, pool-2..10, pool-locked, pool-fifo, hand, ... */
    int threads, conns;
    int callers;             /* 0: every thread calls; else only the first `callers`, the rest
                              * wait for the slice to end (threads that exist and sleep) */
    int first;               /* its threads: first .. first + threads - 1 */
    int slot;                /* the mode whose threads these are (itself, unless borrowed) */
    goxelpool_client *client; /* the library's client, or NULL: */
    hand_pool *hand;         /* the hand-written pool, or NULL: the raw client, thread i on raw connection i */
    int per_slice;           /* with hand: a thread holds one of the hand pool's connections for a
                              * whole slice (which one changes from slice to slice), not per call */
    fair_pool *fair;         /* or the hand-written pool with the library's fairness */
    int base;                /* mode compared with, or -1 */
    double calls[IL_MAX_CYCLES], errors[IL_MAX_CYCLES], seconds[IL_MAX_CYCLES], cpu[IL_MAX_CYCLES],
        switches[IL_MAX_CYCLES], daemon_cpu[IL_MAX_CYCLES],
        steady_calls[IL_MAX_CYCLES], steady_seconds[IL_MAX_CYCLES];
} il_mode;

typedef struct {
    il_mode modes[IL_MAX_MODES];
    int nmodes, nthreads;
    raw_conn *raws;          /* nthreads; open for the threads of raw modes (fd -1 otherwise) */
    pthread_mutex_t lock;
    /* One per mode (threads of their own: only the mode's threads wake for its slice), or only
     * [0] (--shared-threads). */
    pthread_cond_t go[IL_MAX_MODES], parked_cv, ended_cv;
    int generation[IL_MAX_MODES], current, parked, stop;
    _Atomic int active;
} il_bench;

/* Whether thread `index` of mode `mode` calls (the others of a mode with `callers` sleep). */
static int il_calls(const il_mode *mode, int index) {
    return mode->callers == 0 || index < mode->first + mode->callers;
}

/* Which go / generation slot a slice of mode m uses. */
static int il_slot(const il_bench *b, int m) { return opt_shared_threads ? 0 : b->modes[m].slot; }

/* How many threads a slice of mode m wakes (each parks again when it ends). */
static int il_woken(const il_bench *b, int m) {
    return opt_shared_threads ? b->nthreads : b->modes[b->modes[m].slot].threads;
}

typedef struct {
    il_bench *b;
    int index;
    json_t *params;
    worker stats[IL_MAX_MODES]; /* calls, errors and latencies per mode, this thread's */
} il_worker;

static void *il_worker_main(void *arg) {
    il_worker *w = arg;
    il_bench *b = w->b;
    int slot = 0, seen = 0;
    if (!opt_shared_threads)
        for (int m = 0; m < b->nmodes; m++)
            if (b->modes[m].slot == m && w->index >= b->modes[m].first &&
                w->index < b->modes[m].first + b->modes[m].threads) slot = m;
    /* Named after its mode, so a profile (perf report --sort comm) tells the modes apart. */
    char name[16];
    snprintf(name, sizeof name, "%d:%s", slot, b->modes[slot].name);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&b->lock);
    for (;;) {
        while (b->generation[slot] == seen && !b->stop) pthread_cond_wait(&b->go[slot], &b->lock);
        if (b->stop) break;
        seen = b->generation[slot];
        int m = b->current;
        pthread_mutex_unlock(&b->lock);
        const il_mode *mode = &b->modes[m];
        worker *s = &w->stats[m];
        int in_mode = w->index >= mode->first && w->index < mode->first + mode->threads;
        if (in_mode && !il_calls(mode, w->index)) {
            pthread_mutex_lock(&b->lock);
            while (atomic_load(&b->active)) pthread_cond_wait(&b->ended_cv, &b->lock);
            pthread_mutex_unlock(&b->lock);
        } else if (in_mode) {
            /* per_slice: one connection for the whole slice (none: the slice ended first). */
            raw_conn *held = mode->per_slice ? hand_take(mode->hand, &b->active) : NULL;
            int streak = 0;
            uint64_t got_at = 0;
            while ((held || !mode->per_slice) && atomic_load_explicit(&b->active, memory_order_relaxed)) {
                uint64_t t0 = now_ns(); /* a call's latency includes its wait, as the pool's do */
                if (mode->fair && !held) {
                    held = fair_take(mode->fair);
                    streak = 0;
                    got_at = now_ns();
                }
                int rc;
                if (mode->client) {
                    json_t *result = NULL;
                    rc = goxelpool_call(mode->client, METHOD, w->params, -1, &result, NULL) == GOXELPOOL_OK ? 0 : -1;
                    json_decref(result);
                } else if (held) {
                    rc = raw_call(held, METHOD, w->params);
                } else if (mode->hand) {
                    rc = hand_call(mode->hand, METHOD, w->params);
                } else {
                    rc = raw_call(&b->raws[w->index], METHOD, w->params);
                }
                uint64_t t1 = now_ns();
                if (rc == 0) {
                    s->calls++;
                    if (atomic_load_explicit(&b->active, memory_order_relaxed)) s->steady++;
                    record(s, t1 - t0);
                }
                else s->errors++;
                if (mode->fair && (++streak >= FAIR_STREAK || t1 - got_at >= FAIR_WINDOW_NS) &&
                    atomic_load_explicit(&mode->fair->waiting, memory_order_relaxed) > 0) {
                    fair_give(mode->fair, held);
                    held = NULL;
                }
            }
            if (held && mode->fair) fair_give(mode->fair, held);
            else if (held) hand_give_back(mode->hand, held);
        }
        pthread_mutex_lock(&b->lock);
        if (++b->parked == il_woken(b, m)) pthread_cond_signal(&b->parked_cv);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

enum { IL_CALLS, IL_ERRORS, IL_STEADY };

static double il_sum(il_worker *ws, int n, int m, int what) {
    double v = 0;
    for (int i = 0; i < n; i++) {
        const worker *s = &ws[i].stats[m];
        v += (double)(what == IL_ERRORS ? s->errors : what == IL_STEADY ? s->steady : s->calls);
    }
    return v;
}

/* One turn of mode m; cycle < 0 is the warm-up, not kept. */
static void il_slice(il_bench *b, il_worker *ws, int m, int cycle) {
    double calls0 = il_sum(ws, b->nthreads, m, IL_CALLS), errors0 = il_sum(ws, b->nthreads, m, IL_ERRORS);
    double steady0 = il_sum(ws, b->nthreads, m, IL_STEADY);
    pthread_mutex_lock(&b->lock);
    b->current = m;
    b->parked = 0;
    atomic_store(&b->active, 1);
    b->generation[il_slot(b, m)]++;
    double d0 = daemon_cpu_s(); /* read from /proc before the slice's clock starts, d1 after it stops */
    double t0 = now_s(), c0 = cpu_s();
    long s0 = context_switches();
    pthread_cond_broadcast(&b->go[il_slot(b, m)]);
    pthread_mutex_unlock(&b->lock);
    sleep_s(cycle < 0 ? 0.1 : opt_slice);
    atomic_store(&b->active, 0);
    double ended = now_s();
    pthread_mutex_lock(&b->lock);
    pthread_cond_broadcast(&b->ended_cv); /* threads of the mode that do not call */
    while (b->parked < il_woken(b, m)) pthread_cond_wait(&b->parked_cv, &b->lock);
    pthread_mutex_unlock(&b->lock);
    double t1 = now_s(), c1 = cpu_s(), d1 = daemon_cpu_s();
    long s1 = context_switches();
    if (cycle < 0) return;
    il_mode *mode = &b->modes[m];
    mode->calls[cycle] = il_sum(ws, b->nthreads, m, IL_CALLS) - calls0;
    mode->errors[cycle] = il_sum(ws, b->nthreads, m, IL_ERRORS) - errors0;
    /* Without the slice's tail (calls that ended after it, waiters still served): what a mode
     * does while it runs, apart from how fast it stops. */
    mode->steady_calls[cycle] = il_sum(ws, b->nthreads, m, IL_STEADY) - steady0;
    mode->steady_seconds[cycle] = ended - t0;
    mode->seconds[cycle] = t1 - t0;
    mode->cpu[cycle] = c1 - c0;
    mode->switches[cycle] = (double)(s1 - s0);
    mode->daemon_cpu[cycle] = d0 >= 0 && d1 >= 0 ? d1 - d0 : -1;
}

/* The p-quantile (0..1) of v[0..n), linear between neighbours; v is sorted in place. */
static double quantile(double *v, int n, double p) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double at = p * (n - 1);
    int lo = (int)at;
    return lo + 1 < n ? v[lo] + (at - lo) * (v[lo + 1] - v[lo]) : v[lo];
}

/* A 95 % confidence interval of the median of v[0..n) (sorted in place): the order statistics
 * n/2 ∓ 0.98·√n (the binomial's normal approximation); the whole range below 6 values. */
static void median_ci95(double *v, int n, double *low, double *high) {
    *low = *high = 0;
    if (n <= 0) return;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double half = 0.98 * sqrt((double)n);
    int lo = (int)floor(n / 2.0 - half), hi = (int)ceil(n / 2.0 + half) - 1;
    if (n < 6 || lo < 0) lo = 0;
    if (n < 6 || hi > n - 1) hi = n - 1;
    *low = v[lo];
    *high = v[hi];
}

static json_t *json_reals(const double *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_real(v[i]));
    return a;
}

static double il_total(const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return s;
}

/* Prints one table line per mode and emits its JSON row. The modes' latencies are in ws. */
static void il_report(il_bench *b, il_worker *ws, int cycles) {
    for (int m = 0; m < b->nmodes; m++) {
        il_mode *mode = &b->modes[m];
        double calls = il_total(mode->calls, cycles), seconds = il_total(mode->seconds, cycles);
        double cpu_us = calls > 0 ? il_total(mode->cpu, cycles) * 1e6 / calls : 0;
        double switches = calls > 0 ? il_total(mode->switches, cycles) / calls : 0;
        int daemon_known = calls > 0;
        for (int c = 0; c < cycles; c++) daemon_known &= mode->daemon_cpu[c] >= 0;
        double daemon_us = daemon_known ? il_total(mode->daemon_cpu, cycles) * 1e6 / calls : -1;
        size_t total = 0;
        for (int i = 0; i < b->nthreads; i++) total += ws[i].stats[m].nlat;
        uint32_t *all = malloc((total ? total : 1) * sizeof *all);
        if (!all) die("%s", "out of memory");
        size_t k = 0;
        for (int i = 0; i < b->nthreads; i++) {
            if (ws[i].stats[m].nlat) memcpy(all + k, ws[i].stats[m].lat, ws[i].stats[m].nlat * sizeof *all);
            k += ws[i].stats[m].nlat;
        }
        qsort(all, total, sizeof *all, cmp_u32);
        double p50 = total ? all[total / 2] / 1e3 : 0, p99 = total ? all[(size_t)((double)total * 0.99)] / 1e3 : 0;
        double max = total ? all[total - 1] / 1e3 : 0;
        free(all);
        json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:f, s:f}",
                              "bench", "pool10", "method", "interleaved", "mode", mode->name, "threads", mode->threads,
                              "connections", mode->conns, "daemon_latency_ms", 0, "cycles", cycles, "slice_s", opt_slice,
                              "calls_per_s", seconds > 0 ? calls / seconds : 0, "p50_us", p50, "p99_us", p99,
                              "max_us", max, "cpu_us_per_call", cpu_us, "calls", (json_int_t)calls,
                              "errors", (json_int_t)il_total(mode->errors, cycles),
                              "context_switches_per_call", switches, "seconds", seconds);
        if (daemon_known) json_object_set_new(o, "daemon_cpu_us_per_call", json_real(daemon_us));
        if (opt_one_cpu) json_object_set_new(o, "one_cpu", json_true());
        char daemon[40] = "";
        if (daemon_known) snprintf(daemon, sizeof daemon, "  daemon %4.1f µs/call", daemon_us);
        double tail_ms = (seconds - il_total(mode->steady_seconds, cycles)) * 1e3 / (cycles > 0 ? cycles : 1);
        json_object_set_new(o, "tail_ms_per_slice", json_real(tail_ms));
        char against[220] = "";
        if (mode->base >= 0) {
            const il_mode *base = &b->modes[mode->base];
            double ratio[IL_MAX_CYCLES], cpu_ratio[IL_MAX_CYCLES], cpu_diff[IL_MAX_CYCLES], steady[IL_MAX_CYCLES];
            int n = 0;
            for (int c = 0; c < cycles; c++) {
                if (mode->calls[c] <= 0 || base->calls[c] <= 0) continue;
                double mine = mode->calls[c] / mode->seconds[c], theirs = base->calls[c] / base->seconds[c];
                steady[n] = base->steady_calls[c] > 0 ? (mode->steady_calls[c] / mode->steady_seconds[c]) /
                                                             (base->steady_calls[c] / base->steady_seconds[c]) : 0;
                double my_cpu = mode->cpu[c] * 1e6 / mode->calls[c], their_cpu = base->cpu[c] * 1e6 / base->calls[c];
                ratio[n] = mine / theirs;
                cpu_ratio[n] = my_cpu / their_cpu;
                cpu_diff[n] = my_cpu - their_cpu;
                n++;
            }
            /* Per cycle, in cycle order (before the sorts below). */
            json_object_set_new(o, "cycle_ratios", json_reals(ratio, n));
            json_object_set_new(o, "cycle_cpu_diffs_us", json_reals(cpu_diff, n));
            double r50 = quantile(ratio, n, 0.5), r25 = quantile(ratio, n, 0.25), r75 = quantile(ratio, n, 0.75);
            double d50 = quantile(cpu_diff, n, 0.5), d25 = quantile(cpu_diff, n, 0.25), d75 = quantile(cpu_diff, n, 0.75);
            double c50 = quantile(cpu_ratio, n, 0.5);
            double s50 = quantile(steady, n, 0.5);
            double rlo, rhi, dlo, dhi, slo, shi;
            median_ci95(ratio, n, &rlo, &rhi);
            median_ci95(cpu_diff, n, &dlo, &dhi);
            median_ci95(steady, n, &slo, &shi);
            json_object_set_new(o, "steady_ratio", json_real(s50));
            json_object_set_new(o, "steady_ratio_ci95", json_pack("[f,f]", slo, shi));
            json_object_set_new(o, "compared_with", json_string(base->name));
            json_object_set_new(o, "compared_with_threads", json_integer(base->threads));
            json_object_set_new(o, "ratio", json_real(r50));
            json_object_set_new(o, "ratio_q1", json_real(r25));
            json_object_set_new(o, "ratio_q3", json_real(r75));
            json_object_set_new(o, "cpu_ratio", json_real(c50));
            json_object_set_new(o, "cpu_diff_us", json_real(d50));
            json_object_set_new(o, "cpu_diff_q1_us", json_real(d25));
            json_object_set_new(o, "cpu_diff_q3_us", json_real(d75));
            json_object_set_new(o, "ratio_ci95", json_pack("[f,f]", rlo, rhi));
            json_object_set_new(o, "cpu_diff_ci95_us", json_pack("[f,f]", dlo, dhi));
            snprintf(against, sizeof against, "%.2f (CI %.2f-%.2f) [%.2f %.2f]  %+5.1f µs (CI %+.1f %+.1f)  steady %.2f (CI %.2f-%.2f)  vs %s T=%d",
                     r50, rlo, rhi, r25, r75, d50, dlo, dhi, s50, slo, shi, base->name, base->threads);
        }
        fprintf(il_out, "  %-19s T=%-2d C=%-2d %10.0f calls/s  p50 %7.1f µs  p99 %7.1f µs  CPU %5.1f µs/call%s  %4.2f switches/call  tail %4.1f ms  %s\n",
               mode->name, mode->threads, mode->conns, seconds > 0 ? calls / seconds : 0, p50, p99, cpu_us, daemon,
               switches, tail_ms, against);
        emit(o);
    }
}

/* Runs the modes of b (set up by the caller) for the warm-up and opt_cycles cycles, reports. */
static void il_run(il_bench *b, const char *title) {
    il_worker *ws = calloc((size_t)b->nthreads, sizeof *ws);
    pthread_t *tids = calloc((size_t)b->nthreads, sizeof *tids);
    if (!ws || !tids) die("%s", "out of memory");
    pthread_mutex_init(&b->lock, NULL);
    for (int m = 0; m < IL_MAX_MODES; m++) pthread_cond_init(&b->go[m], NULL);
    pthread_cond_init(&b->parked_cv, NULL);
    pthread_cond_init(&b->ended_cv, NULL);
    for (int i = 0; i < b->nthreads; i++) {
        ws[i].b = b;
        ws[i].index = i;
        ws[i].params = make_params(i, 0);
        pthread_create(&tids[i], NULL, il_worker_main, &ws[i]);
    }
    for (int m = 0; m < b->nmodes; m++) il_slice(b, ws, m, -1);
    for (int i = 0; i < b->nthreads; i++)
        for (int m = 0; m < b->nmodes; m++) ws[i].stats[m].nlat = 0; /* warm-up latencies are not kept */
    int cycles = opt_cycles < IL_MAX_CYCLES ? opt_cycles : IL_MAX_CYCLES;
    char what[160];
    unsigned seed = 1; /* the same orders in every run */
    for (int c = 0; c < cycles; c++) {
        snprintf(what, sizeof what, "pool10 interleaved: %s, cycle %d/%d", title, c + 1, cycles);
        progress(what);
        int order[IL_MAX_MODES];
        for (int k = 0; k < b->nmodes; k++) order[k] = k;
        for (int k = b->nmodes - 1; k > 0; k--) { /* Fisher-Yates */
            int j = (int)(rand_r(&seed) % (unsigned)(k + 1)), t = order[k];
            order[k] = order[j];
            order[j] = t;
        }
        for (int k = 0; k < b->nmodes; k++) il_slice(b, ws, order[k], c);
    }
    pthread_mutex_lock(&b->lock);
    b->stop = 1;
    for (int m = 0; m < IL_MAX_MODES; m++) pthread_cond_broadcast(&b->go[m]);
    pthread_mutex_unlock(&b->lock);
    for (int i = 0; i < b->nthreads; i++) pthread_join(tids[i], NULL);
    progress_done();
    il_report(b, ws, cycles);
    for (int i = 0; i < b->nthreads; i++) {
        for (int m = 0; m < b->nmodes; m++) free(ws[i].stats[m].lat);
        json_decref(ws[i].params);
    }
    free(ws);
    free(tids);
}

/* A mode on the first `threads` threads of mode `owner`'s (woken with them), or, owner -1, on
 * threads of its own (the next free ones; all modes on threads 0.. with --shared-threads). */
static int il_add_on(il_bench *b, const char *name, int threads, int conns, goxelpool_client *client, int base,
                     int owner) {
    if (b->nmodes == IL_MAX_MODES) die("%s", "too many interleaved modes: raise IL_MAX_MODES");
    int first = owner >= 0 ? b->modes[owner].first : opt_shared_threads ? 0 : b->nthreads;
    b->modes[b->nmodes] = (il_mode){.name = name, .threads = threads, .conns = conns, .first = first,
                                    .slot = owner >= 0 ? b->modes[owner].slot : b->nmodes, .client = client,
                                    .base = base};
    if (first + threads > b->nthreads) b->nthreads = first + threads;
    return b->nmodes++;
}

static int il_add(il_bench *b, const char *name, int threads, int conns, goxelpool_client *client, int base) {
    return il_add_on(b, name, threads, conns, client, base, -1);
}

/* Pool 10..10 with the fast path off ("fast_path": false): every call takes the pool's lock. */
static goxelpool_client *lib_open_locked(void) {
    json_t *cfg = lib_config(1, 10, 10, 0, "thread");
    json_object_set_new(json_object_get(cfg, "pool"), "fast_path", json_false());
    return lib_open_config(cfg, 10);
}

/* A pool of 10 whose threads keep their connection while callers wait for up to 1 000 000 calls
 * and 1 s: in practice never handed over within a slice (waiters starve). fast_path false: kept
 * through the pool's lock instead of in the connections' lanes. */
static goxelpool_client *lib_open_unbounded_reuse(int fast_path) {
    json_t *cfg = lib_config(1, 10, 10, 0, "thread");
    if (!fast_path) json_object_set_new(json_object_get(cfg, "pool"), "fast_path", json_false());
    json_object_set_new(json_object_get(cfg, "pool"), "reuse_while_waiting", json_integer(1000000));
    json_object_set_new(json_object_get(cfg, "pool"), "reuse_window_us", json_integer(1000000));
    return lib_open_config(cfg, 10);
}

/* --decompose: the pool row of the 32-thread experiment against rows that each add one thing to
 * the raw client with 10 threads: 22 more threads that sleep (raw-parked); the pool with nobody
 * waiting (pool-10, 10 threads); one caller waiting and no hand-offs (pool-11-unbounded); 22
 * callers waiting and no hand-offs (pool-unbounded: the most any reuse setting of this pool could
 * give); then the pool as configured (pool). And the two pool rows with 10 and 11 threads once
 * more with fast_path false (every call through the pool's lock): what one waiting caller costs
 * without the lanes. And the raw client whose 10 (or 11) threads take a connection from a shared
 * stack for a whole slice (raw-reshuffled): nothing changes hands within a slice, nobody waits
 * with 10 threads, but a thread's connection, and so the daemon's thread it talks to, changes
 * from one slice to the next; with 32 threads, the other 22 wait in the stack's condition variable
 * for the whole slice (pool-unbounded's situation, written by hand: no library). And the pool's
 * fairness written by hand (hand-fair-32: 16 calls or 3 ms, then FIFO hand-off on a futex): the
 * pool row's situation with no library. */
static void il_decomposition(il_bench *b) {
    int raw = il_add(b, "raw", 10, 10, NULL, -1);
    il_add(b, "raw-again", 10, 10, NULL, raw);
    int parked = il_add(b, "raw-parked", 32, 10, NULL, raw);
    b->modes[parked].callers = 10;
    il_add(b, "pool-10", 10, 10, lib_open(1, 10, 10, 0), raw);
    il_add(b, "pool-11-unbounded", 11, 10, lib_open_unbounded_reuse(1), raw);
    il_add(b, "pool-unbounded", 32, 10, lib_open_unbounded_reuse(1), raw);
    il_add(b, "pool", 32, 10, lib_open(1, 10, 10, 0), raw);
    il_add(b, "locked-10", 10, 10, lib_open_locked(), raw);
    il_add(b, "locked-11-unbounded", 11, 10, lib_open_unbounded_reuse(0), raw);
    static const struct { int threads; const char *name; } reshuffled[] = {
        {10, "raw-reshuffled"}, {11, "raw-reshuffled-11"}, {32, "raw-reshuffled-32"}};
    for (int i = 0; i < 3; i++) {
        int held = il_add(b, reshuffled[i].name, reshuffled[i].threads, 10, NULL, raw);
        b->modes[held].hand = hand_pool_open(10);
        b->modes[held].per_slice = 1;
    }
    int fair = il_add(b, "hand-fair-32", 32, 10, NULL, raw);
    b->modes[fair].fair = fair_pool_open(10);
}

/* The three experiments: T = 1 (raw, A/A, pool 10..10, pool 2..10, pool 10..10 without the fast
 * path); T = 8 (raw, A/A, pool 10..10 with and without the fast path); 32 threads on 10
 * connections against the raw client with 10 threads (and with 32), the pool of 10 with reuse
 * while callers wait, with strict hand-off, and without the fast path, and two pools written by
 * hand (mutex, condition variable, 10 raw connections; and the pool's own fairness, hand-fair). */
static void pool10_interleaved(void) {
    set_latency(0);
    il_out = open_memstream(&il_table, &il_table_len);
    if (!il_out) die("%s", "out of memory");
    static const int experiment_threads[] = {1, 8, 32};
    for (int e = 0; e < 3; e++) {
        if (opt_threads && opt_threads != experiment_threads[e]) continue; /* --threads 1|8|32 */
        static il_bench bench;
        il_bench *b = &bench;
        memset(b, 0, sizeof *b);
        const char *title;
        if (e == 0) {
            title = "T=1";
            int raw = il_add(b, "raw", 1, 1, NULL, -1);
            il_add(b, "raw-again", 1, 1, NULL, raw);
            il_add(b, "pool", 1, 10, lib_open(1, 10, 10, 0), raw);
            il_add(b, "pool-2..10", 1, 10, lib_open(1, 2, 10, 0), raw);
            il_add(b, "pool-locked", 1, 10, lib_open_locked(), raw);
        } else if (e == 1) {
            title = "T=8";
            int raw = il_add(b, "raw", 8, 8, NULL, -1);
            il_add(b, "raw-again", 8, 8, NULL, raw);
            il_add(b, "pool", 8, 10, lib_open(1, 10, 10, 0), raw);
            il_add(b, "pool-locked", 8, 10, lib_open_locked(), raw);
        } else if (opt_decompose) {
            title = "T=32 on 10 connections, decomposed";
            il_decomposition(b);
        } else {
            title = "T=32 on 10 connections";
            int raw = il_add(b, "raw", 10, 10, NULL, -1);
            il_add(b, "raw-again", 10, 10, NULL, raw);
            il_add(b, "raw", 32, 32, NULL, -1);
            int pool = il_add(b, "pool", 32, 10, lib_open(1, 10, 10, 0), raw);
            if (opt_thread_history) il_add_on(b, "raw-on-pool-threads", 10, 10, NULL, raw, pool);
            /* The pool row's configuration with reuse_while_waiting 0: every release while
             * callers wait hands the connection over. */
            json_t *cfg = lib_config(1, 10, 10, 0, "thread");
            json_object_set_new(json_object_get(cfg, "pool"), "reuse_while_waiting", json_integer(0));
            il_add(b, "pool-fifo", 32, 10, lib_open_config(cfg, 10), raw);
            il_add(b, "pool-locked", 32, 10, lib_open_locked(), raw);
            /* 1.3's defaults of reuse while callers wait (8 calls, 1 ms window), with the fast
             * path: what the defaults of 1.4 (16 calls, 3 ms) change, apart from keeping
             * connections in their lanes. */
            json_t *old = lib_config(1, 10, 10, 0, "thread");
            json_object_set_new(json_object_get(old, "pool"), "reuse_while_waiting", json_integer(8));
            json_object_set_new(json_object_get(old, "pool"), "reuse_window_us", json_integer(1000));
            il_add(b, "pool-w1ms", 32, 10, lib_open_config(old, 10), raw);
            /* What a user would write by hand for 32 threads on 10 connections. */
            int hand = il_add(b, "hand", 32, 10, NULL, raw);
            b->modes[hand].hand = hand_pool_open(10);
            /* ... and by hand with the pool's fairness (its defaults: 16 calls, 3 ms, then FIFO). */
            int fair = il_add(b, "hand-fair", 32, 10, NULL, raw);
            b->modes[fair].fair = fair_pool_open(10);
        }
        b->raws = calloc((size_t)b->nthreads, sizeof *b->raws);
        if (!b->raws) die("%s", "out of memory");
        for (int i = 0; i < b->nthreads; i++) b->raws[i].fd = -1;
        for (int m = 0; m < b->nmodes; m++) {
            const il_mode *mode = &b->modes[m];
            if (mode->client || mode->hand || mode->fair) continue;
            for (int i = mode->first; i < mode->first + mode->threads; i++)
                if (il_calls(mode, i) && b->raws[i].fd < 0 && raw_open(&b->raws[i]) != 0)
                    die("raw connect to %s failed", socket_path);
        }
        il_run(b, title);
        for (int i = 0; i < b->nthreads; i++)
            if (b->raws[i].fd >= 0) close(b->raws[i].fd);
        free(b->raws);
        for (int m = 0; m < b->nmodes; m++) {
            if (b->modes[m].client) goxelpool_client_free(b->modes[m].client);
            hand_pool_free(b->modes[m].hand);
            fair_pool_free(b->modes[m].fair);
        }
    }
    fclose(il_out);
}

/* ----------------------------------------------------------------------------------------------
 * Rows: every row keeps one result per round; the tables show medians.
 * -------------------------------------------------------------------------------------------- */

#define MAX_ROUNDS 15
#define MAX_ROWS 96

typedef struct {
    const char *section; /* "throughput", "scaling", "health" */
    int mode, threads, conns, latency_ms, health_ms;
    int base;            /* index of the row this one is compared with, or -1 */
    run_result r[MAX_ROUNDS];
    double ratio[MAX_ROUNDS], cpu_ratio[MAX_ROUNDS];
    json_int_t health_checks[MAX_ROUNDS];
    int n;
} row;

static row rows[MAX_ROWS];
static int nrows = 0;

static int wanted(const char *section) { return !opt_only || !strcmp(opt_only, section); }

/* --mode raw|pool|queue|single|thread|dispatch: only these throughput or async rows (for profiling). */
static int mode_wanted(const char *name) { return !opt_mode || !strcmp(opt_mode, name); }

static int add_row(const char *section, int mode, int threads, int conns, int latency_ms, int health_ms, int base) {
    if (!wanted(section)) return -1;
    if (nrows == MAX_ROWS) die("%s", "too many rows");
    row *w = &rows[nrows];
    memset(w, 0, sizeof *w);
    w->section = section;
    w->mode = mode;
    w->threads = threads;
    w->conns = conns;
    w->latency_ms = latency_ms;
    w->health_ms = health_ms;
    w->base = base;
    return nrows++;
}

static double row_seconds(const row *w) {
    if (!strcmp(w->section, "health")) return opt_duration * 1.5;
    if (w->mode == MODE_ACQ) return opt_duration / 2;
    return opt_duration;
}

static void run_row(int i, int round) {
    row *w = &rows[i];
    char what[160];
    snprintf(what, sizeof what, "round %d/%d: %-10s %-7s T=%-2d C=%-2d latency %d ms%s", round + 1, opt_rounds,
             w->section, mode_names[w->mode], w->threads, w->conns, w->latency_ms,
             w->health_ms ? " health 1 s" : "");
    progress(what);
    set_latency(w->latency_ms);
    if (w->mode == MODE_ASYNC_THREAD || w->mode == MODE_ASYNC_DISPATCH) {
        run_result r = run_async(w->mode == MODE_ASYNC_DISPATCH, w->conns, w->threads, row_seconds(w));
        w->r[w->n] = r;
        if (w->base >= 0 && rows[w->base].n > w->n) {
            const run_result *b = &rows[w->base].r[w->n];
            w->ratio[w->n] = b->calls_s > 0 ? r.calls_s / b->calls_s : 0;
            w->cpu_ratio[w->n] = b->cpu_us_call > 0 ? r.cpu_us_call / b->cpu_us_call : 0;
        }
        w->n++;
        return;
    }
    goxelpool_client *client = NULL;
    if (w->mode == MODE_POOL || w->mode == MODE_ACQ) client = lib_open(1, w->conns, w->conns, w->health_ms);
    if (w->mode == MODE_SINGLE) client = lib_open(0, 1, 1, 0);
    json_int_t checks0 = client ? stat_int(client, "health_checks") : 0;
    run_result r = run_threads(w->mode, client, w->threads, row_seconds(w));
    if (client) {
        w->health_checks[w->n] = stat_int(client, "health_checks") - checks0;
        goxelpool_client_free(client);
    }
    w->r[w->n] = r;
    if (w->base >= 0 && rows[w->base].n > w->n) {
        const run_result *b = &rows[w->base].r[w->n];
        w->ratio[w->n] = b->calls_s > 0 ? r.calls_s / b->calls_s : 0;
        w->cpu_ratio[w->n] = b->cpu_us_call > 0 ? r.cpu_us_call / b->cpu_us_call : 0;
    }
    w->n++;
}

static double med_field(const row *w, size_t offset) {
    double v[MAX_ROUNDS];
    for (int j = 0; j < w->n; j++) v[j] = *(const double *)((const char *)&w->r[j] + offset);
    return median(v, w->n);
}
#define MED(w, field) med_field((w), offsetof(run_result, field))

static double med_arr(const double *a, int n) {
    double v[MAX_ROUNDS];
    memcpy(v, a, (size_t)n * sizeof *v);
    return median(v, n);
}

/* ----------------------------------------------------------------------------------------------
 * Across machines: TLS through a forwarder in front of refd (socat and stunnel, client
 * certificates required), against plain TCP through the same forwarder (socat)
 * -------------------------------------------------------------------------------------------- */

enum { FWD_PLAIN, FWD_SOCAT_TLS, FWD_STUNNEL_TLS, FWD_COUNT };
static const char *fwd_names[] = {"socat tcp", "socat tls", "stunnel tls"};
/* Rows: (daemon latency ms, threads). Latency 0 puts all the TLS work on the critical path of a
 * loopback round trip; 2 ms is a daemon doing real work, closer to a call across machines. */
#define TLS_TS 4
static const int tls_threads[TLS_TS] = {1, 8, 1, 8};
static const int tls_latency[TLS_TS] = {0, 0, 2, 2};

typedef struct {
    int ok;
    char why[256];
    run_result r[TLS_TS][FWD_COUNT][MAX_ROUNDS];
    double ratio[TLS_TS][FWD_COUNT][MAX_ROUNDS]; /* calls/s against socat tcp in the same round */
    int n;
    double new_ms[FWD_COUNT];    /* goxelpool_client_new alone (the TLS context: CA, certificate, key), median */
    double open_ms[FWD_COUNT];   /* new client to first answer (full handshake), median */
    double rotate_us[FWD_COUNT]; /* a new connection per call (TLS session resumed), per call */
    double rotate_cpu_us[FWD_COUNT]; /* the client's CPU per call then */
    json_int_t resumed[FWD_COUNT];
} tls_result;

static char tls_dir[64];
static int tls_ports[FWD_COUNT];
static pid_t tls_pids[FWD_COUNT];

/* In a process group of its own, so that what it forks (socat: one child per connection) can be
 * stopped with it. */
static pid_t spawn_quiet(char *const argv[]) {
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static int tcp_port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/* Throwaway certificates (openssl), socat (plain and TLS) and stunnel in front of refd. */
static int tls_setup(tls_result *t) {
    strcpy(tls_dir, "/tmp/goxelpool-bench-tls.XXXXXX");
    if (!mkdtemp(tls_dir)) { snprintf(t->why, sizeof t->why, "mkdtemp failed"); return 0; }
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && for n in ca server client; do openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout $n.key -subj /CN=$n -out $n.csr || exit 1; done && "
             "printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign\\n' > ca.ext && "
             "openssl x509 -req -in ca.csr -signkey ca.key -days 1 -extfile ca.ext -out ca.pem && "
             "printf 'subjectAltName=IP:127.0.0.1\\n' > server.ext && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out server.pem && "
             "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem",
             tls_dir);
    char quiet[2100];
    snprintf(quiet, sizeof quiet, "(%s) >/dev/null 2>&1", cmd);
    if (system(quiet) != 0) { snprintf(t->why, sizeof t->why, "openssl could not make certificates (apt-get install openssl)"); return 0; }
    if (system("command -v socat >/dev/null && command -v stunnel4 >/dev/null") != 0) {
        snprintf(t->why, sizeof t->why, "socat and stunnel4 are needed (apt-get install socat stunnel4)");
        return 0;
    }
    for (int f = 0; f < FWD_COUNT; f++) tls_ports[f] = free_port();
    char listen_plain[256], listen_tls[1024], target[160], conf[128];
    snprintf(target, sizeof target, "UNIX-CONNECT:%s", socket_path);
    /* nodelay as stunnel does by default: the daemon writes an answer and its newline apart. */
    snprintf(listen_plain, sizeof listen_plain, "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,nodelay", tls_ports[FWD_PLAIN]);
    snprintf(listen_tls, sizeof listen_tls, "OPENSSL-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,nodelay,cert=%s/server.pem,"
             "key=%s/server.key,cafile=%s/ca.pem,verify=1", tls_ports[FWD_SOCAT_TLS], tls_dir, tls_dir, tls_dir);
    char *plain_argv[] = {"socat", listen_plain, target, NULL};
    char *tls_argv[] = {"socat", listen_tls, target, NULL};
    tls_pids[FWD_PLAIN] = spawn_quiet(plain_argv);
    tls_pids[FWD_SOCAT_TLS] = spawn_quiet(tls_argv);
    snprintf(conf, sizeof conf, "%s/stunnel.conf", tls_dir);
    FILE *f = fopen(conf, "w");
    if (!f) return 0;
    fprintf(f, "foreground = yes\npid =\nsyslog = no\n[goxel]\naccept = 127.0.0.1:%d\nconnect = %s\ncert = %s/server.pem\n"
               "key = %s/server.key\nCAfile = %s/ca.pem\nverifyChain = yes\nrequireCert = yes\n",
            tls_ports[FWD_STUNNEL_TLS], socket_path, tls_dir, tls_dir, tls_dir);
    fclose(f);
    char *stunnel_argv[] = {"stunnel4", conf, NULL};
    tls_pids[FWD_STUNNEL_TLS] = spawn_quiet(stunnel_argv);
    for (int i = 0; i < 200; i++) {
        int up = 0;
        for (int k = 0; k < FWD_COUNT; k++) up += tcp_port_open(tls_ports[k]);
        if (up == FWD_COUNT) return 1;
        sleep_s(0.025);
    }
    snprintf(t->why, sizeof t->why, "the forwarders did not listen within 5 s");
    return 0;
}

static void tls_teardown(void) {
    for (int f = 0; f < FWD_COUNT; f++) {
        if (tls_pids[f] > 0) {
            kill(-tls_pids[f], SIGTERM);
            waitpid(tls_pids[f], NULL, 0);
            kill(-tls_pids[f], SIGKILL);
        }
        tls_pids[f] = 0;
    }
    if (tls_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tls_dir);
        if (system(cmd) != 0) fprintf(stderr, "bench: could not remove %s\n", tls_dir);
        tls_dir[0] = 0;
    }
}

/* The configuration of a client of forwarder `f`: min = max = conns; `extra_pool` adds to "pool". */
static json_t *tls_config(int f, int conns) {
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "%s:127.0.0.1:%d", f == FWD_PLAIN ? "tcp" : "tls", tls_ports[f]);
    char ca[128], cert[128], key[128];
    snprintf(ca, sizeof ca, "%s/ca.pem", tls_dir);
    snprintf(cert, sizeof cert, "%s/client.pem", tls_dir);
    snprintf(key, sizeof key, "%s/client.key", tls_dir);
    json_t *cfg = json_pack("{s:[s], s:i, s:{s:i, s:i, s:i}}", "endpoints", endpoint, "timeout_ms", 30000,
                            "pool", "min_connections", conns, "max_connections", conns, "max_waiters", 4096);
    if (f != FWD_PLAIN) json_object_set_new(cfg, "tls", json_pack("{s:s, s:s, s:s}", "ca_file", ca, "cert_file", cert, "key_file", key));
    return cfg;
}

/* Calls/s once connections are up, T = 1 and 8, the three forwarders back to back per round;
 * then the cost of opening connections. */
static void tls_run(tls_result *t) {
    if (!tls_setup(t)) { tls_teardown(); return; }
    for (int round = 0; round < opt_rounds; round++) {
        for (int k = 0; k < TLS_TS; k++) {
            if (tls_latency[k] && !have_control) continue;
            set_latency(tls_latency[k]);
            for (int f = 0; f < FWD_COUNT; f++) {
                char what[128];
                snprintf(what, sizeof what, "round %d/%d: across machines, %s, T=%d, latency %d ms", round + 1, opt_rounds,
                         fwd_names[f], tls_threads[k], tls_latency[k]);
                progress(what);
                goxelpool_client *client = lib_open_config(tls_config(f, tls_threads[k]), tls_threads[k]);
                t->r[k][f][round] = run_threads(MODE_POOL, client, tls_threads[k], opt_duration);
                goxelpool_client_free(client);
                double base = t->r[k][FWD_PLAIN][round].calls_s;
                t->ratio[k][f][round] = base > 0 ? t->r[k][f][round].calls_s / base : 0;
            }
        }
        t->n = round + 1;
    }
    set_latency(0);
    /* Opening: a new client (its own TLS context: no session to resume) to its first answer. */
    int opens = opt_quick ? 5 : 20, rotations = opt_quick ? 50 : 300;
    for (int f = 0; f < FWD_COUNT; f++) {
        progress("across machines: the cost of opening connections");
        double ms[32], new_ms[32];
        for (int i = 0; i < opens; i++) {
            json_t *cfg = tls_config(f, 1);
            goxelpool_client *client = NULL;
            char err[256];
            double t0 = now_s();
            if (goxelpool_client_new(cfg, &client, err, sizeof err) != GOXELPOOL_OK) die("goxelpool_client_new: %s", err);
            new_ms[i] = (now_s() - t0) * 1e3;
            json_decref(cfg);
            if (goxelpool_call(client, "ping", NULL, 30000, NULL, NULL) != GOXELPOOL_OK) die("%s", "first call failed");
            ms[i] = (now_s() - t0) * 1e3;
            goxelpool_client_free(client);
        }
        t->open_ms[f] = median(ms, opens);
        t->new_ms[f] = median(new_ms, opens);
        /* A new connection for every call (rotation after one request, no validation call): after
         * the first, each one resumes the TLS session the previous one received. */
        json_t *cfg = tls_config(f, 1);
        json_t *pool = json_object_get(cfg, "pool");
        json_object_set_new(pool, "max_requests_per_connection", json_integer(1));
        json_object_set_new(pool, "validate_on_connect", json_false());
        goxelpool_client *client = lib_open_config(cfg, 1);
        double t0 = now_s(), cpu0 = cpu_s();
        int failed = 0;
        for (int i = 0; i < rotations; i++) failed += goxelpool_call(client, "ping", NULL, 30000, NULL, NULL) != GOXELPOOL_OK;
        t->rotate_us[f] = failed ? 0 : (now_s() - t0) * 1e6 / rotations;
        t->rotate_cpu_us[f] = (cpu_s() - cpu0) * 1e6 / rotations;
        t->resumed[f] = stat_int(client, "tls_sessions_resumed");
        goxelpool_client_free(client);
    }
    tls_teardown();
    t->ok = 1;
}

/* ----------------------------------------------------------------------------------------------
 * Memory (in child processes, before this process starts any thread)
 * -------------------------------------------------------------------------------------------- */

typedef struct {
    long before, idle, after_warm, after_all;
    long calls;
    int ok;
} memory_result;

static memory_result memory_child(int conns, long calls) {
    memory_result m = {0};
    m.before = rss_kib();
    goxelpool_client *client = lib_open(1, conns, 10, 0);
    sleep_s(0.3);
    m.idle = rss_kib();
    if (calls > 0) {
        enum { T = 10 };
        _Atomic int phase = PHASE_MEASURE;
        _Atomic long budget = calls / 10; /* warm-up: the first 10 % */
        worker ws[T];
        pthread_t tids[T];
        for (int pass = 0; pass < 2; pass++) {
            memset(ws, 0, sizeof ws);
            for (int i = 0; i < T; i++) {
                ws[i].mode = MODE_POOL;
                ws[i].client = client;
                ws[i].phase = &phase;
                ws[i].budget = &budget;
                ws[i].params = make_params(i, 0);
            }
            for (int i = 0; i < T; i++) pthread_create(&tids[i], NULL, worker_main, &ws[i]);
            for (int i = 0; i < T; i++) {
                pthread_join(tids[i], NULL);
                m.calls += ws[i].calls;
                free(ws[i].lat);
                json_decref(ws[i].params);
            }
            if (pass == 0) {
                m.after_warm = rss_kib();
                atomic_store(&budget, calls - calls / 10);
            }
        }
        m.after_all = rss_kib();
    }
    goxelpool_client_free(client);
    m.ok = 1;
    return m;
}

static memory_result memory_run(int conns, long calls) {
    int fds[2];
    memory_result m = {0};
    if (pipe(fds) != 0) die("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fds[0]);
        memory_result r = memory_child(conns, calls);
        ssize_t n = write(fds[1], &r, sizeof r);
        _exit(n == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], &m, sizeof m);
    close(fds[0]);
    waitpid(pid, NULL, 0);
    if (n != (ssize_t)sizeof m) m.ok = 0;
    return m;
}

/* ----------------------------------------------------------------------------------------------
 * Batch of 100 against 100 sequential calls
 * -------------------------------------------------------------------------------------------- */

static const char *status_of(const json_t *outcome) {
    const char *s = json_string_value(json_object_get(outcome, "status"));
    return s ? s : "";
}

static void batch_run(double *batch_ms, double *seq_ms, int *batch_ok) {
    goxelpool_client *client = lib_open(1, 10, 10, 0);
    json_t *requests = json_array();
    for (int i = 0; i < 100; i++)
        json_array_append_new(requests, json_pack("{s:s,s:[i,i,i]}", "method", METHOD, "params", i, 2, 3));
    json_t *results = NULL;
    double t0 = now_s();
    goxelpool_status st = goxelpool_call_batch(client, requests, -1, &results);
    *batch_ms = (now_s() - t0) * 1e3;
    int ok = st == GOXELPOOL_OK && json_array_size(results) == 100;
    for (size_t i = 0; ok && i < 100; i++)
        ok = !strcmp(status_of(json_array_get(results, i)), "OK");
    *batch_ok = ok;
    json_decref(results);
    json_t *params = make_params(1, 0);
    t0 = now_s();
    for (int i = 0; i < 100; i++) {
        json_t *result = NULL;
        if (goxelpool_call(client, METHOD, params, -1, &result, NULL) == GOXELPOOL_OK) json_decref(result);
        else *batch_ok = 0;
    }
    *seq_ms = (now_s() - t0) * 1e3;
    json_decref(params);
    json_decref(requests);
    goxelpool_client_free(client);
}

/* ----------------------------------------------------------------------------------------------
 * Size of the stripped library
 * -------------------------------------------------------------------------------------------- */

static void library_size(char *path, size_t pathlen, long *unstripped, long *stripped) {
    Dl_info info;
    *unstripped = *stripped = -1;
    path[0] = 0;
    if (!dladdr((void *)goxelpool_version, &info) || !info.dli_fname) return;
    if (!realpath(info.dli_fname, path)) snprintf(path, pathlen, "%s", info.dli_fname);
    struct stat st;
    if (stat(path, &st) == 0) *unstripped = (long)st.st_size;
    char out[128], cmd[PATH_MAX + 256];
    snprintf(out, sizeof out, "/tmp/goxelpool-bench-strip.%d", (int)getpid());
    snprintf(cmd, sizeof cmd, "strip -o '%s' '%s' 2>/dev/null", out, path);
    if (system(cmd) == 0 && stat(out, &st) == 0) *stripped = (long)st.st_size;
    unlink(out);
}

/* ----------------------------------------------------------------------------------------------
 * Output
 * -------------------------------------------------------------------------------------------- */

static json_t *jrows;

static void emit(json_t *obj) { json_array_append_new(jrows, obj); }

static json_t *row_json(const row *w) {
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:I, s:I}", "bench", w->section,
                          "mode", mode_names[w->mode], "threads", w->threads, "connections", w->conns,
                          "daemon_latency_ms", w->latency_ms, "rounds", w->n, "calls_per_s", MED(w, calls_s),
                          "p50_us", MED(w, p50_us), "p99_us", MED(w, p99_us), "max_us", MED(w, max_us),
                          "cpu_us_per_call", MED(w, cpu_us_call), "calls", (json_int_t)MED(w, calls),
                          "errors", (json_int_t)MED(w, errors));
    if (w->base >= 0) {
        json_object_set_new(o, "ratio", json_real(med_arr(w->ratio, w->n)));
        json_object_set_new(o, "cpu_ratio", json_real(med_arr(w->cpu_ratio, w->n)));
        json_object_set_new(o, "compared_with", json_string(mode_names[rows[w->base].mode]));
    }
    if (w->mode == MODE_ACQ) json_object_set_new(o, "ns_per_op", json_real(MED(w, ns_per_op)));
    if (!strcmp(w->section, "async")) json_object_set_new(o, "context_switches_per_call", json_real(MED(w, switches_call)));
    if (!strcmp(w->section, "health")) {
        double hc[MAX_ROUNDS];
        for (int j = 0; j < w->n; j++) hc[j] = (double)w->health_checks[j];
        json_object_set_new(o, "health_interval_ms", json_integer(w->health_ms));
        json_object_set_new(o, "health_checks", json_integer((json_int_t)median(hc, w->n)));
    }
    return o;
}

static void usage(void) {
    fprintf(stderr, "usage: bench [--quick] [--rounds N] [--duration SECONDS] [--cycles N] [--slice SECONDS] [--refd PATH]\n"
                    "             [--socket PATH] [--only SECTION] [--threads T] [--mode MODE] [--latency 0|2] [--shared-threads]\n"
                    "             [--thread-history] [--decompose] [--one-cpu]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *env = getenv("BENCH_QUICK");
    if (env && *env && strcmp(env, "0")) opt_quick = 1;
    const char *sock = getenv("SOCKET");
    if (sock && !*sock) sock = NULL;
    int rounds_set = 0, duration_set = 0, cycles_set = 0, slice_set = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) opt_quick = 1;
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) { opt_rounds = atoi(argv[++i]); rounds_set = 1; }
        else if (!strcmp(argv[i], "--duration") && i + 1 < argc) { opt_duration = atof(argv[++i]); duration_set = 1; }
        else if (!strcmp(argv[i], "--refd") && i + 1 < argc) opt_refd = argv[++i];
        else if (!strcmp(argv[i], "--socket") && i + 1 < argc) sock = argv[++i];
        else if (!strcmp(argv[i], "--memory-calls") && i + 1 < argc) opt_memory_calls = atol(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) opt_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) opt_only = argv[++i];
        else if (!strcmp(argv[i], "--mode") && i + 1 < argc) opt_mode = argv[++i];
        else if (!strcmp(argv[i], "--latency") && i + 1 < argc) opt_latency = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--async-inflight") && i + 1 < argc) opt_async_inflight = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--async-connections") && i + 1 < argc) opt_async_conns = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cycles") && i + 1 < argc) { opt_cycles = atoi(argv[++i]); cycles_set = 1; }
        else if (!strcmp(argv[i], "--slice") && i + 1 < argc) { opt_slice = atof(argv[++i]); slice_set = 1; }
        else if (!strcmp(argv[i], "--shared-threads")) opt_shared_threads = 1;
        else if (!strcmp(argv[i], "--thread-history")) opt_thread_history = 1;
        else if (!strcmp(argv[i], "--decompose")) { opt_decompose = 1; opt_threads = 32; }
        else if (!strcmp(argv[i], "--one-cpu")) opt_one_cpu = 1;
        else usage();
    }
    if (opt_quick) {
        if (!rounds_set) opt_rounds = 1;
        if (!duration_set) opt_duration = 0.3;
        opt_warmup = 0.1;
        opt_memory_calls = 20000;
        if (!cycles_set) opt_cycles = 3;
        if (!slice_set) opt_slice = 0.1;
    }
    if (opt_cycles < 1) opt_cycles = 1;
    if (opt_cycles > IL_MAX_CYCLES) opt_cycles = IL_MAX_CYCLES;
    if (!(opt_slice >= 0.01)) opt_slice = 0.01;
    if (opt_rounds < 1) opt_rounds = 1;
    if (opt_async_inflight < 1) opt_async_inflight = 1;
    if (opt_async_conns < 1) opt_async_conns = 1;
    if (opt_rounds > MAX_ROUNDS) opt_rounds = MAX_ROUNDS;
    progress_tty = isatty(2);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    if (opt_one_cpu) {
        /* Before any thread or the daemon starts: they inherit it. */
        if (sock) die("%s", "--one-cpu needs the daemon this benchmark starts (not --socket or SOCKET)");
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(0, &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0) die("sched_setaffinity: %s", strerror(errno));
    }
    if (sock) {
        if (strlen(sock) >= sizeof socket_path) die("socket path too long: %s", sock);
        strcpy(socket_path, sock);
    } else {
        start_refd();
        atexit(stop_refd);
    }
    snprintf(control_path, sizeof control_path, "%s.ctl", socket_path);
    have_control = control_call("refd.get_faults", json_object()) == 0;
    if (have_control) set_latency(0);
    else fprintf(stderr, "bench: no control socket at %s: daemon latency cannot be set, 2 ms rows skipped\n",
                 control_path);

    /* The plan. */
    static const int ts_full[] = {1, 8, 32, 64}, ts_quick[] = {1, 8};
    const int *ts = opt_quick ? ts_quick : ts_full;
    int nts = opt_quick ? 2 : 4;
    if (opt_threads > 0) { ts = &opt_threads; nts = 1; }
    int nlat = have_control ? 2 : 1;
    for (int li = 0; li < nlat; li++) {
        int lat = li ? 2 : 0;
        if (opt_latency >= 0 && lat != opt_latency) continue;
        for (int k = 0; k < nts; k++) {
            int t = ts[k];
            int raw = mode_wanted("raw") ? add_row("throughput", MODE_RAW, t, t, lat, 0, -1) : -1;
            if (mode_wanted("pool")) add_row("throughput", MODE_POOL, t, t, lat, 0, raw);
            if (t > 1 && mode_wanted("queue")) add_row("throughput", MODE_POOL, t, t / 4 > 1 ? t / 4 : 2, lat, 0, raw);
            if (mode_wanted("single")) add_row("throughput", MODE_SINGLE, t, 1, lat, 0, raw);
        }
    }
    if (have_control) {
        int one = add_row("scaling", MODE_POOL, 10, 1, 2, 0, -1);
        add_row("scaling", MODE_POOL, 10, 5, 2, 0, one);
        add_row("scaling", MODE_POOL, 10, 10, 2, 0, one);
    }
    /* The configurations services run (a pool of 10 connections) run interleaved with their raw
     * baselines: pool10_interleaved, after the rounds. */
    int do_pool10 = wanted("pool10") && opt_latency <= 0 &&
                    (!opt_threads || opt_threads == 1 || opt_threads == 8 || opt_threads == 32);
    int hoff = add_row("health", MODE_POOL, 8, 10, 0, 0, -1);
    add_row("health", MODE_POOL, 8, 10, 0, 1000, hoff);
    /* Async: T = calls kept in flight, C = connections; dispatch compared with thread. */
    for (int lat = 0; lat <= (have_control && !opt_quick ? 2 : 0); lat += 2) {
        if (opt_latency >= 0 && lat != opt_latency) continue;
        int thread_row = mode_wanted("thread") ? add_row("async", MODE_ASYNC_THREAD, opt_async_inflight, opt_async_conns, lat, 0, -1) : -1;
        if (mode_wanted("dispatch")) add_row("async", MODE_ASYNC_DISPATCH, opt_async_inflight, opt_async_conns, lat, 0, thread_row);
    }
    int acq1 = add_row("acquire", MODE_ACQ, 1, 8, 0, 0, -1);
    add_row("acquire", MODE_ACQ, 8, 8, 0, 0, acq1);
    add_row("acquire", MODE_ACQ, 8, 2, 0, 0, acq1);
    int batches = !wanted("batch") ? 0 : opt_quick ? 1 : 5;
    int do_memory = wanted("memory");
    step_total = 2 * do_memory + nrows * opt_rounds + (have_control ? batches : 0) +
                 (do_pool10 ? (opt_threads ? 1 : 3) * opt_cycles : 0) + wanted("health") + wanted("endpoints") +
                 (wanted("tls") ? opt_rounds * TLS_TS * FWD_COUNT + FWD_COUNT : 0);

    jrows = json_array();
    double t_start = now_s();

    /* Memory first: forked children, while this process has no threads. */
    memory_result m1 = {0}, m10 = {0};
    char what[128];
    if (do_memory) {
        progress("memory: 1 idle connection");
        m1 = memory_run(1, 0);
        snprintf(what, sizeof what, "memory: 10 idle connections, then %ld calls", opt_memory_calls);
        progress(what);
        m10 = memory_run(10, opt_memory_calls);
    }

    for (int round = 0; round < opt_rounds; round++)
        for (int i = 0; i < nrows; i++) run_row(i, round);
    if (do_pool10) pool10_interleaved();

    double bm[MAX_ROUNDS], sm[MAX_ROUNDS], br[MAX_ROUNDS];
    int batch_ok = 1;
    if (have_control && batches > 0) {
        set_latency(2);
        for (int i = 0; i < batches; i++) {
            progress("batch of 100 vs 100 sequential calls, 10 connections, latency 2 ms");
            int ok;
            batch_run(&bm[i], &sm[i], &ok);
            batch_ok &= ok;
            br[i] = bm[i] > 0 ? sm[i] / bm[i] : 0;
        }
        set_latency(0);
    }
    json_int_t idle_checks = 0;
    double idle_cpu_ms = 0, idle_seconds = opt_quick ? 2.0 : 5.0;
    if (wanted("health")) {
        progress("health checks on 10 idle connections, interval 1 s");
        health_idle_cost(idle_seconds, &idle_checks, &idle_cpu_ms);
    }
    static tls_result tr;
    if (wanted("tls")) tls_run(&tr);
    endpoints_result ep = {0};
    if (wanted("endpoints")) {
        progress("three daemons (2 Unix, 1 TCP), 2 ms latency, 24 threads: one daemon, then three");
        ep = endpoints_run(opt_duration);
    }
    char lib_path[PATH_MAX];
    long so_size, so_stripped;
    library_size(lib_path, sizeof lib_path, &so_size, &so_stripped);
    progress_done();
    double elapsed = now_s() - t_start;

    /* ---- Tables ---- */
    printf("libgoxelpool %s benchmark: %d round%s of %.1f s per row, median of the rounds; %ld CPUs%s; "
           "every call is %s [x,2,3]\n",
           goxelpool_version(), opt_rounds, opt_rounds > 1 ? "s" : "", opt_duration, sysconf(_SC_NPROCESSORS_ONLN),
           opt_one_cpu ? ", this process and its daemon on CPU 0 only (--one-cpu)" : "", METHOD);
    printf("raw = hand-written C client (one blocking connection per thread, jansson); pool = library, "
           "max_connections C; single = \"pooling\": false\n");
    printf("ratio = calls/s against the raw baseline with the same T and daemon latency (cpu: client CPU per call)\n\n");
    printf("%-8s %-7s %3s %3s %6s %10s %9s %9s %9s %9s %7s %7s\n", "latency", "mode", "T", "C", "", "calls/s",
           "p50 µs", "p99 µs", "max µs", "CPU µs", "ratio", "cpu×");
    for (int i = 0; i < nrows; i++) {
        row *w = &rows[i];
        if (strcmp(w->section, "throughput")) continue;
        char ratio[16] = "-", cpur[16] = "-";
        if (w->base >= 0) {
            snprintf(ratio, sizeof ratio, "%.2f", med_arr(w->ratio, w->n));
            snprintf(cpur, sizeof cpur, "%.2f", med_arr(w->cpu_ratio, w->n));
        }
        printf("%-8s %-7s %3d %3d %6s %10.0f %9.1f %9.1f %9.0f %9.1f %7s %7s\n",
               w->latency_ms ? "2 ms" : "0 ms", mode_names[w->mode], w->threads, w->conns, "",
               MED(w, calls_s), MED(w, p50_us), MED(w, p99_us), MED(w, max_us), MED(w, cpu_us_call), ratio, cpur);
        emit(row_json(w));
    }
    if (do_pool10) {
        if (opt_decompose)
            printf("\nPool of 10 connections, 32 threads decomposed (raw-parked: the raw client's 10 threads and 22 that sleep;\n"
                   "pool-10: 10 threads, nobody waits; pool-11-unbounded: 11 threads, reuse while callers wait without bound\n"
                   "(reuse_while_waiting 1000000, reuse_window_us 1000000), so one caller waits and connections do not change\n"
                   "hands; pool-unbounded: the same with 32 threads; pool: 32 threads, the defaults; locked-10 and\n"
                   "locked-11-unbounded: pool-10 and pool-11-unbounded with fast_path false; raw-reshuffled(-11, -32): the\n"
                   "raw client whose 10 (11, 32) threads each take a connection from a shared stack for a whole slice, so\n"
                   "the connection a thread uses changes between slices, and with 32 the other 22 wait); daemon: the\n"
                   "daemon's CPU per call (client and daemon share the CPUs),\n");
        else
            printf("\nPool of 10 connections (pool-2..10: min 2, max 10; pool-locked: fast_path false; pool-fifo: reuse_while_waiting 0; pool-w1ms: 1.3's reuse_while_waiting 8, reuse_window_us 1000),\n");
        printf("daemon latency 0, "
               "interleaved: %d cycles, each mode %.2f s per cycle. Against raw with the same threads (T = 1, 8) or with\n"
               "10 threads on 10 connections (T = 32), per cycle: median ratio of calls/s (95 %% CI of the median)\n"
               "[quartiles], median difference of client CPU per call (95 %% CI); raw-again: the raw client against itself\n",
               opt_cycles, opt_slice);
        fwrite(il_table, 1, il_table_len, stdout);
        free(il_table);
    }
    if (have_control && wanted("scaling")) {
        printf("\nScaling with connections, daemon latency 2 ms, 10 threads (ratio against 1 connection)\n");
        for (int i = 0; i < nrows; i++) {
            row *w = &rows[i];
            if (strcmp(w->section, "scaling")) continue;
            printf("  %2d connection%s %10.0f calls/s  p50 %7.1f µs  ratio %s\n", w->conns, w->conns > 1 ? "s" : " ",
                   MED(w, calls_s), MED(w, p50_us),
                   w->base >= 0 ? (snprintf(what, sizeof what, "%.2f", med_arr(w->ratio, w->n)), what) : "1.00");
            emit(row_json(w));
        }
    }
    if (wanted("health")) printf("\nHealth checks, 8 threads, 10 connections, daemon latency 0\n");
    for (int i = 0; i < nrows; i++) {
        row *w = &rows[i];
        if (strcmp(w->section, "health")) continue;
        double hc[MAX_ROUNDS];
        for (int j = 0; j < w->n; j++) hc[j] = (double)w->health_checks[j];
        printf("  health.interval_ms %-5s %10.0f calls/s  %4.0f health checks in %.1f s", w->health_ms ? "1000" : "off",
               MED(w, calls_s), median(hc, w->n), row_seconds(w));
        if (w->base >= 0) printf("  throughput ratio %.3f (cost %+.1f %%)", med_arr(w->ratio, w->n),
                                 (1 - med_arr(w->ratio, w->n)) * 100);
        printf("\n");
        emit(row_json(w));
    }
    if (wanted("health")) {
        printf("  10 idle connections, interval 1 s, no calls: %lld health checks in %.0f s, client CPU %.1f ms "
               "(%.3f %% of one core)\n", (long long)idle_checks, idle_seconds, idle_cpu_ms,
               idle_cpu_ms / (idle_seconds * 10.0));
        emit(json_pack("{s:s, s:I, s:f, s:f}", "bench", "health_idle", "checks", idle_checks, "seconds", idle_seconds,
                       "cpu_ms", idle_cpu_ms));
    }
    if (wanted("async"))
        printf("\nAsync calls, %d in flight, %d connections: dispatch mode (an epoll loop on goxelpool_event_fd\n"
               "calling goxelpool_dispatch) against thread mode (callbacks on library threads); latency = call to callback\n",
               opt_async_inflight, opt_async_conns);
    for (int i = 0; i < nrows; i++) {
        row *w = &rows[i];
        if (strcmp(w->section, "async")) continue;
        printf("  latency %d ms %-8s %10.0f calls/s  p50 %8.1f µs  p99 %8.1f µs  CPU %6.1f µs/call  %4.2f switches/call",
               w->latency_ms, mode_names[w->mode], MED(w, calls_s), MED(w, p50_us), MED(w, p99_us), MED(w, cpu_us_call),
               MED(w, switches_call));
        if (w->base >= 0) printf("  ratio %.2f, cpu× %.2f", med_arr(w->ratio, w->n), med_arr(w->cpu_ratio, w->n));
        printf("\n");
        emit(row_json(w));
    }
    if (wanted("acquire"))
        printf("\nAcquire + release, measured as a call the library refuses after the lease (params jansson cannot\n"
               "encode): lease, encode attempt, release, failure bookkeeping, no I/O. An upper bound.\n");
    double acq_ns = 0;
    for (int i = 0; i < nrows; i++) {
        row *w = &rows[i];
        if (w->mode != MODE_ACQ) continue;
        double ns = MED(w, ns_per_op);
        if (w->base < 0) acq_ns = ns;
        printf("  %d thread%s, %d connections: %8.0f ns per call (wall, all threads together), %8.0f ns per "
               "call per thread, CPU %.2f µs/call%s",
               w->threads, w->threads > 1 ? "s" : " ", w->conns, ns, ns * w->threads, MED(w, cpu_us_call),
               w->base >= 0 ? "" : "\n");
        if (w->base >= 0) printf(", throughput %.2f× uncontended\n", med_arr(w->ratio, w->n));
        emit(row_json(w));
    }
    /* Library overhead per call at T=1, latency 0: library minus raw (CPU and p50). */
    {
        row *raw1 = NULL, *pool1 = NULL;
        for (int i = 0; i < nrows; i++) {
            row *w = &rows[i];
            if (strcmp(w->section, "throughput") || w->threads != 1 || w->latency_ms) continue;
            if (w->mode == MODE_RAW) raw1 = w;
            if (w->mode == MODE_POOL) pool1 = w;
        }
        if (raw1 && pool1) {
            double dcpu = MED(pool1, cpu_us_call) - MED(raw1, cpu_us_call);
            double dp50 = MED(pool1, p50_us) - MED(raw1, p50_us);
            printf("  library overhead per call at T=1 (pool minus raw): CPU %+.2f µs, p50 latency %+.2f µs\n", dcpu,
                   dp50);
            emit(json_pack("{s:s, s:f, s:f}", "bench", "overhead_t1", "cpu_us_per_call", dcpu, "p50_us", dp50));
        }
        if (wanted("acquire")) emit(json_pack("{s:s, s:f}", "bench", "acquire_release_upper_bound", "ns", acq_ns));
    }
    if (have_control && batches > 0) {
        double b = med_arr(bm, batches), s = med_arr(sm, batches), r = med_arr(br, batches);
        printf("\nBatch of 100 calls, 10 connections, daemon latency 2 ms: batch %.1f ms, 100 sequential %.1f ms, "
               "%.1f× faster%s\n", b, s, r, batch_ok ? "" : " (SOME CALLS FAILED)");
        emit(json_pack("{s:s, s:f, s:f, s:f, s:b, s:i}", "bench", "batch", "batch_ms", b, "sequential_ms", s, "speedup",
                       r, "all_ok", batch_ok, "rounds", batches));
    }
    if (wanted("endpoints")) {
        printf("\nThree daemons behind one client (2 Unix, 1 TCP loopback), daemon latency 2 ms, 24 threads, "
               "8 connections per daemon\n");
        if (ep.ok) {
            printf("  1 daemon %8.0f calls/s; 3 daemons %8.0f calls/s: %.2f×; calls per daemon %ld / %ld / %ld (TCP last)\n",
                   ep.one_s, ep.three_s, ep.three_s / ep.one_s, ep.per_daemon[0], ep.per_daemon[1], ep.per_daemon[2]);
            emit(json_pack("{s:s, s:f, s:f, s:f, s:[I,I,I]}", "bench", "endpoints", "one_daemon_calls_s", ep.one_s,
                           "three_daemons_calls_s", ep.three_s, "ratio", ep.three_s / ep.one_s, "calls_per_daemon",
                           (json_int_t)ep.per_daemon[0], (json_int_t)ep.per_daemon[1], (json_int_t)ep.per_daemon[2]));
        } else {
            printf("  the three-daemon run failed\n");
        }
    }
    if (wanted("tls")) {
        printf("\nAcross machines: TLS (client certificates required) through a forwarder in front of refd, against plain\n"
               "TCP through the same forwarder (socat tcp), C = T connections, connections open\n");
        if (!tr.ok) {
            printf("  skipped: %s\n", tr.why);
            emit(json_pack("{s:s, s:s}", "bench", "tls", "skipped", tr.why));
        }
        for (int k = 0; tr.ok && k < TLS_TS; k++) {
            if (tls_latency[k] && !have_control) continue;
            for (int f = 0; f < FWD_COUNT; f++) {
                double v[MAX_ROUNDS], p50[MAX_ROUNDS], cpu[MAX_ROUNDS], errors = 0;
                for (int j = 0; j < tr.n; j++) {
                    v[j] = tr.r[k][f][j].calls_s;
                    p50[j] = tr.r[k][f][j].p50_us;
                    cpu[j] = tr.r[k][f][j].cpu_us_call;
                    errors += tr.r[k][f][j].errors;
                }
                double ratio = med_arr(tr.ratio[k][f], tr.n);
                printf("  latency %d ms T=%d %-12s %9.0f calls/s  p50 %8.1f µs  CPU %6.1f µs/call  %s%.2f%s\n", tls_latency[k],
                       tls_threads[k], fwd_names[f],
                       median(v, tr.n), median(p50, tr.n), median(cpu, tr.n), f ? "× plain " : "(plain ", ratio, f ? "" : ")");
                emit(json_pack("{s:s, s:s, s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "bench", "tls", "forwarder", fwd_names[f],
                               "latency_ms", tls_latency[k], "threads", tls_threads[k], "calls_s", median(v, tr.n), "p50_us", median(p50, tr.n), "cpu_us_per_call",
                               median(cpu, tr.n), "ratio_vs_plain", ratio, "errors", errors));
            }
        }
        if (tr.ok) {
            printf("  goxelpool_client_new (TLS: the OpenSSL context, CA, certificate and key read once per client):\n"
                   "  socat tcp %.2f ms, socat tls %.2f ms, stunnel tls %.2f ms\n", tr.new_ms[0], tr.new_ms[1], tr.new_ms[2]);
            printf("  a new client to its first answer (client_new, TCP, full TLS handshake with certificates both ways,\n"
                   "  validation ping, the call): socat tcp %.2f ms, socat tls %.2f ms, stunnel tls %.2f ms\n",
                   tr.open_ms[0], tr.open_ms[1], tr.open_ms[2]);
            printf("  a new connection per call (max_requests_per_connection 1; sessions resumed: socat %lld, stunnel %lld):\n"
                   "  per call %.0f / %.0f / %.0f µs (socat tcp / socat tls / stunnel tls), client CPU %.0f / %.0f / %.0f µs\n",
                   (long long)tr.resumed[1], (long long)tr.resumed[2], tr.rotate_us[0], tr.rotate_us[1], tr.rotate_us[2],
                   tr.rotate_cpu_us[0], tr.rotate_cpu_us[1], tr.rotate_cpu_us[2]);
            emit(json_pack("{s:s, s:[f,f,f], s:[f,f,f], s:[f,f,f], s:[f,f,f], s:[I,I,I], s:[s,s,s]}", "bench", "tls_handshake",
                           "client_new_ms", tr.new_ms[0], tr.new_ms[1], tr.new_ms[2], "open_ms", tr.open_ms[0], tr.open_ms[1],
                           tr.open_ms[2], "new_connection_per_call_us", tr.rotate_us[0], tr.rotate_us[1], tr.rotate_us[2],
                           "new_connection_client_cpu_us", tr.rotate_cpu_us[0], tr.rotate_cpu_us[1], tr.rotate_cpu_us[2],
                           "sessions_resumed", tr.resumed[0], tr.resumed[1], tr.resumed[2], "forwarders", fwd_names[0],
                           fwd_names[1], fwd_names[2]));
        }
    }
    if (do_memory) printf("\nMemory (RSS, separate processes)\n");
    if (!do_memory) {
    } else if (m1.ok && m10.ok) {
        double per_conn = (double)(m10.idle - m1.idle) / 9.0;
        printf("  before the client %ld KiB; with 1 idle connection %ld KiB; with 10 idle connections %ld KiB\n",
               m10.before, m1.idle, m10.idle);
        printf("  per idle connection %.1f KiB ((10 - 1 connections) / 9); the library adds %ld KiB with 10 "
               "connections\n", per_conn, m10.idle - m10.before);
        printf("  after %ld calls (10 threads): %ld KiB after the first 10 %%, %ld KiB at the end: growth %+ld KiB; "
               "the library adds %ld KiB\n", m10.calls, m10.after_warm, m10.after_all, m10.after_all - m10.after_warm,
               m10.after_all - m10.before);
        emit(json_pack("{s:s, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:I}", "bench", "memory", "rss_before_kib",
                       (json_int_t)m10.before, "rss_idle_1_kib", (json_int_t)m1.idle, "rss_idle_10_kib",
                       (json_int_t)m10.idle, "per_idle_connection_kib", per_conn, "calls", (json_int_t)m10.calls,
                       "rss_after_warmup_kib", (json_int_t)m10.after_warm, "rss_after_calls_kib",
                       (json_int_t)m10.after_all, "growth_kib", (json_int_t)(m10.after_all - m10.after_warm),
                       "library_adds_kib", (json_int_t)(m10.after_all - m10.before)));
    } else {
        printf("  memory measurement failed\n");
    }
    printf("\nLibrary %s: %ld bytes, stripped %ld bytes (%.1f MiB)\n", lib_path, so_size, so_stripped,
           (double)so_stripped / 1048576.0);
    emit(json_pack("{s:s, s:s, s:I, s:I}", "bench", "size", "path", lib_path, "bytes", (json_int_t)so_size,
                   "stripped_bytes", (json_int_t)so_stripped));
    printf("\n(%.0f s)\n\n", elapsed);

    size_t i;
    json_t *o;
    json_array_foreach(jrows, i, o) {
        char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
        puts(line);
        free(line);
    }
    json_decref(jrows);
    fflush(stdout);
    return 0;
}
