/*
 * daemon_spawn.h - starting and reaping the daemons a client manages (spawn mode), without
 * touching the host program's signal handling or its children. Internal to libgoxelpool: none
 * of these symbols is exported from libgoxelpool.so (the version script keeps only goxelpool_*).
 *
 * Each daemon runs under a *reaper* of its own: a tiny process that shares the host's memory
 * (CLONE_VM, like posix_spawn's child, so nothing is copied), never execs, and has no exit
 * signal. It starts the daemon, waits for it, tells the library how it ended through a pipe,
 * and reaps it once the library has read that. So:
 *   - the host gets no SIGCHLD for the library's processes, and its wait(), waitpid(-1, ...) or
 *     SIGCHLD handler never see them: the daemon is the reaper's child, and the reaper is a
 *     "clone child" (no exit signal; execve would reset that, which is why the reaper does not
 *     exec), visible only to waits with __WALL or __WCLONE;
 *   - a host that ignores SIGCHLD does not make the kernel reap the daemon before the library
 *     learns its status;
 *   - the daemon cannot be reaped (so its pid cannot be reused) before the library has read its
 *     status: signalling it by pid is safe until then;
 *   - PR_SET_PDEATHSIG(SIGKILL) ties the reaper to the thread that called gxp_spawn and the
 *     daemon to its reaper: when that thread or the whole host dies, both die.
 * Both children run only raw system calls (they share the host's memory and thread pointer).
 * Under valgrind, which cannot run such a clone, the reaper is a thread of the host instead (the
 * daemon is then the host's child: a host's waitpid(-1) could take its status).
 */
#ifndef GOXELPOOL_DAEMON_SPAWN_H
#define GOXELPOOL_DAEMON_SPAWN_H

#include <stddef.h>
#include <sys/types.h>

/* What to start. Every pointer is borrowed for the duration of gxp_spawn. */
typedef struct gxp_spawn_request {
    const char *path;          /* the executable (the caller has searched PATH) */
    char *const *argv;         /* NULL-terminated */
    char *const *envp;         /* NULL-terminated */
    int stdin_fd;              /* made the daemon's descriptors 0, 1 and 2 */
    int stdout_fd;
    int stderr_fd;
} gxp_spawn_request;

/* A started daemon and its reaper. Owned by the caller until gxp_daemon_release. */
typedef struct gxp_daemon {
    pid_t pid;                 /* the daemon */
    pid_t reaper;              /* the library's own child that waits for it (0: a thread, under valgrind) */
    int status_fd;             /* non-blocking, close-on-exec: polls readable when the daemon ended */
    int ack_fd;                /* closed by gxp_daemon_release: the reaper may then reap and exit */
    void *private_state;
} gxp_daemon;

/* Starts the daemon: its signal handlers reset to the default and its signal mask emptied, a
 * process group of its own (a Ctrl-C meant for the host's group does not reach it), every
 * descriptor but 0, 1, 2 closed, then execve. Returns 0 with *daemon filled in (call
 * gxp_daemon_release once done with it), or an errno value: from the system (EAGAIN, ENOMEM ...)
 * or from execve in the daemon (ENOENT, EACCES, ENOEXEC ...). Blocks until the daemon has
 * exec'd or failed to. */
int gxp_spawn(const gxp_spawn_request *request, gxp_daemon *daemon);

/* Reads what the reaper reported. Returns 1 when the daemon has ended: *exited = 1 and *value =
 * its exit code, or *exited = 0 and *value = the signal that killed it; 0 when nothing (more) is
 * there yet; -1 when the reaper vanished without a word (killed by someone: the daemon was
 * killed with it by PR_SET_PDEATHSIG, its status is unknown). */
int gxp_daemon_poll(gxp_daemon *daemon, int *exited, int *value);

/* Lets the reaper reap the daemon and exit, reaps the reaper, frees everything. If the daemon is
 * still running it is killed (SIGKILL to the reaper, then PR_SET_PDEATHSIG). Waits only for the
 * reaper's exit, which follows at once. */
void gxp_daemon_release(gxp_daemon *daemon);

/* pipe2(fds, O_CLOEXEC) (not visible to Swift without _GNU_SOURCE). 0 or -1 with errno. */
int gxp_pipe_cloexec(int fds[2]);

/* eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK): the supervisor thread's wake-up. -1 with errno. */
int gxp_wakeup_fd(void);

/* The process's environment (environ), NULL when it has none. */
char **gxp_environment(void);

#endif
