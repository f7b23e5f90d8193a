/*
 * session.c - a durable session: a model built on one daemon survives a crash of that daemon.
 *
 *   session SOCKET
 *
 * 1. Opens a durable session (its document is journaled and checkpointed into a private
 *    directory the daemon writes to), creates a project and adds 100 voxels.
 * 2. Crashes the daemon (refd.crash: the bundled reference daemon started with --supervise, which
 *    restarts it at once, empty). Against the real goxel-daemon this step is skipped: it has no
 *    such method (it crashes by itself 300 s after goxel.create_project).
 * 3. Adds 100 more voxels: the first of these calls finds the new daemon process, waits while
 *    the library restores the document (load the last checkpoint, replay the journal), then runs.
 * 4. Reads all 200 voxels back and prints the session's info: every voxel is there, no call failed.
 *
 * Build: cc -Wall -Wextra session.c $(pkg-config --cflags --libs goxelpool) -o session
 */
#include <goxelpool.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static goxelpool_session *session;

/* One session call; prints the failure and returns 0 on anything but OK. */
static int session_call(const char *method, json_t *params /* stolen */, json_t **result) {
    json_t *rpc_error = NULL;
    goxelpool_status st = goxelpool_session_call(session, method, params, 10000, result, &rpc_error);
    json_decref(params); /* params are borrowed by the call: ours to free */
    if (st == GOXELPOOL_OK) return 1;
    if (st == GOXELPOOL_ERPC) {
        fprintf(stderr, "%s: daemon error %s\n", method, json_string_value(json_object_get(rpc_error, "message")));
        json_decref(rpc_error);
    } else {
        fprintf(stderr, "%s: %s: %s\n", method, goxelpool_status_name(st), goxelpool_last_error());
    }
    return 0;
}

static int add_voxels(int from, int to) {
    for (int i = from; i < to; i++) {
        if (!session_call("goxel.add_voxel", json_pack("[i,i,i,i,i,i,i,i]", i % 10, i / 10, 0, 200, 50, i, 255, 0), NULL))
            return 0;
    }
    return 1;
}

static void print_info(const char *when) {
    json_t *info = goxelpool_session_info(session); /* new reference */
    printf("session %s: state %s, daemon pid %lld, restores %lld, journal %lld calls, checkpoints %lld\n", when,
           json_string_value(json_object_get(info, "state")), json_integer_value(json_object_get(info, "daemon_pid")),
           json_integer_value(json_object_get(info, "restores")), json_integer_value(json_object_get(info, "journal_length")),
           json_integer_value(json_object_get(info, "checkpoints")));
    json_decref(info);
}

int main(int argc, char **argv) {
    const char *socket_path = argc > 1 ? argv[1] : "/tmp/goxel-daemon.sock";
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Checkpoints are written by the daemon, so the directory must be one it can write (here it
     * runs on this machine, as this user). */
    char dir[] = "/tmp/goxelpool-session-XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }

    json_t *config = json_pack("{s:s, s:i, s:{s:i}}", "socket_path", socket_path, "timeout_ms", 5000,
                               "reconnect", "initial_backoff_ms", 100);
    goxelpool_client *client;
    char errbuf[256];
    if (goxelpool_client_new(config, &client, errbuf, sizeof errbuf) != GOXELPOOL_OK) {
        fprintf(stderr, "client: %s\n", errbuf);
        return 1;
    }
    json_decref(config);

    /* 1. A durable session (exclusive: no other session shares its daemon). */
    json_t *options = json_pack("{s:b, s:s, s:i}", "durable", 1, "checkpoint_dir", dir, "checkpoint_every", 50);
    goxelpool_status st = goxelpool_session_open(client, options, 5000, &session);
    json_decref(options);
    if (st != GOXELPOOL_OK) {
        fprintf(stderr, "session_open: %s: %s\n", goxelpool_status_name(st), goxelpool_last_error());
        goxelpool_client_free(client);
        return 1;
    }
    int ok = session_call("goxel.create_project", json_pack("[s,i,i,i]", "session-example", 16, 16, 16), NULL)
             && add_voxels(0, 100);
    print_info("after 100 voxels");

    /* 2. The daemon dies (its supervisor restarts it, with an empty document). */
    json_t *rpc_error = NULL;
    st = goxelpool_call(client, "refd.crash", NULL, 1000, NULL, &rpc_error);
    if (st == GOXELPOOL_ERPC) {
        printf("this daemon has no refd.crash (the real goxel-daemon?): skipping the crash\n");
        json_decref(rpc_error);
    } else {
        printf("the daemon crashed (%s); its supervisor restarts it\n", goxelpool_status_name(st));
    }

    /* 3. The session goes on: the first call waits for the restore, then runs. */
    ok = ok && add_voxels(100, 200);
    print_info("after 200 voxels");

    /* 4. Everything is there. */
    int present = 0;
    for (int i = 0; ok && i < 200; i++) {
        json_t *voxel = NULL;
        ok = session_call("goxel.get_voxel", json_pack("[i,i,i]", i % 10, i / 10, 0), &voxel);
        if (ok && json_is_true(json_object_get(voxel, "exists"))) present++;
        json_decref(voxel);
    }
    printf("%d of 200 voxels present\n", present);
    ok = ok && present == 200;

    goxelpool_session_close(session); /* removes its checkpoint files (same machine) */
    goxelpool_client_free(client);
    rmdir(dir);
    printf("%s\n", ok ? "session example: OK" : "session example: FAILED");
    return ok ? 0 : 1;
}
