/* See include/daemon_spawn.h. */
#define _GNU_SOURCE
#include "daemon_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* The kernel's struct sigaction on 64-bit Linux (x86_64, arm64 ...). All zero is SIG_DFL. */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

/* The kernel's signal set: 64 signals. */
#define KERNEL_SIGSET_BYTES 8

struct child_args {
    const gxp_spawn_request *request;
    pid_t parent;
    /* Written by the child when it cannot exec (the memory is shared until then). */
    volatile int error;
};

/* Only raw system calls from here to execve: the child shares the host's memory and thread
 * pointer, so no libc function that could take a lock or run an interposed wrapper (sanitizer
 * interceptors included) is called. */
__attribute__((no_sanitize("address", "thread", "undefined")))
static int child_main(void *raw) {
    struct child_args *args = raw;
    const gxp_spawn_request *r = args->request;
    long rc;

    /* The parent blocked every signal around clone: no host handler can run here. Reset every
     * handler to the default before unblocking (SIGKILL and SIGSTOP refuse, which is fine). */
    struct kernel_sigaction dfl = {0, 0, 0, 0};
    for (int sig = 1; sig <= 64; sig++) syscall(SYS_rt_sigaction, sig, &dfl, NULL, KERNEL_SIGSET_BYTES);

    if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) goto fail;
    /* The thread that started us may have died before the prctl: then nothing would kill us. */
    if (syscall(SYS_getppid) != args->parent) {
        args->error = ESRCH;
        syscall(SYS_exit_group, 127);
    }
    syscall(SYS_setpgid, 0, 0);

    /* The request's descriptors are >= 3, so never equal to their targets (dup3 refuses that). */
    if (syscall(SYS_dup3, r->stdin_fd, 0, 0) < 0 || syscall(SYS_dup3, r->stdout_fd, 1, 0) < 0 ||
        syscall(SYS_dup3, r->stderr_fd, 2, 0) < 0)
        goto fail;
    /* No descriptor of the host survives, close-on-exec or not. */
    if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
        /* Before Linux 5.9: every descriptor up to the limit. */
        struct rlimit limit = {1024, 1024};
        syscall(SYS_getrlimit, RLIMIT_NOFILE, &limit);
        unsigned long last = limit.rlim_cur > (1UL << 20) ? (1UL << 20) : limit.rlim_cur;
        for (unsigned long fd = 3; fd < last; fd++) syscall(SYS_close, fd);
    }
    uint64_t none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, KERNEL_SIGSET_BYTES);
    syscall(SYS_execve, r->path, r->argv, r->envp);
fail:
    rc = errno;
    args->error = rc > 0 ? (int)rc : EINVAL;
    syscall(SYS_exit_group, 127);
    return 127;
}

int gxp_spawn(const gxp_spawn_request *request, pid_t *pid) {
    if (!request || !pid || !request->path || !request->argv || !request->envp || request->stdin_fd < 3 ||
        request->stdout_fd < 3 || request->stderr_fd < 3)
        return EINVAL;
    const size_t stack_size = 64 * 1024;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return errno;
    struct child_args args = {request, getpid(), 0};

    /* Every signal blocked, glibc's internal ones too (hence the raw call), until the child has
     * reset its handlers; restored once it has exec'd or died (CLONE_VFORK waits for that). */
    uint64_t all = ~(uint64_t)0, old = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, KERNEL_SIGSET_BYTES);
    /* Exit signal 0 (the low byte of the flags): no SIGCHLD, a clone child. */
    pid_t child = clone(child_main, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK, &args);
    int clone_error = errno;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, KERNEL_SIGSET_BYTES);
    munmap(stack, stack_size);

    if (child < 0) return clone_error;
    if (args.error != 0) {
        int status;
        gxp_wait(child, &status, 0);
        return args.error;
    }
    *pid = child;
    return 0;
}

int gxp_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int gxp_wakeup_fd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

char **gxp_environment(void) { return environ; }

int gxp_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

pid_t gxp_wait(pid_t pid, int *status, int nohang) {
    pid_t r;
    do {
        r = waitpid(pid, status, __WALL | (nohang ? WNOHANG : 0));
    } while (r < 0 && errno == EINTR);
    return r;
}

int gxp_exit_code(int status, int *value) {
    if (!WIFEXITED(status)) return 0;
    *value = WEXITSTATUS(status);
    return 1;
}

int gxp_exit_signal(int status, int *value) {
    if (!WIFSIGNALED(status)) return 0;
    *value = WTERMSIG(status);
    return 1;
}
