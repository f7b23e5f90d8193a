/* ab: two builds of libgoxelpool against each other, in the same cycles.
 *
 *   build/bench/ab --refd build/stage/bin/goxel-refd [--threads 32] [--connections 10]
 *                  [--cycles 40] [--slice 0.25] [--one-cpu] LIB_A LIB_B
 *
 * A change to the library worth a few per cent cannot be told from two runs of `make bench`
 * (this shared machine moves more than that between runs a minute apart). Here both builds are
 * loaded into one process (dlopen, each with its own symbols: give each copy its own soname, see
 * `make bench-ab`), each runs a pool of C connections with T threads of its own against the same
 * daemon, and they take turns: every cycle runs A and B for one slice each, in a random order.
 * Per cycle the ratio of calls/s (B / A) and the difference of client CPU per call (B - A, the
 * whole process's CPU over the slice). Two such runs, each in a process of its own: A loaded
 * first, then B loaded first (on two CPUs the library loaded second ran 3 to 5 % slower in A/A
 * tests, so each build takes each place once). Printed: the median of each run and of both runs' cycles
 * together, with a 95 % confidence interval of the median (order statistics n/2 -+ 0.98 sqrt(n)),
 * and the totals.
 * --one-cpu pins this process, and so the daemon it starts, to CPU 0 first (see bench --one-cpu). */
#define _GNU_SOURCE
#include <goxelpool.h>
#include <jansson.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CYCLES 1000
#define MAX_THREADS 256

typedef goxelpool_status (*new_fn)(const json_t *, goxelpool_client **, char *, size_t);
typedef goxelpool_status (*call_fn)(goxelpool_client *, const char *, const json_t *, int, json_t **, json_t **);
typedef void (*free_fn)(goxelpool_client *);

typedef struct {
    call_fn call;
    free_fn free;
    goxelpool_client *client;
    double calls_per_s[MAX_CYCLES];
    double cpu_us[MAX_CYCLES];
    long calls, errors;
    double seconds, cpu_s;
} library;

typedef struct {
    library *lib;
    int index;
    long calls, errors;
} worker;

static library libs[2];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go = PTHREAD_COND_INITIALIZER, parked_cv = PTHREAD_COND_INITIALIZER;
static int generation[2], parked[2], stopping;
static atomic_int active;
static int opt_threads = 32, opt_connections = 10, opt_cycles = 40, opt_one_cpu;
static double opt_slice = 0.25;
static pid_t refd_pid = -1;
static char tmpdir[64], socket_path[128];

static void die(const char *message) {
    fprintf(stderr, "ab: %s\n", message);
    if (refd_pid > 0) kill(refd_pid, SIGTERM);
    exit(1);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
           (double)u.ru_stime.tv_usec / 1e6;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    int which = (int)(w->lib - libs), seen = 0;
    json_t *params = json_pack("[i,i,i]", w->index, 2, 3);
    pthread_mutex_lock(&lock);
    for (;;) {
        while (generation[which] == seen && !stopping) pthread_cond_wait(&go, &lock);
        if (stopping) break;
        seen = generation[which];
        pthread_mutex_unlock(&lock);
        while (atomic_load_explicit(&active, memory_order_relaxed)) {
            json_t *result = NULL;
            if (w->lib->call(w->lib->client, "goxel.get_voxel", params, -1, &result, NULL) == GOXELPOOL_OK) w->calls++;
            else w->errors++;
            json_decref(result);
        }
        pthread_mutex_lock(&lock);
        if (++parked[which] == opt_threads) pthread_cond_broadcast(&parked_cv);
    }
    pthread_mutex_unlock(&lock);
    json_decref(params);
    return NULL;
}

/* One slice of library `which`: wakes its threads, lets them call for opt_slice s, waits until
 * every one is parked again. Returns calls/s and client CPU per call (µs) over the slice. */
static void slice(worker *workers, int which, double *calls_per_s, double *cpu_us) {
    long before = 0, after = 0;
    for (int i = 0; i < opt_threads; i++) before += workers[which * opt_threads + i].calls;
    double cpu0 = cpu_s(), t0 = now_s();
    pthread_mutex_lock(&lock);
    parked[which] = 0;
    atomic_store(&active, 1);
    generation[which]++;
    pthread_cond_broadcast(&go);
    pthread_mutex_unlock(&lock);
    struct timespec pause = {(time_t)opt_slice, (long)((opt_slice - (double)(time_t)opt_slice) * 1e9)};
    nanosleep(&pause, NULL);
    atomic_store(&active, 0);
    pthread_mutex_lock(&lock);
    while (parked[which] < opt_threads) pthread_cond_wait(&parked_cv, &lock);
    pthread_mutex_unlock(&lock);
    double t1 = now_s(), cpu1 = cpu_s();
    for (int i = 0; i < opt_threads; i++) after += workers[which * opt_threads + i].calls;
    long calls = after - before;
    *calls_per_s = (double)calls / (t1 - t0);
    *cpu_us = calls > 0 ? (cpu1 - cpu0) * 1e6 / (double)calls : 0;
    libs[which].calls += calls;
    libs[which].seconds += t1 - t0;
    libs[which].cpu_s += cpu1 - cpu0;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of v[0..n) and a 95 % confidence interval of it (v is sorted in place). */
static void median_ci(double *v, int n, double *median, double *low, double *high) {
    qsort(v, (size_t)n, sizeof *v, compare);
    *median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    int lo = (int)floor(n / 2.0 - 0.98 * sqrt(n)), hi = (int)ceil(n / 2.0 + 0.98 * sqrt(n));
    *low = v[lo < 0 ? 0 : lo];
    *high = v[hi >= n ? n - 1 : hi];
}

static void start_refd(const char *refd) {
    strcpy(tmpdir, "/tmp/goxelpool-ab.XXXXXX");
    if (!mkdtemp(tmpdir)) die("mkdtemp failed");
    snprintf(socket_path, sizeof socket_path, "%s/refd.sock", tmpdir);
    refd_pid = fork();
    if (refd_pid < 0) die("fork failed");
    if (refd_pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) dup2(null, 1);
        execlp(refd, refd, "--socket", socket_path, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        struct stat st;
        if (stat(socket_path, &st) == 0) return;
        usleep(10000);
    }
    die("the daemon did not create its socket");
}

static void load(library *lib, const char *path) {
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) die(dlerror());
    new_fn client_new = (new_fn)dlsym(handle, "goxelpool_client_new");
    lib->call = (call_fn)dlsym(handle, "goxelpool_call");
    lib->free = (free_fn)dlsym(handle, "goxelpool_client_free");
    if (!client_new || !lib->call || !lib->free) die("a goxelpool symbol is missing");
    json_t *config = json_pack("{s:s, s:{s:i, s:i}}", "socket_path", socket_path, "pool", "min_connections",
                               opt_connections, "max_connections", opt_connections);
    char error[256];
    if (client_new(config, &lib->client, error, sizeof error) != GOXELPOOL_OK) die(error);
    json_decref(config);
}

/* What one run (one process) sends back to the parent. */
typedef struct {
    double ratio[MAX_CYCLES], cpu_diff[MAX_CYCLES];
    double calls[2], seconds[2], cpu_s[2];
    long errors[2];
} run_result;

/* One run, in a child process: the library `first` (0: A, 1: B) is loaded, gets its client and its
 * first thread before the other's. The results are B against A whatever the order. */
static void run(const char *refd, const char *paths[2], int first, run_result *out) {
    if (opt_one_cpu) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(0, &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0) die("sched_setaffinity failed");
    }
    start_refd(refd);
    load(&libs[first], paths[first]);
    load(&libs[1 - first], paths[1 - first]);
    usleep(300000); /* min_connections open */
    worker *workers = calloc((size_t)(2 * opt_threads), sizeof *workers);
    pthread_t *tids = calloc((size_t)(2 * opt_threads), sizeof *tids);
    if (!workers || !tids) die("out of memory");
    /* In turns, the first library's first. */
    for (int k = 0; k < 2 * opt_threads; k++) {
        int which = k % 2 == 0 ? first : 1 - first, i = which * opt_threads + k / 2;
        workers[i] = (worker){.lib = &libs[which], .index = k / 2};
        pthread_create(&tids[i], NULL, worker_main, &workers[i]);
    }
    double ignored_rate, ignored_cpu;
    slice(workers, first, &ignored_rate, &ignored_cpu); /* warm-up, not counted */
    slice(workers, 1 - first, &ignored_rate, &ignored_cpu);
    for (int l = 0; l < 2; l++) libs[l].calls = 0, libs[l].seconds = libs[l].cpu_s = 0;
    unsigned seed = 1; /* the same orders in every run */
    for (int c = 0; c < opt_cycles; c++) {
        int which = rand_r(&seed) % 2;
        for (int k = 0; k < 2; k++, which = 1 - which)
            slice(workers, which, &libs[which].calls_per_s[c], &libs[which].cpu_us[c]);
        out->ratio[c] = libs[1].calls_per_s[c] / libs[0].calls_per_s[c];
        out->cpu_diff[c] = libs[1].cpu_us[c] - libs[0].cpu_us[c];
    }
    pthread_mutex_lock(&lock);
    stopping = 1;
    pthread_cond_broadcast(&go);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < 2 * opt_threads; i++) pthread_join(tids[i], NULL);
    for (int l = 0; l < 2; l++) {
        out->calls[l] = (double)libs[l].calls;
        out->seconds[l] = libs[l].seconds;
        out->cpu_s[l] = libs[l].cpu_s;
        out->errors[l] = 0;
    }
    for (int i = 0; i < 2 * opt_threads; i++) out->errors[i / opt_threads] += workers[i].errors;
    for (int l = 0; l < 2; l++) libs[l].free(libs[l].client);
    kill(refd_pid, SIGTERM);
    waitpid(refd_pid, NULL, 0);
    unlink(socket_path);
    rmdir(tmpdir);
    free(workers);
    free(tids);
}

static void print_medians(const char *what, double *ratio, double *cpu_diff, int n) {
    double rm, rlo, rhi, cm, clo, chi;
    median_ci(ratio, n, &rm, &rlo, &rhi);
    median_ci(cpu_diff, n, &cm, &clo, &chi);
    printf("  %-34s B / A calls/s %.3f (95 %% CI %.3f-%.3f), B - A CPU per call %+.2f µs (%+.2f %+.2f)\n", what, rm,
           rlo, rhi, cm, clo, chi);
}

int main(int argc, char **argv) {
    const char *refd = NULL, *paths[2] = {NULL, NULL};
    int npaths = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--refd") && i + 1 < argc) refd = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) opt_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--connections") && i + 1 < argc) opt_connections = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cycles") && i + 1 < argc) opt_cycles = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--slice") && i + 1 < argc) opt_slice = atof(argv[++i]);
        else if (!strcmp(argv[i], "--one-cpu")) opt_one_cpu = 1;
        else if (argv[i][0] != '-' && npaths < 2) paths[npaths++] = argv[i];
        else die("usage: ab --refd PATH [--threads T] [--connections C] [--cycles N] [--slice S] [--one-cpu] LIB_A LIB_B");
    }
    if (!refd || npaths != 2) die("usage: ab --refd PATH [options] LIB_A LIB_B");
    if (opt_threads < 1 || opt_threads > MAX_THREADS || opt_connections < 1 || opt_cycles < 3 ||
        opt_cycles > MAX_CYCLES || opt_slice <= 0)
        die("--threads 1..256, --connections >= 1, --cycles 3..1000, --slice > 0");
    /* Two runs, each in a process of its own: A loaded first, then B. On two CPUs the library
     * loaded second ran 3 to 5 % slower than the first in the same process, the same build
     * twice included (A/A tests), so each build takes each place once and the two runs' cycles
     * are pooled (their medians apart show that bias). */
    static run_result results[2];
    for (int first = 0; first < 2; first++) {
        fflush(stdout);
        run_result *shared = mmap(NULL, sizeof(run_result), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (shared == MAP_FAILED) die("mmap failed");
        pid_t child = fork();
        if (child < 0) die("fork failed");
        if (child == 0) {
            run(refd, paths, first, shared);
            _exit(0);
        }
        int status;
        if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) die("a run failed");
        results[first] = *shared;
        munmap(shared, sizeof(run_result));
    }
    printf("ab: %d threads on a pool of %d connections per library, %d cycles of %.2f s in each of two runs (A loaded "
           "first, then B)%s\n", opt_threads, opt_connections, opt_cycles, opt_slice,
           opt_one_cpu ? ", this process and its daemon on CPU 0" : "");
    for (int l = 0; l < 2; l++) {
        double calls = results[0].calls[l] + results[1].calls[l], seconds = results[0].seconds[l] + results[1].seconds[l];
        double cpu = results[0].cpu_s[l] + results[1].cpu_s[l];
        printf("  %c %-50s %8.0f calls/s  CPU %5.1f µs/call  errors %ld\n", 'A' + l, paths[l], calls / seconds,
               cpu * 1e6 / calls, results[0].errors[l] + results[1].errors[l]);
    }
    double ratio[2 * MAX_CYCLES], cpu_diff[2 * MAX_CYCLES], first_ratio[MAX_CYCLES], first_cpu[MAX_CYCLES];
    for (int first = 0; first < 2; first++) {
        memcpy(first_ratio, results[first].ratio, sizeof(double) * (size_t)opt_cycles);
        memcpy(first_cpu, results[first].cpu_diff, sizeof(double) * (size_t)opt_cycles);
        print_medians(first ? "run 2 (B loaded first):" : "run 1 (A loaded first):", first_ratio, first_cpu, opt_cycles);
        memcpy(ratio + first * opt_cycles, results[first].ratio, sizeof(double) * (size_t)opt_cycles);
        memcpy(cpu_diff + first * opt_cycles, results[first].cpu_diff, sizeof(double) * (size_t)opt_cycles);
    }
    print_medians("both runs' cycles:", ratio, cpu_diff, 2 * opt_cycles);
    double rm, rlo, rhi, cm, clo, chi;
    median_ci(ratio, 2 * opt_cycles, &rm, &rlo, &rhi);
    median_ci(cpu_diff, 2 * opt_cycles, &cm, &clo, &chi);
    printf("{\"bench\":\"ab\",\"threads\":%d,\"connections\":%d,\"cycles\":%d,\"one_cpu\":%s,\"ratio\":%.4f,"
           "\"ratio_low\":%.4f,\"ratio_high\":%.4f,\"cpu_diff_us\":%.3f,\"cpu_diff_low\":%.3f,\"cpu_diff_high\":%.3f}\n",
           opt_threads, opt_connections, 2 * opt_cycles, opt_one_cpu ? "true" : "false", rm, rlo, rhi, cm, clo, chi);
    return 0;
}
