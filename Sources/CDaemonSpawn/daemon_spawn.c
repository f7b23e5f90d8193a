/* See include/daemon_spawn.h. */
#define _GNU_SOURCE
#include "daemon_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* The reaper and the daemon (before execve) share the host's memory and thread pointer: they
 * must not touch errno or any libc state. System calls are made directly; they return -errno. */
#if defined(__x86_64__)
static inline long raw_syscall(long n, long a, long b, long c, long d, long e) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static inline long raw_syscall(long n, long a, long b, long c, long d, long e) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory", "cc");
    return x0;
}
#else
/* Elsewhere through libc: errno may then be written on a failure (the only difference). */
static inline long raw_syscall(long n, long a, long b, long c, long d, long e) {
    long r = syscall(n, a, b, c, d, e);
    return r < 0 ? -errno : r;
}
#endif

#define CHILD_CODE __attribute__((no_sanitize("address", "thread", "undefined"), noinline))

/* The kernel's struct sigaction on 64-bit Linux (x86_64, arm64): all zero is SIG_DFL. */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};
#define KERNEL_SIGSET_BYTES 8

/* Reaper -> library, through the status pipe. Each is one atomic 8-byte write. */
enum { RECORD_STARTED = 1, RECORD_FAILED = 2, RECORD_EXITED = 3, RECORD_KILLED = 4, RECORD_UNKNOWN = 5 };
struct record {
    int32_t kind;
    int32_t value;
};

enum { STACK_BYTES = 64 * 1024 };

struct spawn_state {
    const gxp_spawn_request *request; /* valid until the STARTED or FAILED record is read */
    pid_t host;
    pid_t daemon_parent;              /* what the daemon's getppid() must say */
    int status_w;                     /* the reaper's ends of the pipes */
    int ack_r;
    int exec_r;                       /* execve's failure (an errno), or EOF once it succeeded */
    int exec_w;
    void *stacks;                     /* [reaper's stack | daemon's stack] */
    int ended;                        /* the library has read the daemon's end */
    int in_thread;                    /* the reaper is a thread of the host (under valgrind) */
    pthread_t thread;
};

CHILD_CODE static void child_exit(int code) {
    for (;;) raw_syscall(SYS_exit_group, code, 0, 0, 0, 0);
}

CHILD_CODE static void send_record(int fd, int kind, int value) {
    struct record r = {kind, value};
    while (raw_syscall(SYS_write, fd, (long)&r, sizeof r, 0, 0) == -EINTR) {}
}

/* Closes every descriptor but the (at most 8) in `keep`. */
CHILD_CODE static void close_all_but(const int *keep, int n) {
    int sorted[8];
    for (int i = 0; i < n && i < 8; i++) {
        int v = keep[i], j = i;
        while (j > 0 && sorted[j - 1] > v) { sorted[j] = sorted[j - 1]; j--; }
        sorted[j] = v;
    }
    unsigned long from = 0;
    int ranges_ok = 1;
    for (int i = 0; i < n && ranges_ok; i++) {
        if ((unsigned long)sorted[i] > from) ranges_ok = raw_syscall(SYS_close_range, from, sorted[i] - 1, 0, 0, 0) == 0;
        from = (unsigned long)sorted[i] + 1;
    }
    if (ranges_ok && raw_syscall(SYS_close_range, from, ~0U, 0, 0, 0) == 0) return;
    /* Before Linux 5.9: one by one, up to the descriptor limit. */
    struct rlimit limit = {1024, 1024};
    raw_syscall(SYS_getrlimit, RLIMIT_NOFILE, (long)&limit, 0, 0, 0);
    unsigned long last = limit.rlim_cur > (1UL << 20) ? (1UL << 20) : limit.rlim_cur;
    for (unsigned long fd = 0; fd < last; fd++) {
        int kept = 0;
        for (int i = 0; i < n; i++) kept |= (unsigned long)keep[i] == fd;
        if (!kept) raw_syscall(SYS_close, fd, 0, 0, 0, 0);
    }
}

/* The daemon, from its clone until execve. */
CHILD_CODE static int daemon_main(void *raw) {
    struct spawn_state *s = raw;
    const gxp_spawn_request *r = s->request;
    long rc;
    /* Every signal is still blocked: reset every handler to the default, then unblock. */
    struct kernel_sigaction dfl = {0, 0, 0, 0};
    for (int sig = 1; sig <= 64; sig++) raw_syscall(SYS_rt_sigaction, sig, (long)&dfl, 0, KERNEL_SIGSET_BYTES, 0);
    /* Dies with the thread or process that waits for it, which dies with the library's thread. */
    if ((rc = raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)) != 0) goto fail;
    if (raw_syscall(SYS_getppid, 0, 0, 0, 0, 0) != s->daemon_parent) { rc = -ESRCH; goto fail; }
    raw_syscall(SYS_setpgid, 0, 0, 0, 0, 0);
    /* The request's descriptors are >= 3, never equal to their targets (dup3 refuses that). */
    if ((rc = raw_syscall(SYS_dup3, r->stdin_fd, 0, 0, 0, 0)) < 0) goto fail;
    if ((rc = raw_syscall(SYS_dup3, r->stdout_fd, 1, 0, 0, 0)) < 0) goto fail;
    if ((rc = raw_syscall(SYS_dup3, r->stderr_fd, 2, 0, 0, 0)) < 0) goto fail;
    /* Nothing of the host's survives; exec_w is close-on-exec: execve closes it, which says
     * "started" to the reaper. */
    int keep[4] = {0, 1, 2, s->exec_w};
    close_all_but(keep, 4);
    uint64_t none = 0;
    raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, KERNEL_SIGSET_BYTES, 0);
    rc = raw_syscall(SYS_execve, (long)r->path, (long)r->argv, (long)r->envp, 0, 0);
fail:;
    int error = rc < 0 ? (int)-rc : EINVAL;
    raw_syscall(SYS_write, s->exec_w, (long)&error, sizeof error, 0, 0);
    child_exit(127);
    return 127;
}

/* Starts the daemon, reports its pid, waits for it, reports how it ended, waits for the
 * library's acknowledgement (EOF on the ack pipe), reaps it. Then the reaper exits (a process)
 * or returns (a thread). */
CHILD_CODE static void reaper_body(struct spawn_state *s) {
    const gxp_spawn_request *r = s->request;
    if (!s->in_thread) {
        /* Signals stay blocked here for good (no handler of the host may run on this stack);
         * only SIGCHLD's disposition matters: ignored, the kernel would reap the daemon away. */
        struct kernel_sigaction dfl = {0, 0, 0, 0};
        raw_syscall(SYS_rt_sigaction, SIGCHLD, (long)&dfl, 0, KERNEL_SIGSET_BYTES, 0);
        if (raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 ||
            raw_syscall(SYS_getppid, 0, 0, 0, 0, 0) != s->host) {
            send_record(s->status_w, RECORD_FAILED, ESRCH);
            child_exit(1);
        }
        /* This process got a copy of the host's descriptor table: keep nothing of the host's
         * open (a host's socket or pipe held here would not see its peer close). */
        int keep[7] = {s->status_w, s->ack_r, s->exec_r, s->exec_w, r->stdin_fd, r->stdout_fd, r->stderr_fd};
        close_all_but(keep, 7);
        s->daemon_parent = (pid_t)raw_syscall(SYS_getpid, 0, 0, 0, 0, 0);
    } else {
        s->daemon_parent = s->host;
    }

    /* glibc's clone: the only libc call here (an assembly stub; errno only on failure). */
    pid_t pid = clone(daemon_main, (char *)s->stacks + 2 * STACK_BYTES, CLONE_VM | CLONE_VFORK | SIGCHLD, s);
    raw_syscall(SYS_close, s->exec_w, 0, 0, 0, 0);
    siginfo_t info;
    long rc;
    if (pid < 0) {
        send_record(s->status_w, RECORD_FAILED, EAGAIN);
        goto done;
    }
    /* EOF: execve succeeded (it closed exec_w); else the errno it failed with. (Under valgrind,
     * which runs CLONE_VFORK as a fork, this read is what waits for the exec.) */
    int error = 0;
    while ((rc = raw_syscall(SYS_read, s->exec_r, (long)&error, sizeof error, 0, 0)) == -EINTR) {}
    if (rc == (long)sizeof error) {
        while (raw_syscall(SYS_waitid, P_PID, pid, (long)&info, WEXITED, 0) == -EINTR) {}
        send_record(s->status_w, RECORD_FAILED, error > 0 ? error : EINVAL);
        goto done;
    }
    send_record(s->status_w, RECORD_STARTED, pid);
    /* WNOWAIT: the daemon stays unreaped, so its pid is not reused while the library may still
     * signal it. */
    while ((rc = raw_syscall(SYS_waitid, P_PID, pid, (long)&info, WEXITED | WNOWAIT, 0)) == -EINTR) {}
    if (rc != 0) send_record(s->status_w, RECORD_UNKNOWN, 0);
    else if (info.si_code == CLD_EXITED) send_record(s->status_w, RECORD_EXITED, info.si_status);
    else send_record(s->status_w, RECORD_KILLED, info.si_status);
    char byte;
    while ((rc = raw_syscall(SYS_read, s->ack_r, (long)&byte, 1, 0, 0)) > 0 || rc == -EINTR) {}
    while (raw_syscall(SYS_waitid, P_PID, pid, (long)&info, WEXITED, 0) == -EINTR) {}
done:
    raw_syscall(SYS_close, s->exec_r, 0, 0, 0, 0);
    if (!s->in_thread) child_exit(0);
    /* A thread shares the host's descriptor table: its ends are closed here. */
    raw_syscall(SYS_close, s->status_w, 0, 0, 0, 0);
    raw_syscall(SYS_close, s->ack_r, 0, 0, 0, 0);
}

CHILD_CODE static int reaper_process_main(void *raw) {
    reaper_body(raw);
    child_exit(0);
    return 0;
}

static void *reaper_thread_main(void *raw) {
    reaper_body(raw);
    return NULL;
}

/* valgrind cannot run a clone(CLONE_VM) that is neither a thread nor a vfork ("Unsupported
 * clone() flags"): under it the reaper is a thread, and the daemon a direct child of the host
 * (whose waitpid(-1) could then take its status: reported as unknown). valgrind loads its
 * preload libraries through LD_PRELOAD. */
static int under_valgrind(void) {
    const char *preload = getenv("LD_PRELOAD");
    return preload && strstr(preload, "/vgpreload_") != NULL;
}

/* A descriptor number >= 3 (a host with its standard descriptors closed gets 0..2 back). */
static int above2(int fd) {
    if (fd < 0 || fd > 2) return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return moved;
}

static int pipe_above2(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    fds[0] = above2(fds[0]);
    fds[1] = above2(fds[1]);
    if (fds[0] >= 0 && fds[1] >= 0) return 0;
    if (fds[0] >= 0) close(fds[0]);
    if (fds[1] >= 0) close(fds[1]);
    return -1;
}

static pid_t wait_reaper(pid_t reaper) {
    int status;
    pid_t r;
    while ((r = waitpid(reaper, &status, __WALL)) < 0 && errno == EINTR) {}
    return r;
}

static void free_state(struct spawn_state *s) {
    if (s->stacks) munmap(s->stacks, 2 * STACK_BYTES);
    free(s);
}

static void close_pair(int fds[2]) {
    if (fds[0] >= 0) close(fds[0]);
    if (fds[1] >= 0) close(fds[1]);
}

int gxp_spawn(const gxp_spawn_request *request, gxp_daemon *daemon) {
    if (!request || !daemon || !request->path || !request->argv || !request->envp || request->stdin_fd < 3 ||
        request->stdout_fd < 3 || request->stderr_fd < 3)
        return EINVAL;
    struct spawn_state *s = calloc(1, sizeof *s);
    if (!s) return ENOMEM;
    s->stacks = mmap(NULL, 2 * STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (s->stacks == MAP_FAILED) {
        s->stacks = NULL;
        free_state(s);
        return ENOMEM;
    }
    int status[2] = {-1, -1}, ack[2] = {-1, -1}, exec[2] = {-1, -1};
    if (pipe_above2(status) != 0 || pipe_above2(ack) != 0 || pipe_above2(exec) != 0) {
        int e = errno;
        close_pair(status);
        close_pair(ack);
        close_pair(exec);
        free_state(s);
        return e;
    }
    s->request = request;
    s->host = getpid();
    s->status_w = status[1];
    s->ack_r = ack[0];
    s->exec_r = exec[0];
    s->exec_w = exec[1];
    s->in_thread = under_valgrind();

    /* Every signal blocked, glibc's internal ones too (hence the raw call): the reaper starts
     * (and stays) with them blocked, so no handler of the host ever runs on its stack. */
    uint64_t all = ~(uint64_t)0, old = 0;
    raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, (long)&all, (long)&old, KERNEL_SIGSET_BYTES, 0);
    pid_t reaper = 0;
    int start_error = 0;
    if (s->in_thread) {
        start_error = pthread_create(&s->thread, NULL, reaper_thread_main, s);
    } else {
        /* No exit signal (the low byte of the flags): a clone child, no SIGCHLD to the host. */
        reaper = clone(reaper_process_main, (char *)s->stacks + STACK_BYTES, CLONE_VM, s);
        if (reaper < 0) start_error = errno;
    }
    raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, (long)&old, 0, KERNEL_SIGSET_BYTES, 0);
    if (start_error != 0) {
        close_pair(status);
        close_pair(ack);
        close_pair(exec);
        free_state(s);
        return start_error;
    }
    /* A reaper process has copies of its ends (no CLONE_FILES); a thread closes them itself. */
    if (!s->in_thread) {
        close(status[1]);
        close(ack[0]);
        close_pair(exec);
    }
    /* The request must outlive the reaper's use of it: wait for STARTED or FAILED. */
    struct record r = {0, 0};
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = read(status[0], (char *)&r + got, sizeof r - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got < sizeof r || r.kind != RECORD_STARTED) {
        close(ack[1]);
        if (s->in_thread) pthread_join(s->thread, NULL); else wait_reaper(reaper);
        close(status[0]);
        free_state(s);
        return got < sizeof r ? ECHILD : (r.value > 0 ? r.value : EINVAL);
    }
    s->request = NULL;
    fcntl(status[0], F_SETFL, fcntl(status[0], F_GETFL) | O_NONBLOCK);
    daemon->pid = r.value;
    daemon->reaper = reaper;
    daemon->status_fd = status[0];
    daemon->ack_fd = ack[1];
    daemon->private_state = s;
    return 0;
}

int gxp_daemon_poll(gxp_daemon *daemon, int *exited, int *value) {
    struct spawn_state *s = daemon ? daemon->private_state : NULL;
    if (!s || daemon->status_fd < 0) return -1;
    if (s->ended) return 0;
    struct record r;
    ssize_t n;
    while ((n = read(daemon->status_fd, &r, sizeof r)) < 0 && errno == EINTR) {}
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    s->ended = 1;
    if (n != (ssize_t)sizeof r || (r.kind != RECORD_EXITED && r.kind != RECORD_KILLED)) return -1;
    *exited = r.kind == RECORD_EXITED;
    *value = r.value;
    return 1;
}

void gxp_daemon_release(gxp_daemon *daemon) {
    struct spawn_state *s = daemon ? daemon->private_state : NULL;
    if (!s) return;
    /* Still running: its reaper process goes, and PR_SET_PDEATHSIG takes the daemon with it (a
     * reaper thread cannot be killed: the daemon is, then the thread reaps it). */
    if (!s->ended) kill(s->in_thread ? daemon->pid : daemon->reaper, SIGKILL);
    close(daemon->ack_fd);
    if (s->in_thread) pthread_join(s->thread, NULL); else wait_reaper(daemon->reaper);
    close(daemon->status_fd);
    daemon->ack_fd = daemon->status_fd = -1;
    daemon->private_state = NULL;
    free_state(s);
}

int gxp_pipe_cloexec(int fds[2]) { return pipe_above2(fds); }

int gxp_wakeup_fd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

char **gxp_environment(void) { return environ; }
