/*
 * tls.c - TLS endpoints against goxel-refd behind stunnel (client certificates required), run by
 * tls-check.sh, which makes throwaway certificates with the openssl command:
 *
 *   ./tls REFD STUNNEL CERTDIR WORKDIR [SOCAT]
 *
 * CERTDIR holds ca.pem (the CA both sides trust), server.pem/.key (SAN localhost, 127.0.0.1),
 * client.pem/.key, and from a second, untrusted CA: rogue-ca.pem, rogue-client.pem/.key,
 * rogue-server.pem/.key. One stunnel serves three ports in front of one refd (Unix socket):
 * TLS 1.3 and TLS 1.2 with the good server certificate, and one with the rogue server
 * certificate. Checks: calls work with the right client certificate and reuse their connections
 * (stunnel's accepted connections are counted); a missing or untrusted client certificate, an
 * untrusted server and a wrong host name are EPEER with OpenSSL's reason, fast, without a
 * reconnect storm, with a tls_rejected alert and the circuit left closed; an endpoint that refuses
 * us is ejected and calls go to the others; files of the tls section that cannot be used are
 * EINVAL at client_new; health checks run over TLS; reconnections resume their TLS session, and
 * fall back to a full handshake with a server that cannot resume (socat); a stalled daemon's
 * deadline is kept; kill -9 of refd behind stunnel recovers, as over plain TCP. Prints PASS/FAIL lines and "N passed, N
 * failed".
 */
#include "harness.h"

static char refd_sock[256], refd_log[256], stunnel_log[256], stunnel_conf[256];
static pid_t refd_pid = -1, stunnel_pid = -1;
static int port13, port12, port_rogue, port_plain;

static void cert_path(char *out, size_t size, const char *name) { snprintf(out, size, "%s/%s", certs, name); }

/* stunnel's accepted connections on one service so far. */
static int accepted(const char *service) {
    char needle[128];
    snprintf(needle, sizeof needle, "Service [%s] accepted connection", service);
    return count_in_file(stunnel_log, needle);
}

static int start_stunnel(void) {
    char ca[300], server[300], server_key[300], rogue[300], rogue_key[300];
    cert_path(ca, sizeof ca, "ca.pem");
    cert_path(server, sizeof server, "server.pem");
    cert_path(server_key, sizeof server_key, "server.key");
    cert_path(rogue, sizeof rogue, "rogue-server.pem");
    cert_path(rogue_key, sizeof rogue_key, "rogue-server.key");
    for (int attempt = 0; attempt < 5; attempt++) {
        port13 = free_port("127.0.0.1");
        port12 = free_port("127.0.0.1");
        port_rogue = free_port("127.0.0.1");
        FILE *f = fopen(stunnel_conf, "w");
        if (!f) return 0;
        /* The configuration README "Daemons on other machines" shows (verifyChain + requireCert
         * is verify = 2). */
        fprintf(f, "foreground = yes\npid =\nsyslog = no\ndebug = notice\noutput = %s\n\n", stunnel_log);
        const char *names[] = {"tls13", "tls12", "rogue"};
        int ports[] = {port13, port12, port_rogue};
        for (int i = 0; i < 3; i++) {
            fprintf(f, "[%s]\naccept = 127.0.0.1:%d\nconnect = %s\ncert = %s\nkey = %s\nCAfile = %s\n"
                       "verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.2\n%s\n",
                    names[i], ports[i], refd_sock, i == 2 ? rogue : server, i == 2 ? rogue_key : server_key, ca,
                    i == 1 ? "sslVersionMax = TLSv1.2\n" : "");
        }
        fclose(f);
        unlink(stunnel_log);
        char *argv[] = {(char *)stunnel_bin, stunnel_conf, NULL};
        char out[300];
        snprintf(out, sizeof out, "%s/stunnel.out", work);
        stunnel_pid = spawn(argv, out);
        if (wait_port("127.0.0.1", port13, 5000) && wait_port("127.0.0.1", port12, 2000) && wait_port("127.0.0.1", port_rogue, 2000)) {
            /* The probes above were accepted connections too: start counting from here. */
            sleep_ms(100);
            return 1;
        }
        stop(stunnel_pid, SIGTERM);
    }
    return 0;
}

/* A client of `endpoint` with the tls section `tls` (stolen) and short backoffs. */
static goxelpool_client *tls_client(const char *endpoint, json_t *tls, int min, int max) {
    json_t *config = json_pack("{s:[s], s:i, s:{s:i, s:i, s:i}, s:{s:i, s:i}, s:{s:i}, s:{s:i}, s:o}",
                               "endpoints", endpoint, "timeout_ms", 3000,
                               "pool", "min_connections", min, "max_connections", max, "connect_timeout_ms", 2000,
                               "reconnect", "initial_backoff_ms", 500, "max_backoff_ms", 4000,
                               "health", "interval_ms", 0, "circuit_breaker", "cooldown_ms", 500, "tls", tls);
    return new_client(config);
}

/* The tls section: ca (file name in CERTDIR), client certificate and key (NULL: none). */
static json_t *tls_section(const char *ca, const char *cert, const char *key) {
    json_t *tls = json_object();
    char path[300];
    cert_path(path, sizeof path, ca);
    json_object_set_new(tls, "ca_file", json_string(path));
    if (cert) { cert_path(path, sizeof path, cert); json_object_set_new(tls, "cert_file", json_string(path)); }
    if (key) { cert_path(path, sizeof path, key); json_object_set_new(tls, "key_file", json_string(path)); }
    return tls;
}

static void endpoint_text(char *out, size_t size, int port) { snprintf(out, size, "tls:127.0.0.1:%d", port); }

static void *call_loop(void *arg) {
    goxelpool_client *client = arg;
    long failures = 0;
    for (int i = 0; i < 50; i++) {
        json_t *params = json_pack("[i,i,i]", i, 2, 3);
        goxelpool_status st = goxelpool_call(client, "goxel.get_voxel", params, 3000, NULL, NULL);
        json_decref(params);
        if (st != GOXELPOOL_OK) failures++;
    }
    return (void *)failures;
}

static void test_calls_work(const char *service, int port) {
    char endpoint[64], name[128];
    endpoint_text(endpoint, sizeof endpoint, port);
    int before = accepted(service);
    goxelpool_client *client = tls_client(endpoint, tls_section("ca.pem", "client.pem", "client.key"), 1, 4);
    if (!client) return;
    double elapsed;
    goxelpool_status st = timed_call(client, "ping", 3000, &elapsed);
    snprintf(name, sizeof name, "%s: a call with the right client certificate succeeds", service);
    check(st == GOXELPOOL_OK, name, "%s in %.1f ms %s", goxelpool_status_name(st), elapsed, st ? goxelpool_last_error() : "");
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, call_loop, client);
    long failures = 0;
    for (int i = 0; i < 4; i++) {
        void *value;
        pthread_join(threads[i], &value);
        failures += (long)value;
    }
    snprintf(name, sizeof name, "%s: 200 calls from 4 threads over TLS", service);
    check(failures == 0, name, "%ld failed", failures);
    long long created = stat_int(client, -1, "connections_created");
    int opened = accepted(service) - before;
    snprintf(name, sizeof name, "%s: connections are reused (no handshake per call)", service);
    check(opened >= 1 && opened <= 4 && opened == created, name, "stunnel accepted %d, the pool created %lld, for 201 calls",
          opened, created);
    goxelpool_client_free(client);
}

/* A refused configuration: EPEER with `reason` in the message, fast; then 2 s of calls: all
 * EPEER at once, few connection attempts (not one per call), a critical tls_rejected alert, the
 * circuit closed. */
static void test_refused(const char *label, const char *service, int port, json_t *tls, const char *reason) {
    char endpoint[64], name[256], detail[1024];
    endpoint_text(endpoint, sizeof endpoint, port);
    int before = accepted(service);
    goxelpool_client *client = tls_client(endpoint, tls, 1, 4);
    if (!client) return;
    captured_events events;
    capture_init(&events);
    goxelpool_add_listener(client, GOXELPOOL_EVENT_ALERT, capture, &events, NULL);
    double elapsed;
    goxelpool_status st = timed_call(client, "ping", 3000, &elapsed);
    snprintf(name, sizeof name, "%s: EPEER with OpenSSL's reason, well before the 3000 ms deadline", label);
    check(st == GOXELPOOL_EPEER && strstr(goxelpool_last_error(), reason) != NULL && elapsed < 1500, name,
          "%s in %.1f ms: %s", goxelpool_status_name(st), elapsed, goxelpool_last_error());
    double began = now_ms(), slowest = 0;
    int calls = 0, peer = 0;
    while (now_ms() - began < 2000) {
        st = timed_call(client, "ping", 3000, &elapsed);
        calls++;
        if (st == GOXELPOOL_EPEER) peer++;
        if (elapsed > slowest) slowest = elapsed;
        sleep_ms(50);
    }
    snprintf(name, sizeof name, "%s: every call fails fast with EPEER while the fault lasts", label);
    check(peer == calls && slowest < 1500, name, "%d of %d EPEER, slowest %.1f ms", peer, calls, slowest);
    int attempts = accepted(service) - before;
    long long counted = stat_int(client, -1, "connection_attempts");
    snprintf(name, sizeof name, "%s: no reconnect storm (backoff 500 ms x1.6)", label);
    check(attempts >= 1 && attempts <= 6, name, "%d connections reached stunnel in %.1f s for %d calls (pool: %lld attempts)",
          attempts, (now_ms() - began) / 1000 + 0.0, calls + 1, counted);
    json_t *alert = find_event(&events, "tls_rejected");
    const char *severity = json_string_value(json_object_get(alert, "severity"));
    snprintf(name, sizeof name, "%s: a critical tls_rejected alert says it is a configuration fault", label);
    check(alert && severity && strcmp(severity, "critical") == 0 && strstr(json_string_value(json_object_get(alert, "message")), "configuration fault"),
          name, "%s", event_text(alert, detail, sizeof detail));
    json_decref(alert);
    json_t *stats = goxelpool_stats(client);
    const char *circuit = json_string_value(json_object_get(stats, "circuit_state"));
    long long rejected = json_integer_value(json_object_get(stats, "connections_rejected"));
    snprintf(name, sizeof name, "%s: the circuit breaker stays closed; connections_rejected counts it", label);
    check(circuit && strcmp(circuit, "closed") == 0 && rejected >= 1 && find_event(&events, "circuit_open") == NULL, name,
          "circuit %s, connections_rejected %lld", circuit ? circuit : "?", rejected);
    json_decref(stats);
    goxelpool_client_free(client);
    json_decref(events.list);
}

/* One refusing endpoint among two: ejected as a configuration fault, every call served. */
static void test_ejection(void) {
    char good[64], rogue[64], detail[1024];
    endpoint_text(good, sizeof good, port13);
    endpoint_text(rogue, sizeof rogue, port_rogue);
    json_t *config = json_pack("{s:[s,s], s:i, s:{s:i, s:i}, s:{s:i}, s:o}", "endpoints", good, rogue, "timeout_ms", 3000,
                               "pool", "min_connections", 1, "max_connections", 2, "health", "interval_ms", 0,
                               "tls", tls_section("ca.pem", "client.pem", "client.key"));
    goxelpool_client *client = new_client(config);
    if (!client) return;
    captured_events events;
    capture_init(&events);
    goxelpool_add_listener(client, GOXELPOOL_EVENT_ALERT, capture, &events, NULL);
    int failures = 0;
    for (int i = 0; i < 40; i++) failures += timed_call(client, "ping", 3000, NULL) != GOXELPOOL_OK;
    check(failures == 0, "two endpoints, one with an untrusted server: every call is served by the other", "%d of 40 failed", failures);
    json_t *ejected = find_event(&events, "endpoint_ejected");
    check(ejected && json_is_true(json_object_get(ejected, "configuration_fault")) &&
          strstr(json_string_value(json_object_get(ejected, "endpoint")), rogue),
          "the refusing endpoint is ejected at once as a configuration fault", "%s", event_text(ejected, detail, sizeof detail));
    json_decref(ejected);
    goxelpool_client_free(client);
    json_decref(events.list);
}

/* Files of the tls section that cannot be used: EINVAL at client_new, with the key, the path and
 * the reason. */
static void test_bad_files(void) {
    struct { const char *name, *key, *value, *want; } cases[] = {
        {"tls.ca_file that does not exist", "ca_file", "/nonexistent/ca.pem", "No such file"},
        {"tls.ca_file that holds no certificate", "ca_file", "client.key", "tls.ca_file"},
        {"tls.cert_file that is not a certificate", "cert_file", "ca.key", "tls.cert_file"},
        {"tls.key_file that does not match the certificate", "key_file", "rogue-client.key", "mismatch"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *tls = tls_section("ca.pem", "client.pem", "client.key");
        char path[300];
        if (cases[i].value[0] == '/') snprintf(path, sizeof path, "%s", cases[i].value); else cert_path(path, sizeof path, cases[i].value);
        json_object_set_new(tls, cases[i].key, json_string(path));
        json_t *config = json_pack("{s:[s], s:o}", "endpoints", "tls:127.0.0.1:1", "tls", tls);
        goxelpool_client *client = NULL;
        char err[512] = "";
        goxelpool_status st = goxelpool_client_new(config, &client, err, sizeof err);
        json_decref(config);
        char name[200];
        snprintf(name, sizeof name, "client_new with a %s is EINVAL naming it", cases[i].name);
        check(st == GOXELPOOL_EINVAL && client == NULL && strstr(err, cases[i].want) && strstr(err, "tls."), name, "%s: %s",
              goxelpool_status_name(st), err);
        goxelpool_client_free(client);
    }
}

static void test_health_checks(void) {
    char endpoint[64];
    endpoint_text(endpoint, sizeof endpoint, port13);
    json_t *config = json_pack("{s:[s], s:{s:i, s:i}, s:{s:i}, s:o}", "endpoints", endpoint,
                               "pool", "min_connections", 2, "max_connections", 2, "health", "interval_ms", 200,
                               "tls", tls_section("ca.pem", "client.pem", "client.key"));
    goxelpool_client *client = new_client(config);
    if (!client) return;
    check(timed_call(client, "ping", 3000, NULL) == GOXELPOOL_OK, "health client: first call", NULL);
    sleep_ms(300);
    int before = accepted("tls13");
    long long checks_before = stat_int(client, -1, "health_checks");
    sleep_ms(2200);
    long long checks = stat_int(client, -1, "health_checks") - checks_before, failures = stat_int(client, -1, "health_check_failures");
    int opened = accepted("tls13") - before;
    check(checks >= 2 && failures == 0 && opened == 0, "health checks run over TLS on the open connections",
          "%lld checks in 2.2 s (interval 200 ms; the maintenance thread wakes at least once a second), %lld failed, %d new connections",
          checks, failures, opened);
    goxelpool_client_free(client);
}

/* A client that opens a new connection per call (rotation after 1 request) on `endpoint`. */
static goxelpool_client *rotating_client(const char *endpoint) {
    json_t *config = json_pack("{s:[s], s:{s:i, s:i, s:i, s:b}, s:{s:i}, s:o}", "endpoints", endpoint,
                               "pool", "min_connections", 1, "max_connections", 1, "max_requests_per_connection", 1,
                               "validate_on_connect", 0, "health", "interval_ms", 0,
                               "tls", tls_section("ca.pem", "client.pem", "client.key"));
    return new_client(config);
}

/* After the first connection, each resumes the TLS session the previous one received, instead
 * of a full handshake. */
static void test_resumption(void) {
    char endpoint[64];
    endpoint_text(endpoint, sizeof endpoint, port13);
    int before = accepted("tls13"), failures = 0;
    goxelpool_client *client = rotating_client(endpoint);
    if (!client) return;
    for (int i = 0; i < 6; i++) failures += timed_call(client, "ping", 3000, NULL) != GOXELPOOL_OK;
    long long resumed = stat_int(client, -1, "tls_sessions_resumed");
    int opened = accepted("tls13") - before;
    check(failures == 0 && opened >= 6 && resumed >= 4, "a new connection resumes the TLS session of an earlier one",
          "%d calls failed; %d connections, %lld resumed", failures, opened, resumed);
    goxelpool_client_free(client);
}

static void test_deadline_when_stalled(void) {
    char endpoint[64];
    endpoint_text(endpoint, sizeof endpoint, port13);
    goxelpool_client *client = tls_client(endpoint, tls_section("ca.pem", "client.pem", "client.key"), 1, 2);
    if (!client) return;
    timed_call(client, "ping", 3000, NULL);
    json_t *faults = json_pack("{s:b}", "stall", 1);
    json_decref(refd_control(refd_sock, "refd.set_faults", faults));
    json_decref(faults);
    double elapsed;
    goxelpool_status st = timed_call(client, "goxel.get_status", 300, &elapsed);
    check(st == GOXELPOOL_ETIMEDOUT && elapsed >= 290 && elapsed < 550, "refd stalled behind stunnel: the 300 ms deadline is kept",
          "%s after %.1f ms", goxelpool_status_name(st), elapsed);
    json_decref(refd_control(refd_sock, "refd.reset_faults", NULL));
    st = timed_call(client, "ping", 3000, &elapsed);
    check(st == GOXELPOOL_OK, "after the stall, calls work again (on a new connection)", "%s in %.1f ms", goxelpool_status_name(st), elapsed);
    goxelpool_client_free(client);
}

/* socat as the terminator, asking for client certificates, fails every resumed handshake
 * ("session id context uninitialized"): the client falls back to a full handshake at once and
 * stops offering sessions, rather than being refused. */
static void test_server_that_cannot_resume(const char *socat) {
    if (!socat[0]) {
        check(getenv("CI") == NULL, "a server that cannot resume sessions (needs socat)", "socat not installed%s",
              getenv("CI") ? " (CI must install it)" : ": SKIP");
        return;
    }
    int port = free_port("127.0.0.1");
    char listen[1024], target[300], log[300], endpoint[64];
    snprintf(listen, sizeof listen, "OPENSSL-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,cert=%s/server.pem,key=%s/server.key,"
             "cafile=%s/ca.pem,verify=1", port, certs, certs, certs);
    snprintf(target, sizeof target, "UNIX-CONNECT:%s", refd_sock);
    snprintf(log, sizeof log, "%s/socat.log", work);
    char *argv[] = {(char *)socat, "-d", listen, target, NULL};
    pid_t pid = spawn(argv, log);
    if (!wait_port("127.0.0.1", port, 5000)) {
        check(0, "socat started", "see %s", log);
        stop(pid, SIGKILL);
        return;
    }
    endpoint_text(endpoint, sizeof endpoint, port);
    goxelpool_client *client = rotating_client(endpoint);
    int failures = 0;
    for (int i = 0; client && i < 6; i++) failures += timed_call(client, "ping", 3000, NULL) != GOXELPOOL_OK;
    long long resumed = client ? stat_int(client, -1, "tls_sessions_resumed") : -1;
    int refusals = count_in_file(log, "session id context uninitialized");
    check(client && failures == 0 && resumed == 0 && refusals == 1,
          "a server that cannot resume sessions (socat): one fallback to a full handshake, then none offered", "%d of 6 calls failed; "
          "%lld resumed; socat refused %d resumed handshake(s)", failures, resumed, refusals);
    goxelpool_client_free(client);
    stop(pid, SIGTERM);
}

/* tls:[::1]:port, the certificate checked against server_name (it has no IPv6 address). */
static void test_ipv6(void) {
    int port = free_port("::1");
    if (port < 0) {
        printf("SKIP tls:[::1]: no IPv6 loopback here\n");
        return;
    }
    pid_t pid = start_one_stunnel("ipv6", "::1", port, refd_sock);
    if (pid < 0) return;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tls:[::1]:%d", port);
    json_t *tls = tls_section("ca.pem", "client.pem", "client.key");
    json_object_set_new(tls, "server_name", json_string("localhost"));
    goxelpool_client *client = tls_client(endpoint, tls, 1, 1);
    double elapsed;
    goxelpool_status st = client ? timed_call(client, "ping", 3000, &elapsed) : GOXELPOOL_EINVAL;
    check(st == GOXELPOOL_OK, "tls:[::1]:port with server_name", "%s %s", goxelpool_status_name(st), st ? goxelpool_last_error() : "");
    goxelpool_client_free(client);
    stop(pid, SIGTERM);
}

/* kill -9 of refd, restarted 500 ms later: calls work again within 10 s. Returns the time from
 * the restart to the first successful call, or -1. */
static double kill_and_recover(goxelpool_client *client, const char *tcp) {
    for (int i = 0; i < 10; i++) timed_call(client, "ping", 3000, NULL);
    stop(refd_pid, SIGKILL);
    double until = now_ms() + 500;
    while (now_ms() < until) timed_call(client, "ping", 200, NULL);
    refd_pid = start_refd(refd_bin, refd_sock, tcp, refd_log);
    double restarted = now_ms();
    while (now_ms() - restarted < 10000) {
        if (timed_call(client, "ping", 1000, NULL) == GOXELPOOL_OK) return now_ms() - restarted;
        sleep_ms(20);
    }
    return -1;
}

static void test_kill_recovery(void) {
    char endpoint[64], plain[80], tcp[64];
    endpoint_text(endpoint, sizeof endpoint, port13);
    snprintf(tcp, sizeof tcp, "127.0.0.1:%d", port_plain);
    snprintf(plain, sizeof plain, "tcp:%s", tcp);
    json_t *config = json_pack("{s:[s], s:{s:i, s:i}, s:{s:i, s:i}, s:{s:i}, s:{s:i}}", "endpoints", plain,
                               "pool", "min_connections", 2, "max_connections", 4, "reconnect", "initial_backoff_ms", 200,
                               "max_backoff_ms", 1000, "circuit_breaker", "cooldown_ms", 500, "health", "interval_ms", 0);
    goxelpool_client *client = new_client(config);
    double plain_ms = client ? kill_and_recover(client, tcp) : -1;
    goxelpool_client_free(client);
    client = tls_client(endpoint, tls_section("ca.pem", "client.pem", "client.key"), 2, 4);
    if (!client) return;
    double tls_ms = kill_and_recover(client, tcp);
    check(tls_ms >= 0 && plain_ms >= 0, "kill -9 of refd behind stunnel: calls recover, as over plain TCP",
          "first answer %.0f ms after the restart over TLS, %.0f ms over plain TCP (backoff 200 ms .. 1 s)", tls_ms, plain_ms);
    goxelpool_client_free(client);
}

int main(int argc, char **argv) {
    harness_arguments(argc, argv, " [SOCAT]");
    snprintf(refd_sock, sizeof refd_sock, "%s/refd.sock", work);
    snprintf(refd_log, sizeof refd_log, "%s/refd.log", work);
    snprintf(stunnel_log, sizeof stunnel_log, "%s/stunnel.log", work);
    snprintf(stunnel_conf, sizeof stunnel_conf, "%s/stunnel.conf", work);
    port_plain = free_port("127.0.0.1");
    char tcp[64];
    snprintf(tcp, sizeof tcp, "127.0.0.1:%d", port_plain);
    refd_pid = start_refd(refd_bin, refd_sock, tcp, refd_log);
    if (refd_pid < 0 || !start_stunnel()) {
        printf("FAIL setup: goxel-refd or stunnel did not start (see %s)\n", work);
        stop(refd_pid, SIGKILL);
        return 1;
    }
    printf("# stunnel on 127.0.0.1:%d (TLS 1.3), :%d (TLS 1.2), :%d (untrusted server) -> %s\n", port13, port12, port_rogue, refd_sock);

    test_calls_work("tls13", port13);
    test_calls_work("tls12", port12);
    test_refused("no client certificate (TLS 1.3: refused after the handshake)", "tls13", port13,
                 tls_section("ca.pem", NULL, NULL), "certificate required");
    test_refused("no client certificate (TLS 1.2: refused in the handshake)", "tls12", port12,
                 tls_section("ca.pem", NULL, NULL), "handshake failure");
    test_refused("untrusted client certificate", "tls13", port13,
                 tls_section("ca.pem", "rogue-client.pem", "rogue-client.key"), "unknown ca");
    test_refused("untrusted server", "rogue", port_rogue,
                 tls_section("ca.pem", "client.pem", "client.key"), "unable to get local issuer certificate");
    json_t *wrong_name = tls_section("ca.pem", "client.pem", "client.key");
    json_object_set_new(wrong_name, "server_name", json_string("wrong.example"));
    test_refused("wrong host name", "tls13", port13, wrong_name, "hostname mismatch");

    /* Control: the same untrusted server with verify off is reachable, so verification is what
     * refused it above. */
    json_t *unverified = tls_section("ca.pem", "client.pem", "client.key");
    json_object_set_new(unverified, "verify", json_false());
    char rogue[64];
    endpoint_text(rogue, sizeof rogue, port_rogue);
    goxelpool_client *client = tls_client(rogue, unverified, 1, 1);
    goxelpool_status st = client ? timed_call(client, "ping", 3000, NULL) : GOXELPOOL_EINVAL;
    check(st == GOXELPOOL_OK, "control: with tls.verify false the untrusted server answers", "%s %s", goxelpool_status_name(st),
          st ? goxelpool_last_error() : "");
    goxelpool_client_free(client);

    test_ejection();
    test_ipv6();
    test_bad_files();
    test_health_checks();
    test_resumption();
    test_server_that_cannot_resume(argc > 5 ? argv[5] : "");
    test_deadline_when_stalled();
    test_kill_recovery();

    stop(stunnel_pid, SIGTERM);
    stop(refd_pid, SIGTERM);
    return finish();
}
