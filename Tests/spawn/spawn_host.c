/*
 * spawn_host.c - a host program's view of managed daemons (spawn mode), run by `make test`
 * (spawn-check): the library's children must stay out of the host's process handling.
 *
 *   spawn_host GOXEL_REFD
 *
 * 1. The host has its own SIGCHLD handler, which reaps with waitpid(-1, WNOHANG) (the most
 *    greedy pattern there is), and forks children of its own while a client with two managed
 *    daemons takes calls and one daemon is killed with SIGKILL. The host must reap exactly its
 *    own children with their exit codes; no pid of the library's ever shows up in its handler;
 *    the library still learns the killed daemon's real status and restarts it.
 * 2. The host then waits for a child of its own with a plain blocking waitpid(pid) while the
 *    library's daemons come and go: it gets that child's status.
 * 3. A host that ignores SIGCHLD (the kernel then reaps its children by itself): the library
 *    still gets the status of a daemon killed with SIGKILL.
 * 4. A host that dies (SIGKILL, no cleanup) takes its daemons with it (PR_SET_PDEATHSIG); this
 *    program is their subreaper and checks how they ended.
 * After each client is freed: none of its daemons exists in /proc (no orphan, no zombie), and
 * its private directory is gone.
 * Prints one PASS/FAIL line per check and "N passed, N failed"; exit status 1 on any failure.
 */
#define _GNU_SOURCE
#include <goxelpool.h>
#include <jansson.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;

static void check(int ok, const char *name, const char *fmt, ...) {
    char detail[1024] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, detail[0] ? ": " : "", detail);
    fflush(stdout);
    if (ok) passed++; else failed++;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

static int exists(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d", (int)pid);
    return access(path, F_OK) == 0;
}

/* ---- the daemons a client started, from its daemon events ------------------------------- */

enum { MAX_PIDS = 256 };

struct daemon_log {
    pthread_mutex_t lock;
    pid_t started[MAX_PIDS];
    int n_started;
    pid_t killed_by_9[MAX_PIDS]; /* daemon_exited with "signal": 9 */
    int n_killed_by_9;
    int unknown_status;          /* daemon_exited with neither exit_status nor signal */
};

static void on_daemon_event(const json_t *event, void *userdata) {
    struct daemon_log *log = userdata;
    const char *type = json_string_value(json_object_get(event, "type"));
    json_t *pid = json_object_get(event, "pid");
    if (!type || !json_is_integer(pid)) return;
    pthread_mutex_lock(&log->lock);
    if (strcmp(type, "daemon_started") == 0 && log->n_started < MAX_PIDS) {
        log->started[log->n_started++] = (pid_t)json_integer_value(pid);
    } else if (strcmp(type, "daemon_exited") == 0) {
        json_t *sig = json_object_get(event, "signal"), *code = json_object_get(event, "exit_status");
        if (json_is_integer(sig) && json_integer_value(sig) == 9 && log->n_killed_by_9 < MAX_PIDS)
            log->killed_by_9[log->n_killed_by_9++] = (pid_t)json_integer_value(pid);
        if (!json_is_integer(sig) && !json_is_integer(code)) log->unknown_status++;
    }
    pthread_mutex_unlock(&log->lock);
}

static int logged(struct daemon_log *log, pid_t *list, int *count, pid_t pid) {
    pthread_mutex_lock(&log->lock);
    int found = 0;
    for (int i = 0; i < *count; i++) found |= list[i] == pid;
    pthread_mutex_unlock(&log->lock);
    return found;
}

static int started_count(struct daemon_log *log) {
    pthread_mutex_lock(&log->lock);
    int n = log->n_started;
    pthread_mutex_unlock(&log->lock);
    return n;
}

/* A client with `instances` goxel-refd daemons; listens to its daemon events. */
static goxelpool_client *managed_client(const char *refd, int instances, struct daemon_log *log) {
    json_t *config = json_pack("{s:i, s:{s:i, s:i}, s:{s:[s,s,s], s:i, s:i}}", "timeout_ms", 5000,
                               "reconnect", "initial_backoff_ms", 100, "max_backoff_ms", 1000,
                               "spawn", "command", refd, "--socket", "{socket}", "instances", instances,
                               "stop_grace_ms", 1000);
    goxelpool_client *client = NULL;
    char err[512];
    if (goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) {
        fprintf(stderr, "spawn_host: goxelpool_client_new: %s\n", err);
        exit(2);
    }
    json_decref(config);
    memset(log, 0, sizeof *log);
    pthread_mutex_init(&log->lock, NULL);
    goxelpool_add_listener(client, GOXELPOOL_EVENT_DAEMON, on_daemon_event, log, NULL);
    return client;
}

/* The pids of the ready daemons, and the private directory, from the statistics. */
static int ready_daemons(goxelpool_client *client, pid_t *pids, int max, char *directory, size_t len) {
    json_t *stats = goxelpool_stats(client);
    json_t *list = json_object_get(stats, "daemons"), *item;
    size_t i;
    int n = 0;
    json_array_foreach(list, i, item) {
        const char *state = json_string_value(json_object_get(item, "state"));
        json_t *pid = json_object_get(item, "pid");
        if (state && strcmp(state, "ready") == 0 && json_is_integer(pid) && n < max) pids[n++] = (pid_t)json_integer_value(pid);
    }
    const char *dir = json_string_value(json_object_get(json_object_get(stats, "spawn"), "directory"));
    if (directory) snprintf(directory, len, "%s", dir ? dir : "");
    json_decref(stats);
    return n;
}

static int wait_ready(goxelpool_client *client, int want, pid_t *pids, char *directory, size_t len) {
    for (int i = 0; i < 500; i++) {
        if (ready_daemons(client, pids, 16, directory, len) >= want) return 1;
        sleep_ms(10);
    }
    return 0;
}

static int ping_ok(goxelpool_client *client) {
    json_t *result = NULL;
    goxelpool_status st = goxelpool_call(client, "ping", NULL, 5000, &result, NULL);
    json_decref(result);
    return st == GOXELPOOL_OK;
}

/* After free: every daemon ever started is gone from /proc, and so is the directory. */
static void check_nothing_left(const char *name, struct daemon_log *log, const char *directory) {
    int left = 0;
    pid_t example = 0;
    for (int i = 0; i < log->n_started; i++)
        if (exists(log->started[i])) { left++; example = log->started[i]; }
    struct stat st;
    int dir_left = directory[0] && stat(directory, &st) == 0;
    check(left == 0 && !dir_left && log->n_started > 0, name, "%d daemons started, %d still in /proc (e.g. %d), directory %s %s",
          log->n_started, left, (int)example, directory, dir_left ? "still there" : "removed");
}

/* ---- 1. the host's own SIGCHLD handler ---------------------------------------------------- */

enum { OWN_CHILDREN = 8 };
static volatile sig_atomic_t n_reaped;
static pid_t reaped_pid[64];
static int reaped_status[64];

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno, status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (n_reaped < 64) {
            reaped_pid[n_reaped] = pid;
            reaped_status[n_reaped] = status;
            n_reaped++;
        }
    }
    errno = saved;
}

static void host_sigchld_handler(const char *refd) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);

    struct daemon_log log;
    goxelpool_client *client = managed_client(refd, 2, &log);
    pid_t daemons[16];
    char directory[256] = "";
    int ready = wait_ready(client, 2, daemons, directory, sizeof directory);
    check(ready, "sigchld: two managed daemons ready", "%s", directory);
    if (!ready) { goxelpool_client_free(client); return; }

    pid_t own[OWN_CHILDREN];
    int calls_failed = 0;
    for (int i = 0; i < OWN_CHILDREN; i++) {
        own[i] = fork();
        if (own[i] == 0) {
            sleep_ms(20 * (i % 3));
            _exit(10 + i);
        }
        if (i == OWN_CHILDREN / 2) kill(daemons[0], SIGKILL); /* a library child dies meanwhile */
        for (int c = 0; c < 20; c++) calls_failed += !ping_ok(client);
    }
    /* Wait for the handler to reap all of the host's children, and for the restart. */
    for (int i = 0; i < 300 && n_reaped < OWN_CHILDREN; i++) sleep_ms(10);
    for (int i = 0; i < 300 && !logged(&log, log.killed_by_9, &log.n_killed_by_9, daemons[0]); i++) sleep_ms(10);
    for (int i = 0; i < 300 && started_count(&log) < 3; i++) sleep_ms(10);

    int own_ok = n_reaped == OWN_CHILDREN, library_seen = 0;
    for (int i = 0; i < n_reaped; i++) {
        int mine = -1;
        for (int j = 0; j < OWN_CHILDREN; j++) if (reaped_pid[i] == own[j]) mine = j;
        if (mine < 0) {
            own_ok = 0;
            if (logged(&log, log.started, &log.n_started, reaped_pid[i])) library_seen++;
        } else if (!WIFEXITED(reaped_status[i]) || WEXITSTATUS(reaped_status[i]) != 10 + mine) {
            own_ok = 0;
        }
    }
    check(own_ok, "sigchld: the host's handler reaped exactly its own children with their exit codes",
          "%d of %d reaped", (int)n_reaped, OWN_CHILDREN);
    check(library_seen == 0, "sigchld: no library pid ever reached the host's handler", "%d seen", library_seen);
    check(logged(&log, log.killed_by_9, &log.n_killed_by_9, daemons[0]) && log.unknown_status == 0,
          "sigchld: the library got the killed daemon's status (signal 9)", "pid %d", (int)daemons[0]);
    check(started_count(&log) >= 3 && ping_ok(client), "sigchld: the killed daemon was restarted and calls go on",
          "%d daemons started", started_count(&log));
    check(calls_failed == 0, "sigchld: no ping failed while children came and went", "%d failed", calls_failed);

    /* 2. A blocking waitpid of the host's own child, SIGCHLD back to the default. */
    signal(SIGCHLD, SIG_DFL);
    pid_t pids[16];
    ready_daemons(client, pids, 16, NULL, 0);
    pid_t child = fork();
    if (child == 0) {
        sleep_ms(100);
        _exit(42);
    }
    kill(pids[0], SIGKILL);
    int status = 0;
    pid_t got;
    while ((got = waitpid(child, &status, 0)) < 0 && errno == EINTR) {}
    check(got == child && WIFEXITED(status) && WEXITSTATUS(status) == 42, "waitpid: the host's blocking waitpid(pid) gets its child's status",
          "got %d, status %d", (int)got, status);
    /* wait() for "any child" finds none of the library's: they are not the host's to reap. */
    got = waitpid(-1, &status, WNOHANG);
    check(got < 0 && errno == ECHILD, "waitpid: waitpid(-1) sees no child of the library", "got %d (%s)", (int)got,
          got < 0 ? strerror(errno) : "a pid");

    goxelpool_client_free(client);
    check_nothing_left("sigchld: after free", &log, directory);
}

/* ---- 3. a host that ignores SIGCHLD ------------------------------------------------------- */

static void host_ignores_sigchld(const char *refd) {
    signal(SIGCHLD, SIG_IGN);
    struct daemon_log log;
    goxelpool_client *client = managed_client(refd, 1, &log);
    pid_t daemons[16];
    char directory[256] = "";
    int ready = wait_ready(client, 1, daemons, directory, sizeof directory);
    if (ready) {
        kill(daemons[0], SIGKILL);
        for (int i = 0; i < 300 && !logged(&log, log.killed_by_9, &log.n_killed_by_9, daemons[0]); i++) sleep_ms(10);
    }
    check(ready && logged(&log, log.killed_by_9, &log.n_killed_by_9, daemons[0]) && ping_ok(client),
          "sig_ign: with SIGCHLD ignored the library still reaps its daemon and gets its status", "pid %d", (int)daemons[0]);
    goxelpool_client_free(client);
    check_nothing_left("sig_ign: after free", &log, directory);
    signal(SIGCHLD, SIG_DFL);
}

/* ---- 4. the host dies ----------------------------------------------------------------------- */

static void host_dies(const char *refd) {
    /* Orphans come to us instead of init, so we can see how they ended. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    int fds[2];
    if (pipe(fds) != 0) { check(0, "death: pipe", "%s", strerror(errno)); return; }
    pid_t host = fork();
    if (host == 0) {
        close(fds[0]);
        struct daemon_log log;
        goxelpool_client *client = managed_client(refd, 2, &log);
        pid_t daemons[16];
        char directory[256] = "";
        if (!wait_ready(client, 2, daemons, directory, sizeof directory)) _exit(3);
        dprintf(fds[1], "%d %d %s\n", (int)daemons[0], (int)daemons[1], directory);
        close(fds[1]);
        for (;;) pause(); /* killed by the parent: no cleanup runs */
    }
    close(fds[1]);
    char line[512] = "";
    FILE *in = fdopen(fds[0], "r");
    int got = in && fgets(line, sizeof line, in) != NULL;
    if (in) fclose(in);
    int a = 0, b = 0;
    char directory[256] = "";
    got = got && sscanf(line, "%d %d %255s", &a, &b, directory) == 3;
    kill(host, SIGKILL);
    int status;
    waitpid(host, &status, 0);
    line[strcspn(line, "\n")] = 0;
    check(got, "death: the host's two daemons ran", "%s", line);
    if (!got) return;
    pid_t daemons[2] = {a, b};
    int killed = 0;
    for (int i = 0; i < 2; i++) {
        /* Reparented to us; their exit signal is SIGCHLD now, a plain waitpid sees them. */
        for (int t = 0; t < 300; t++) {
            pid_t r = waitpid(daemons[i], &status, WNOHANG | __WALL);
            if (r == daemons[i]) { killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; break; }
            sleep_ms(10);
        }
    }
    check(killed == 2 && !exists(a) && !exists(b), "death: PR_SET_PDEATHSIG killed both daemons with the host", "%d of 2", killed);
    /* The host could not clean up: its directory is left (as after any crash); remove it. */
    char command[300];
    snprintf(command, sizeof command, "rm -rf '%s'", directory);
    if (strncmp(directory, "/tmp/goxelpool-", 15) == 0 && system(command) != 0) fprintf(stderr, "spawn_host: %s failed\n", command);
    prctl(PR_SET_CHILD_SUBREAPER, 0);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: spawn_host GOXEL_REFD\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    host_sigchld_handler(argv[1]);
    host_ignores_sigchld(argv[1]);
    host_dies(argv[1]);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
