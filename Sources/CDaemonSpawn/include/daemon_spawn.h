/*
 * daemon_spawn.h - starting and reaping the daemons a client manages (spawn mode), without
 * touching the host program's signal handling. Internal to libgoxelpool: none of these symbols
 * is exported from libgoxelpool.so (the version script keeps only goxelpool_*).
 */
#ifndef GOXELPOOL_DAEMON_SPAWN_H
#define GOXELPOOL_DAEMON_SPAWN_H

#include <sys/types.h>

/* What to start. Every pointer is borrowed for the duration of the call. */
typedef struct gxp_spawn_request {
    const char *path;          /* the executable (the caller has searched PATH) */
    char *const *argv;         /* NULL-terminated */
    char *const *envp;         /* NULL-terminated */
    int stdin_fd;              /* each >= 3; made the child's descriptors 0, 1 and 2 */
    int stdout_fd;
    int stderr_fd;
} gxp_spawn_request;

/* Starts a process as glibc's posix_spawn does (clone with CLONE_VM | CLONE_VFORK on a stack of
 * its own, no fork handlers, no copy of the address space) with these differences:
 *   - no exit signal: the host gets no SIGCHLD for it, and the host's wait() or waitpid(-1, ...)
 *     never reap it (it is a "clone child": only __WALL or __WCLONE waits see it); a host that
 *     ignores SIGCHLD does not make the kernel reap it away either;
 *   - PR_SET_PDEATHSIG(SIGKILL): it dies when the calling *thread* exits (call from a thread that
 *     lives as long as the process is wanted), checked against a parent that died meanwhile;
 *   - every signal handler reset to the default, the signal mask emptied, a process group of its
 *     own (a Ctrl-C meant for the host's group does not reach it), every descriptor >= 3 closed.
 * The child runs only raw system calls until execve (async-signal-safe; it shares the host's
 * memory until then). Returns 0 with *pid set, or an errno value: from clone, or from the child
 * (execve failed: ENOENT, EACCES, ENOEXEC ...; that child has already been reaped). */
int gxp_spawn(const gxp_spawn_request *request, pid_t *pid);

/* pidfd_open(pid, 0): a close-on-exec descriptor that polls readable once the process has
 * exited. -1 with errno set (ENOSYS before Linux 5.3). */
int gxp_pidfd_open(pid_t pid);

/* pipe2(fds, O_CLOEXEC) (not visible to Swift without _GNU_SOURCE). 0 or -1 with errno. */
int gxp_pipe_cloexec(int fds[2]);

/* eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK): the supervisor thread's wake-up. -1 with errno. */
int gxp_wakeup_fd(void);

/* The process's environment (environ), NULL when it has none. */
char **gxp_environment(void);

/* waitpid(pid, status, __WALL | (nohang ? WNOHANG : 0)), retried on EINTR. Returns pid when
 * reaped, 0 (nohang) when still running, -1 with errno (ECHILD: not a child, or reaped already). */
pid_t gxp_wait(pid_t pid, int *status, int nohang);

/* The wait status macros, which Swift cannot use: 1 with *value set when the process exited
 * (exit code) or was killed by a signal (signal number); else 0. */
int gxp_exit_code(int status, int *value);
int gxp_exit_signal(int status, int *value);

#endif
