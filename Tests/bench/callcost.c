/* Instructions per call, library against the raw client, counted by valgrind's callgrind (exact
 * and repeatable: unlike time, not disturbed by a shared or noisy machine). make bench-instructions.
 *
 *   callcost raw|pool|plain-add|session-add|durable-add SOCKET CALLS [CHECKPOINT_DIR]
 *
 * One thread makes 200 warm-up calls, then CALLS calls of `goxel.get_voxel [1,2,3]`: raw, the
 * hand-written client of bench.c (json_pack + json_dumpb, send, recv to '\n', json_loadb, id and
 * result checked); pool, goxelpool_call on a client of 10 connections (health checks off).
 * The -add modes call `goxel.add_voxel [1,2,3,...]` instead (a call that changes the document):
 * plain-add with goxelpool_call, session-add through a session, durable-add through a durable
 * session that only journals (no checkpoint during the run; CHECKPOINT_DIR is required), so the
 * difference between them is the session's and the journal's cost per call.
 * Run under callgrind with CALLS = N and 2N: the difference of the totals over N is the cost of
 * one call, start-up excluded.
 */
#include <goxelpool.h>
#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static char rbuf[65536];
static size_t rstart, rend;
static json_int_t next_id = 1;

static int raw_call(int fd, json_t *params) {
    json_int_t id = next_id++;
    json_t *req = json_pack("{s:s,s:s,s:O,s:I}", "jsonrpc", "2.0", "method", "goxel.get_voxel", "params", params, "id", id);
    char w[4096];
    size_t n = json_dumpb(req, w, sizeof w - 1, JSON_COMPACT);
    json_decref(req);
    w[n++] = '\n';
    if (send(fd, w, n, MSG_NOSIGNAL) != (ssize_t)n) return -1;
    for (;;) {
        char *nl = memchr(rbuf + rstart, '\n', rend - rstart);
        if (nl) {
            size_t len = (size_t)(nl - (rbuf + rstart));
            json_t *answer = json_loadb(rbuf + rstart, len, 0, NULL);
            rstart += len + 1;
            if (rstart == rend) rstart = rend = 0;
            int ok = answer && json_integer_value(json_object_get(answer, "id")) == id && json_object_get(answer, "result");
            json_decref(answer);
            return ok ? 0 : -1;
        }
        ssize_t r = recv(fd, rbuf + rend, sizeof rbuf - rend, 0);
        if (r <= 0) return -1;
        rend += (size_t)r;
    }
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: callcost raw|pool|plain-add|session-add|durable-add SOCKET CALLS [CHECKPOINT_DIR]\n");
        return 2;
    }
    const char *mode = argv[1];
    int calls = 200 + atoi(argv[3]);
    int adds = strstr(mode, "-add") != NULL;
    const char *method = adds ? "goxel.add_voxel" : "goxel.get_voxel";
    json_t *params = adds ? json_pack("[i,i,i,i,i,i,i]", 1, 2, 3, 10, 20, 30, 255) : json_pack("[i,i,i]", 1, 2, 3);
    if (!strcmp(mode, "raw")) {
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        strncpy(addr.sun_path, argv[2], sizeof addr.sun_path - 1);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 1; }
        for (int i = 0; i < calls; i++) if (raw_call(fd, params) != 0) return 1;
        close(fd);
    } else {
        json_t *config = json_pack("{s:s, s:{s:i, s:i}, s:{s:i}}", "socket_path", argv[2], "pool", "min_connections", 10,
                                   "max_connections", 10, "health", "interval_ms", 0);
        goxelpool_client *client;
        char err[256];
        if (goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) { fprintf(stderr, "%s\n", err); return 1; }
        json_decref(config);
        goxelpool_session *session = NULL;
        if (!strcmp(mode, "session-add") || !strcmp(mode, "durable-add")) {
            json_t *options = !strcmp(mode, "session-add")
                ? json_object()
                : json_pack("{s:b, s:s?, s:i, s:i, s:i}", "durable", 1, "checkpoint_dir", argc == 5 ? argv[4] : NULL,
                            "checkpoint_every", 10000000, "checkpoint_interval_ms", 0, "max_journal_entries", 10000000);
            if (goxelpool_session_open(client, options, 10000, &session) != GOXELPOOL_OK) {
                fprintf(stderr, "session_open: %s\n", goxelpool_last_error());
                return 1;
            }
            json_decref(options);
        } else if (strcmp(mode, "pool") && strcmp(mode, "plain-add")) {
            fprintf(stderr, "unknown mode %s\n", mode);
            return 2;
        }
        for (int i = 0; i < calls; i++) {
            json_t *result = NULL;
            goxelpool_status st = session ? goxelpool_session_call(session, method, params, -1, &result, NULL)
                                          : goxelpool_call(client, method, params, -1, &result, NULL);
            if (st != GOXELPOOL_OK) { fprintf(stderr, "%s: %s\n", method, goxelpool_last_error()); return 1; }
            json_decref(result);
        }
        if (session) goxelpool_session_close(session);
        goxelpool_client_free(client);
    }
    json_decref(params);
    return 0;
}
