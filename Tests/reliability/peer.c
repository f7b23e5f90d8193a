/*
 * peer.c - the peer-credential check (SO_PEERCRED), run by peer-check.sh.
 *
 *   ./peer SOCKET    a socket served by a process of another user (not root, not us)
 *
 * Expects: goxelpool_call returns GOXELPOOL_EPEER with a message naming the uid; a "peer_rejected"
 * alert reaches an ALERT listener; alerts_generated.peer_rejected is counted. With
 * "verify_peer": false the same call succeeds (the squatter is reachable: the check, not the
 * socket's mode, is what stopped us). Prints PASS/FAIL lines and "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L
#include <goxelpool.h>
#include <jansson.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

static int n_passed, n_failed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int peer_alerts;
static char alert_text[512];

static void check(int ok, const char *name, const char *detail) {
    if (ok) n_passed++; else n_failed++;
    printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, detail && detail[0] ? ": " : "", detail ? detail : "");
}

static void on_alert(const json_t *event, void *userdata) {
    (void)userdata;
    const char *type = json_string_value(json_object_get(event, "type"));
    if (!type || strcmp(type, "peer_rejected") != 0) return;
    char *text = json_dumps(event, JSON_COMPACT);
    pthread_mutex_lock(&lock);
    if (peer_alerts++ == 0 && text) snprintf(alert_text, sizeof alert_text, "%s", text);
    pthread_mutex_unlock(&lock);
    free(text);
}

/* min_connections 0: the first connection is opened by the first call, after the listener is
 * registered (with 1, goxelpool_client_new may meet the squatter before the listener exists). */
static goxelpool_client *make(const char *sock, int verify) {
    json_t *config = json_pack("{s:s, s:b, s:{s:i, s:i}, s:{s:i}}", "socket_path", sock, "verify_peer", verify,
                               "pool", "min_connections", 0, "max_connections", 2, "reconnect", "initial_backoff_ms", 200);
    goxelpool_client *client = NULL;
    char err[256];
    if (goxelpool_client_new(config, &client, err, sizeof err) != GOXELPOOL_OK) { fprintf(stderr, "peer: %s\n", err); exit(2); }
    json_decref(config);
    return client;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s SOCKET\n", argv[0]); return 2; }
    goxelpool_client *client = make(argv[1], 1);
    goxelpool_add_listener(client, GOXELPOOL_EVENT_ALERT, on_alert, NULL, NULL);
    json_t *result = NULL;
    goxelpool_status st = goxelpool_call(client, "ping", NULL, 1500, &result, NULL);
    char detail[600];
    snprintf(detail, sizeof detail, "%s: %s", goxelpool_status_name(st), goxelpool_last_error());
    check(st == GOXELPOOL_EPEER, "call to a socket served by another user is EPEER", detail);
    check(strstr(goxelpool_last_error(), "uid") != NULL, "the message names the peer's uid", goxelpool_last_error());
    json_decref(result);
    json_t *stats = goxelpool_stats(client);
    json_int_t counted = json_integer_value(json_object_get(json_object_get(stats, "alerts_generated"), "peer_rejected"));
    json_decref(stats);
    goxelpool_client_close(client, 0);
    pthread_mutex_lock(&lock);
    check(peer_alerts > 0, "a peer_rejected alert was delivered", alert_text);
    check(strstr(alert_text, "\"severity\":\"critical\"") != NULL, "the alert is critical", NULL);
    pthread_mutex_unlock(&lock);
    snprintf(detail, sizeof detail, "%lld", (long long)counted);
    check(counted > 0, "stats alerts_generated.peer_rejected counts it", detail);
    goxelpool_client_free(client);

    if (argc > 2 && strcmp(argv[2], "--no-verify") == 0) {
        client = make(argv[1], 0);
        st = goxelpool_call(client, "ping", NULL, 3000, NULL, NULL);
        snprintf(detail, sizeof detail, "%s: %s", goxelpool_status_name(st), goxelpool_last_error());
        check(st == GOXELPOOL_OK, "with verify_peer false the same socket answers (control)", detail);
        goxelpool_client_free(client);
    }
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
