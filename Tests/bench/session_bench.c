/* Sessions benchmark (make bench): what a session, and a durable session's journal, cost against
 * plain calls, and how long a durable session with 10 000 journaled calls takes to come back
 * after its daemon restarts.
 *
 * Built like a user's program:
 *   cc -std=c11 -O2 -Wall -Wextra -Werror session_bench.c $(pkg-config --cflags --libs goxelpool) -lpthread
 *
 * Usage: session_bench --refd PATH [--quick] [--rounds N] [--duration SECONDS]
 *   Starts `goxel-refd --supervise` (restarted 10 ms after it dies) on a temporary socket.
 *
 * Cost rows: T threads call `goxel.add_voxel` (it changes the document, so a durable session
 * journals every call; coordinates cycle through 32×32×32 so the document stays bounded) for the
 * duration, on a client with T connections: plain goxelpool_call; a session; a durable session
 * that only journals (checkpoint_every past the run); a durable session with the default cadence
 * (a checkpoint every 10 000 calls: its cost is in the figure). Ratios are against plain calls
 * of the same round; rounds alternate the modes.
 *
 * Restore row: a durable session journals 10 000 calls (no checkpoint since the first), its
 * daemon is killed (refd.crash: SIGKILL); the daemon's own start is the time until its control
 * socket answers; the restore is the time from then until the session's next call returns, that
 * call included (it waits for: reconnect, load of the checkpoint, replay of 10 000 calls).
 *
 * Output: tables, then one JSON object per line (lines starting with '{').
 */
#define _GNU_SOURCE
#include <goxelpool.h>
#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROUNDS 9
enum { PLAIN, SESSION, JOURNAL, DURABLE, MODES };
static const char *mode_names[MODES] = {"plain", "session", "journal", "durable"};
static const char *mode_texts[MODES] = {"goxelpool_call", "session", "durable, journal only",
                                        "durable, checkpoint every 10 000"};

static const char *opt_refd = "goxel-refd";
static int opt_rounds = 3;
static double opt_duration = 2.0;
static char dir[64], socket_path[128], control_path[136], checkpoint_dir[96];
static pid_t refd_pid = -1;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec * 1e-6;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "session_bench: %s: %s\n", what, detail);
    exit(1);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    double s[MAX_ROUNDS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* ---- the daemon ------------------------------------------------------------------------- */

static void stop_refd(void) {
    if (refd_pid > 0) {
        kill(refd_pid, SIGTERM);
        waitpid(refd_pid, NULL, 0);
        refd_pid = -1;
    }
    if (dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "session_bench: could not remove %s\n", dir);
        dir[0] = 0;
    }
}

/* Whether the (supervised, restarted) daemon answers on its control socket. */
static int daemon_answers(void) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, control_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    static const char ping[] = "{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}\n";
    char buf[256];
    int ok = connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
             send(fd, ping, sizeof ping - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof ping - 1) && recv(fd, buf, sizeof buf, 0) > 0;
    close(fd);
    return ok;
}

static void start_refd(void) {
    strcpy(dir, "/tmp/goxelpool-sbench.XXXXXX");
    if (!mkdtemp(dir)) fail("mkdtemp", strerror(errno));
    snprintf(socket_path, sizeof socket_path, "%s/refd.sock", dir);
    snprintf(control_path, sizeof control_path, "%s.ctl", socket_path);
    snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s/checkpoints", dir);
    if (mkdir(checkpoint_dir, 0700) != 0) fail("mkdir", strerror(errno));
    refd_pid = fork();
    if (refd_pid < 0) fail("fork", strerror(errno));
    if (refd_pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 1); dup2(null, 2); }
        execlp(opt_refd, opt_refd, "--socket", socket_path, "--supervise", "--restart-delay-ms", "10", (char *)NULL);
        _exit(127);
    }
    for (double until = now_s() + 10; !daemon_answers(); sleep_s(0.01))
        if (now_s() > until) fail(opt_refd, "did not answer within 10 s");
}

/* ---- clients and sessions --------------------------------------------------------------- */

static goxelpool_client *client_open(int connections) {
    json_t *config = json_pack("{s:s, s:i, s:{s:i, s:i, s:i}, s:{s:i, s:i}}", "socket_path", socket_path,
                               "timeout_ms", 30000, "pool", "min_connections", connections, "max_connections",
                               connections, "max_waiters", 4096, "reconnect", "initial_backoff_ms", 20,
                               "max_backoff_ms", 200);
    goxelpool_client *client;
    char err[256];
    if (goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) fail("client", err);
    json_decref(config);
    return client;
}

static goxelpool_session *session_open(goxelpool_client *client, int mode, int checkpoint_every) {
    json_t *options = mode == SESSION ? json_object()
                                      : json_pack("{s:b, s:s, s:i, s:i, s:i}", "durable", 1, "checkpoint_dir",
                                                  checkpoint_dir, "checkpoint_every", checkpoint_every,
                                                  "checkpoint_interval_ms", 0, "max_journal_entries", 10000000);
    goxelpool_session *session;
    if (goxelpool_session_open(client, options, 10000, &session) != GOXELPOOL_OK)
        fail("session_open", goxelpool_last_error());
    json_decref(options);
    return session;
}

/* ---- cost rows -------------------------------------------------------------------------- */

typedef struct {
    goxelpool_client *client;
    goxelpool_session *session;
    _Atomic int *phase; /* 0 warm-up, 1 measure, 2 stop */
    int index;
    long calls, errors;
} worker;

static void *worker_main(void *arg) {
    worker *w = arg;
    json_t *params = json_pack("[i,i,i,i,i,i,i,i]", 0, 0, 0, 10, 20, 30, 255, 0);
    for (long n = (long)w->index * 4096;; n++) {
        int phase = atomic_load_explicit(w->phase, memory_order_relaxed);
        if (phase == 2) break;
        json_integer_set(json_array_get(params, 0), n % 32);
        json_integer_set(json_array_get(params, 1), n / 32 % 32);
        json_integer_set(json_array_get(params, 2), n / 1024 % 32);
        goxelpool_status st = w->session
            ? goxelpool_session_call(w->session, "goxel.add_voxel", params, -1, NULL, NULL)
            : goxelpool_call(w->client, "goxel.add_voxel", params, -1, NULL, NULL);
        if (phase == 1) {
            if (st == GOXELPOOL_OK) w->calls++; else w->errors++;
        }
    }
    json_decref(params);
    return NULL;
}

typedef struct { double calls_s, cpu_us; long errors; } cost;

static cost run_cost(int mode, int threads) {
    goxelpool_client *client = client_open(threads);
    goxelpool_session *session = mode == PLAIN ? NULL : session_open(client, mode, mode == JOURNAL ? 10000000 : 10000);
    _Atomic int phase = 0;
    worker ws[64];
    pthread_t tids[64];
    for (int i = 0; i < threads; i++) {
        ws[i] = (worker){.client = client, .session = session, .phase = &phase, .index = i};
        pthread_create(&tids[i], NULL, worker_main, &ws[i]);
    }
    sleep_s(0.3);
    double c0 = cpu_s(), t0 = now_s();
    atomic_store(&phase, 1);
    sleep_s(opt_duration);
    atomic_store(&phase, 2);
    double c1 = cpu_s(), t1 = now_s();
    cost r = {0};
    long calls = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        calls += ws[i].calls;
        r.errors += ws[i].errors;
    }
    r.calls_s = (double)calls / (t1 - t0);
    r.cpu_us = calls ? (c1 - c0) * 1e6 / (double)calls : 0;
    goxelpool_session_close(session);
    goxelpool_client_free(client);
    return r;
}

/* ---- restore row ------------------------------------------------------------------------ */

typedef struct { double start_ms, restore_ms; long journaled, voxels; int ok; } restore;

static restore run_restore(int journaled) {
    restore r = {0};
    goxelpool_client *client = client_open(2);
    /* Past the run: after the first checkpoint, the whole run stays in the journal. */
    goxelpool_session *session = session_open(client, DURABLE, journaled * 2);
    json_t *create = json_pack("[s,i,i,i]", "restore", 256, 256, 256);
    goxelpool_session_call(session, "goxel.create_project", create, -1, NULL, NULL);
    json_decref(create);
    /* create_project is folded into a checkpoint at once; wait for it, so the journal holds
     * exactly the calls below. */
    for (double until = now_s() + 5; now_s() < until; sleep_s(0.005)) {
        json_t *info = goxelpool_session_info(session);
        int folded = json_integer_value(json_object_get(info, "checkpoints")) >= 2;
        json_decref(info);
        if (folded) break;
    }
    json_t *params = json_pack("[i,i,i,i,i,i,i,i]", 0, 0, 0, 1, 2, 3, 255, 0);
    for (int n = 0; n < journaled; n++) {
        json_integer_set(json_array_get(params, 0), n % 100);
        json_integer_set(json_array_get(params, 1), n / 100);
        if (goxelpool_session_call(session, "goxel.add_voxel", params, -1, NULL, NULL) != GOXELPOOL_OK)
            fail("add_voxel", goxelpool_last_error());
    }
    json_decref(params);
    json_t *info = goxelpool_session_info(session);
    r.journaled = (long)json_integer_value(json_object_get(info, "journal_length"));
    json_decref(info);

    double crash = now_s();
    goxelpool_call(client, "refd.crash", NULL, 1000, NULL, NULL); /* never answered: the daemon dies */
    while (!daemon_answers()) {
        if (now_s() - crash > 10) fail("restore", "the daemon did not come back within 10 s");
        sleep_s(0.0005);
    }
    double ready = now_s();
    json_t *result = NULL;
    goxelpool_status st = goxelpool_session_call(session, "goxel.get_status", NULL, 30000, &result, NULL);
    double back = now_s();
    r.ok = st == GOXELPOOL_OK;
    r.voxels = r.ok ? (long)json_integer_value(json_object_get(result, "voxel_count")) : -1;
    json_decref(result);
    r.start_ms = (ready - crash) * 1e3;
    r.restore_ms = (back - ready) * 1e3;
    goxelpool_session_close(session);
    goxelpool_client_free(client);
    return r;
}

int main(int argc, char **argv) {
    int quick = getenv("BENCH_QUICK") && *getenv("BENCH_QUICK") && strcmp(getenv("BENCH_QUICK"), "0");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--refd") && i + 1 < argc) opt_refd = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) opt_rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--duration") && i + 1 < argc) opt_duration = atof(argv[++i]);
        else { fprintf(stderr, "usage: session_bench --refd PATH [--quick] [--rounds N] [--duration S]\n"); return 2; }
    }
    if (quick) { opt_rounds = 1; opt_duration = 0.3; }
    if (opt_rounds < 1) opt_rounds = 1;
    if (opt_rounds > MAX_ROUNDS) opt_rounds = MAX_ROUNDS;
    signal(SIGPIPE, SIG_IGN);
    start_refd();
    atexit(stop_refd);

    static const int thread_counts[] = {1, 8};
    double calls_s[2][MODES][MAX_ROUNDS], cpu[2][MODES][MAX_ROUNDS], ratio[2][MODES][MAX_ROUNDS],
        cpu_ratio[2][MODES][MAX_ROUNDS];
    long errors = 0;
    for (int round = 0; round < opt_rounds; round++) {
        for (int t = 0; t < 2; t++) {
            for (int m = 0; m < MODES; m++) {
                fprintf(stderr, "session_bench: round %d/%d, T=%d, %s\n", round + 1, opt_rounds, thread_counts[t],
                        mode_texts[m]);
                cost c = run_cost(m, thread_counts[t]);
                errors += c.errors;
                calls_s[t][m][round] = c.calls_s;
                cpu[t][m][round] = c.cpu_us;
                ratio[t][m][round] = c.calls_s / calls_s[t][PLAIN][round];
                cpu_ratio[t][m][round] = c.cpu_us / cpu[t][PLAIN][round];
            }
        }
    }
    enum { JOURNALED = 10000 };
    double start_ms[MAX_ROUNDS], restore_ms[MAX_ROUNDS];
    int restores_ok = 1;
    long journaled = 0, voxels = 0;
    for (int round = 0; round < opt_rounds; round++) {
        fprintf(stderr, "session_bench: round %d/%d, restore with %d journaled calls\n", round + 1, opt_rounds, JOURNALED);
        restore r = run_restore(JOURNALED);
        start_ms[round] = r.start_ms;
        restore_ms[round] = r.restore_ms;
        restores_ok &= r.ok && r.voxels == JOURNALED && r.journaled == JOURNALED;
        journaled = r.journaled;
        voxels = r.voxels;
    }

    printf("libgoxelpool %s sessions benchmark: %d round%s of %.1f s per row, median of the rounds; "
           "every call is goxel.add_voxel; T threads on T connections\n",
           goxelpool_version(), opt_rounds, opt_rounds > 1 ? "s" : "", opt_duration);
    printf("%3s  %-34s %10s %8s %7s %7s\n", "T", "mode", "calls/s", "CPU µs", "ratio", "cpu×");
    json_t *rows = json_array();
    for (int t = 0; t < 2; t++) {
        for (int m = 0; m < MODES; m++) {
            double c = median(calls_s[t][m], opt_rounds), u = median(cpu[t][m], opt_rounds);
            double r = median(ratio[t][m], opt_rounds), cr = median(cpu_ratio[t][m], opt_rounds);
            printf("%3d  %-34s %10.0f %8.1f %7.3f %7.3f\n", thread_counts[t], mode_texts[m], c, u, r, cr);
            json_array_append_new(rows, json_pack("{s:s, s:s, s:i, s:i, s:f, s:f, s:f, s:f}", "bench", "session_cost",
                                                  "mode", mode_names[m], "threads", thread_counts[t], "rounds",
                                                  opt_rounds, "calls_per_s", c, "cpu_us_per_call", u, "ratio", r,
                                                  "cpu_ratio", cr));
        }
    }
    double s = median(start_ms, opt_rounds), rs = median(restore_ms, opt_rounds);
    printf("\nRestore of a durable session with %ld journaled calls after kill -9 of its daemon: the daemon's own "
           "start %.0f ms, then %.0f ms until the session's next call returned (%ld voxels, %s)\n",
           journaled, s, rs, voxels, restores_ok ? "all there" : "WRONG");
    json_array_append_new(rows, json_pack("{s:s, s:i, s:I, s:f, s:f, s:b, s:I, s:i}", "bench", "session_restore",
                                          "rounds", opt_rounds, "journaled_calls", (json_int_t)journaled,
                                          "daemon_start_ms", s, "restore_ms", rs, "all_ok", restores_ok,
                                          "errors", (json_int_t)errors, "reconnect_initial_backoff_ms", 20));
    size_t i;
    json_t *o;
    json_array_foreach(rows, i, o) {
        char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
        puts(line);
        free(line);
    }
    json_decref(rows);
    return errors == 0 && restores_ok ? 0 : 1;
}
