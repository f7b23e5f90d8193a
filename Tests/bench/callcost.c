/* Instructions per call, library against the raw client, counted by valgrind's callgrind (exact
 * and repeatable: unlike time, not disturbed by a shared or noisy machine). make bench-instructions.
 *
 *   callcost raw|pool SOCKET CALLS
 *
 * One thread makes 200 warm-up calls, then CALLS calls of `goxel.get_voxel [1,2,3]`: raw, the
 * hand-written client of bench.c (json_pack + json_dumpb, send, recv to '\n', json_loadb, id and
 * result checked); pool, goxelpool_call on a client of 10 connections (health checks off).
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
    if (argc != 4) { fprintf(stderr, "usage: callcost raw|pool SOCKET CALLS\n"); return 2; }
    int calls = 200 + atoi(argv[3]);
    json_t *params = json_pack("[i,i,i]", 1, 2, 3);
    if (!strcmp(argv[1], "raw")) {
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
        for (int i = 0; i < calls; i++) {
            json_t *result = NULL;
            if (goxelpool_call(client, "goxel.get_voxel", params, -1, &result, NULL) != GOXELPOOL_OK) return 1;
            json_decref(result);
        }
        goxelpool_client_free(client);
    }
    json_decref(params);
    return 0;
}
