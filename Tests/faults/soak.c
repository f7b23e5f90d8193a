/* Soak: mixed load from 16 threads on one client for DURATION seconds against a supervised
 * goxel-refd that is crashed (refd.crash) every RESTART seconds. Prints calls, failures by status
 * and RSS over time. A Swift-free C program linking libgoxelpool like a user.
 * Usage: soak SOCKET DURATION_S RESTART_S */
#define _DEFAULT_SOURCE /* usleep, alongside POSIX 2008 */
#define _POSIX_C_SOURCE 200809L
#include <goxelpool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define THREADS 16
#define NSTATUS 16
static goxelpool_client *client;
static volatile int stop_flag;
static long counts[NSTATUS];
static long calls;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static double now_s(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static long rss_kb(void) {
    long pages = 0, resident = 0; FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f); return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void *worker(void *arg) {
    long index = (long)arg, local[NSTATUS] = {0}, n = 0;
    while (!stop_flag) {
        json_t *params = NULL, *result = NULL, *rpc_error = NULL;
        const char *method = "ping";
        switch ((index + n) % 4) {
        case 1: method = "goxel.add_voxel"; params = json_pack("[i,i,i,i,i,i,i,i]", (int)(n % 64), 1, 2, 255, 0, 0, 255, 0); break;
        case 2: method = "goxel.get_voxel"; params = json_pack("[i,i,i]", (int)(n % 64), 1, 2); break;
        case 3: method = "echo"; params = json_pack("[s,i]", "soak", (int)n); break;
        }
        goxelpool_status st = goxelpool_call(client, method, params, 1000, &result, &rpc_error);
        json_decref(params); json_decref(result); json_decref(rpc_error);
        local[st < NSTATUS ? st : NSTATUS - 1]++; n++;
        if (st != GOXELPOOL_OK) usleep(1000);
    }
    pthread_mutex_lock(&lock);
    for (int i = 0; i < NSTATUS; i++) counts[i] += local[i];
    calls += n;
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void crash_daemon(const char *socket_path) {
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof a.sun_path, "%s.ctl", socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        const char *req = "{\"jsonrpc\":\"2.0\",\"method\":\"refd.crash\",\"id\":1}\n";
        if (write(fd, req, strlen(req)) < 0) perror("write");
    }
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s SOCKET DURATION_S RESTART_S\n", argv[0]); return 2; }
    const char *path = argv[1]; double duration = atof(argv[2]), restart = atof(argv[3]);
    json_t *config = json_pack("{s:s, s:i, s:{s:i, s:i}, s:{s:i, s:i}, s:{s:i}}", "socket_path", path, "timeout_ms", 1000,
                               "pool", "min_connections", 4, "max_connections", 8,
                               "reconnect", "initial_backoff_ms", 50, "max_backoff_ms", 1000, "health", "interval_ms", 1000);
    char err[256];
    if (goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) { fprintf(stderr, "%s\n", err); return 1; }
    json_decref(config);
    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
    double start = now_s(), next_crash = start + restart, next_print = start;
    long rss_first = -1, rss_last = 0; int restarts = 0;
    while (now_s() - start < duration) {
        if (now_s() >= next_print) {
            rss_last = rss_kb(); if (rss_first < 0 && now_s() - start > 5) rss_first = rss_last;
            printf("t=%5.0fs rss=%ld KiB restarts=%d\n", now_s() - start, rss_last, restarts); fflush(stdout);
            next_print += 10;
        }
        if (now_s() >= next_crash) { crash_daemon(path); restarts++; next_crash += restart; }
        usleep(100000);
    }
    stop_flag = 1;
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    goxelpool_client_free(client);
    printf("soak: %.0f s, %d daemon restarts, %ld calls (%.0f/s)\n", duration, restarts, calls, calls / duration);
    for (int i = 0; i < NSTATUS; i++)
        if (counts[i]) printf("  %-13s %ld\n", goxelpool_status_name((goxelpool_status)i), counts[i]);
    printf("  rss: %ld KiB after warm-up, %ld KiB at end\n", rss_first, rss_kb());
    return 0;
}
