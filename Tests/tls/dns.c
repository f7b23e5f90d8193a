/*
 * dns.c - DNS endpoints (dns:name:port, dnstls:name:port) following a name whose addresses
 * change, run by tls-check.sh under `unshare --mount`:
 *
 *   unshare --mount ./dns REFD STUNNEL CERTDIR WORKDIR
 *
 * In its private mount namespace it bind-mounts hosts files it writes over /etc/hosts (glibc reads
 * /etc/hosts on each lookup), so names resolve to loopback addresses 127.0.0.2 ... 127.0.0.5 where
 * goxel-refd instances listen (--tcp), on one port. Checks: a client whose only endpoint is a DNS
 * name waits for the lookup within its deadline; one endpoint per address, calls spread over
 * them; the set follows the name (an address that appears is added, one that vanishes is drained:
 * calls in flight on it finish, then it is removed); a failed lookup keeps the last set and raises
 * an alert, a later success says so; when every address fails the name is looked up again long
 * before dns_refresh_ms; dnstls: checks the certificate against the name, not the address.
 * Prints SKIP when it cannot mount (not in a private mount namespace, or not root).
 */
#include "harness.h"

#include <netdb.h>
#include <sys/mount.h>

static int port;
static int hosts_version;

/* Replaces /etc/hosts (in this mount namespace) by a file holding `entries`: a new file mounted
 * over the old one, so a lookup never reads a half-written file. */
static int set_hosts(const char *entries) {
    char path[300];
    snprintf(path, sizeof path, "%s/hosts.%d", work, ++hosts_version);
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fprintf(f, "127.0.0.1 localhost\n%s", entries);
    fclose(f);
    return mount(path, "/etc/hosts", NULL, MS_BIND, NULL) == 0;
}

/* The endpoints the client made of its (first) DNS name, joined by spaces, from its statistics. */
static void name_endpoints(goxelpool_client *client, char *out, size_t size) {
    json_t *stats = goxelpool_stats(client);
    json_t *list = json_object_get(json_array_get(json_object_get(stats, "dns"), 0), "endpoints");
    out[0] = 0;
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item) {
        size_t used = strlen(out);
        snprintf(out + used, size - used, "%s%s", used ? " " : "", json_string_value(item));
    }
    json_decref(stats);
}

/* Waits (up to timeout_ms) until the name's endpoints are exactly `want` (space-separated). */
static int wait_endpoints(goxelpool_client *client, const char *want, int timeout_ms, char *got, size_t size) {
    double until = now_ms() + timeout_ms;
    do {
        name_endpoints(client, got, size);
        if (strcmp(got, want) == 0) return 1;
        sleep_ms(20);
    } while (now_ms() < until);
    return 0;
}

static void expected(char *out, size_t size, const char *scheme, const char *a, const char *b) {
    if (b) snprintf(out, size, "%s:%s:%d %s:%s:%d", scheme, a, port, scheme, b, port);
    else snprintf(out, size, "%s:%s:%d", scheme, a, port);
}

/* On a failure: each endpoint's routing figures, to see where calls went and why. */
static const char *endpoint_detail(goxelpool_client *client, int ok, char *out, size_t size) {
    out[0] = 0;
    if (ok) return out;
    json_t *stats = goxelpool_stats(client);
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(stats, "endpoints"), i, item) {
        size_t used = strlen(out);
        snprintf(out + used, size - used, "; %s: routed %lld, failures %lld, ejected %s, last error %s",
                 json_string_value(json_object_get(item, "endpoint")), json_integer_value(json_object_get(item, "routed_calls")),
                 json_integer_value(json_object_get(item, "routed_failures")),
                 json_is_true(json_object_get(item, "ejected")) ? "yes" : "no",
                 json_string_value(json_object_get(item, "last_connect_error")) ? json_string_value(json_object_get(item, "last_connect_error")) : "none");
    }
    json_decref(stats);
    return out;
}

static goxelpool_client *dns_client(const char *name, int refresh_ms, captured_events *events) {
    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "dns:%s:%d", name, port);
    json_t *config = json_pack("{s:[s], s:i, s:i, s:{s:i, s:i}, s:{s:i, s:i}, s:{s:i}, s:{s:i}}", "endpoints", endpoint,
                               "dns_refresh_ms", refresh_ms, "timeout_ms", 3000, "pool", "min_connections", 1, "max_connections", 2,
                               "reconnect", "initial_backoff_ms", 100, "max_backoff_ms", 500, "circuit_breaker", "cooldown_ms", 300,
                               "health", "interval_ms", 0);
    goxelpool_client *client = new_client(config);
    if (client && events) goxelpool_add_listener(client, GOXELPOOL_EVENT_ALERT | GOXELPOOL_EVENT_POOL, capture, events, NULL);
    return client;
}

typedef struct {
    pthread_mutex_t lock;
    int done, ok;
    char failure[300];
} async_tally;

static void tally(goxelpool_status status, const json_t *result, const json_t *rpc_error, void *userdata) {
    (void)result; (void)rpc_error;
    async_tally *t = userdata;
    pthread_mutex_lock(&t->lock);
    t->done++;
    if (status == GOXELPOOL_OK) t->ok++;
    else if (!t->failure[0]) snprintf(t->failure, sizeof t->failure, "; %s: %s", goxelpool_status_name(status), goxelpool_last_error());
    pthread_mutex_unlock(&t->lock);
}

static char sock_a[256], sock_b[256], sock_c[256];
static pid_t refd_a, refd_b, refd_c;

/* fleet.test: followed as its addresses change; a lookup that fails keeps the last set. */
static void test_follow(void) {
    char got[512], want[512], detail[1024];
    set_hosts("127.0.0.2 fleet.test\n127.0.0.3 fleet.test\n");
    captured_events events;
    capture_init(&events);
    long a0 = refd_requests(sock_a), b0 = refd_requests(sock_b);
    goxelpool_client *client = dns_client("fleet.test", 300, &events);
    if (!client) return;
    double elapsed;
    goxelpool_status st = timed_call(client, "ping", 3000, &elapsed);
    check(st == GOXELPOOL_OK, "a call on a client whose only endpoint is a DNS name waits for the lookup", "%s in %.1f ms %s",
          goxelpool_status_name(st), elapsed, st ? goxelpool_last_error() : "");
    expected(want, sizeof want, "tcp", "127.0.0.2", "127.0.0.3");
    check(wait_endpoints(client, want, 3000, got, sizeof got), "one endpoint per address of the name", "%s", got);
    int failures = 0;
    for (int i = 0; i < 20; i++) failures += timed_call(client, "ping", 3000, NULL) != GOXELPOOL_OK;
    /* Which address serves a call is the balancer's choice (peak EWMA latency): here each
     * address must have been connected to (a validation ping per connection) and calls work. */
    long a = refd_requests(sock_a) - a0, b = refd_requests(sock_b) - b0;
    check(failures == 0 && a > 0 && b > 0, "each address is connected to, and calls work", "%d of 20 failed; 127.0.0.2 got %ld requests, 127.0.0.3 got %ld%s",
          failures, a, b, endpoint_detail(client, failures == 0 && a > 0 && b > 0, detail, sizeof detail));
    json_t *stats = goxelpool_stats(client);
    json_t *entry = json_array_get(json_object_get(stats, "dns"), 0);
    char name[64];
    snprintf(name, sizeof name, "dns:fleet.test:%d", port);
    check(entry && strcmp(json_string_value(json_object_get(entry, "name")), name) == 0 &&
          json_array_size(json_object_get(entry, "addresses")) == 2 && json_is_integer(json_object_get(entry, "last_success")) &&
          json_is_null(json_object_get(entry, "last_error")) &&
          strcmp(json_string_value(json_object_get(json_array_get(json_object_get(stats, "endpoints"), 0), "dns_name")), name) == 0,
          "statistics show the name, its addresses and its last lookup", "%s", event_text(entry, detail, sizeof detail));
    json_decref(stats);

    /* 127.0.0.3 leaves the name. */
    set_hosts("127.0.0.2 fleet.test\n");
    expected(want, sizeof want, "tcp", "127.0.0.2", NULL);
    check(wait_endpoints(client, want, 4000, got, sizeof got), "an address that leaves the name is removed", "%s", got);

    /* 127.0.0.2, now the only address, answers slowly; it is replaced by .3 and .4 while calls
     * run on it. */
    json_t *faults = json_pack("{s:i}", "latency_ms", 600);
    json_decref(refd_control(sock_a, "refd.set_faults", faults));
    json_decref(faults);
    async_tally t = {PTHREAD_MUTEX_INITIALIZER, 0, 0, ""};
    capture_clear(&events);
    long a1 = refd_requests(sock_a);
    for (int i = 0; i < 4; i++) goxelpool_call_async(client, "ping", NULL, 3000, tally, &t);
    sleep_ms(100);
    set_hosts("127.0.0.3 fleet.test\n127.0.0.4 fleet.test\n");
    expected(want, sizeof want, "tcp", "127.0.0.3", "127.0.0.4");
    int followed = wait_endpoints(client, want, 4000, got, sizeof got);
    double until = now_ms() + 5000;
    for (;;) {
        pthread_mutex_lock(&t.lock);
        int done = t.done;
        pthread_mutex_unlock(&t.lock);
        if (done == 4 || now_ms() > until) break;
        sleep_ms(20);
    }
    long served_by_a = refd_requests(sock_a) - a1;
    check(followed, "new addresses are added and the vanished one removed", "%s", got);
    check(t.ok == 4 && served_by_a >= 2, "calls in flight on the vanished address finish (it is drained, not cut)",
          "%d of 4 calls OK, 127.0.0.2 answered %ld of them%s", t.ok, served_by_a, t.failure);
    json_t *updated = wait_event(&events, "dns_updated", 3000);
    check(updated && json_array_size(json_object_get(updated, "added")) == 2 && json_array_size(json_object_get(updated, "removed")) == 1,
          "a dns_updated event lists what was added and removed", "%s", event_text(updated, detail, sizeof detail));
    json_decref(updated);
    long bc0 = refd_requests(sock_b) + refd_requests(sock_c);
    failures = 0;
    for (int i = 0; i < 20; i++) failures += timed_call(client, "ping", 3000, NULL) != GOXELPOOL_OK;
    long bc = refd_requests(sock_b) + refd_requests(sock_c) - bc0;
    check(failures == 0 && bc >= 20, "calls reach the new addresses", "%d of 20 failed; 127.0.0.3 and .4 answered %ld%s", failures, bc,
          endpoint_detail(client, failures == 0 && bc >= 20, detail, sizeof detail));
    json_decref(refd_control(sock_a, "refd.reset_faults", NULL));

    /* The name disappears: the last good set stays, with an alert. */
    capture_clear(&events);
    set_hosts("");
    json_t *alert = wait_event(&events, "dns_resolution_failed", 3000);
    check(alert && strstr(json_string_value(json_object_get(alert, "message")), "keeping the last 2 addresses") &&
          strcmp(json_string_value(json_object_get(alert, "severity")), "warning") == 0,
          "a failed lookup keeps the last set and raises an alert", "%s", event_text(alert, detail, sizeof detail));
    json_decref(alert);
    sleep_ms(700);
    name_endpoints(client, got, sizeof got);
    failures = 0;
    for (int i = 0; i < 20; i++) failures += timed_call(client, "ping", 3000, NULL) != GOXELPOOL_OK;
    stats = goxelpool_stats(client);
    entry = json_array_get(json_object_get(stats, "dns"), 0);
    check(strcmp(got, want) == 0 && failures == 0 && json_is_string(json_object_get(entry, "last_error")) &&
          json_integer_value(json_object_get(entry, "lookup_failures")) >= 2,
          "while lookups fail, the endpoints and calls stay", "%s; %d of 20 failed; %s", got, failures,
          event_text(entry, detail, sizeof detail));
    json_decref(stats);
    check(count_events(&events, "dns_resolution_failed") == 1, "one alert per failure streak, not one per lookup", "%d alerts",
          count_events(&events, "dns_resolution_failed"));

    set_hosts("127.0.0.3 fleet.test\n");
    expected(want, sizeof want, "tcp", "127.0.0.3", NULL);
    followed = wait_endpoints(client, want, 4000, got, sizeof got);
    alert = wait_event(&events, "dns_resolution_recovered", 3000);
    check(followed && alert, "the name resolves again: dns_resolution_recovered, and the set follows it", "%s; %s", got,
          event_text(alert, detail, sizeof detail));
    json_decref(alert);

    /* goxelpool_remove_endpoint / add_endpoint take the name; one address of it cannot be removed. */
    char address[64], name_text[64];
    snprintf(address, sizeof address, "tcp:127.0.0.3:%d", port);
    snprintf(name_text, sizeof name_text, "dns:fleet.test:%d", port);
    goxelpool_status st_address = goxelpool_remove_endpoint(client, address, 0);
    check(st_address == GOXELPOOL_EINVAL && strstr(goxelpool_last_error(), "dns:fleet.test"),
          "removing one address of a name is EINVAL naming the name", "%s: %s", goxelpool_status_name(st_address), goxelpool_last_error());
    goxelpool_status st_remove = goxelpool_remove_endpoint(client, name_text, 1000);
    stats = goxelpool_stats(client);
    size_t left = json_array_size(json_object_get(stats, "endpoints")), names = json_array_size(json_object_get(stats, "dns"));
    json_decref(stats);
    check(st_remove == GOXELPOOL_OK && left == 0 && names == 0, "removing the name removes its addresses",
          "%s; %zu endpoints and %zu names left", goxelpool_status_name(st_remove), left, names);
    goxelpool_status st_add = goxelpool_add_endpoint(client, name_text);
    followed = st_add == GOXELPOOL_OK && wait_endpoints(client, want, 4000, got, sizeof got);
    st = followed ? timed_call(client, "ping", 3000, &elapsed) : GOXELPOOL_EINVAL;
    check(followed && st == GOXELPOOL_OK, "adding the name back at run time: looked up, its address serves calls", "%s; %s; %s",
          goxelpool_status_name(st_add), got, goxelpool_status_name(st));
    goxelpool_client_free(client);
    json_decref(events.list);
}

/* dns_refresh_ms of a minute, but every address fails: looked up again within seconds. */
static void test_lookup_when_all_fail(void) {
    char got[512], want[512];
    set_hosts("127.0.0.3 fleet2.test\n");
    goxelpool_client *client = dns_client("fleet2.test", 60000, NULL);
    if (!client) return;
    goxelpool_status st = timed_call(client, "ping", 3000, NULL);
    expected(want, sizeof want, "tcp", "127.0.0.3", NULL);
    check(st == GOXELPOOL_OK && wait_endpoints(client, want, 1000, got, sizeof got), "fleet2.test: first address serves", "%s %s",
          goxelpool_status_name(st), got);
    set_hosts("127.0.0.4 fleet2.test\n");
    stop(refd_b, SIGKILL);
    refd_b = -1;
    double began = now_ms();
    int ok = 0;
    while (!ok && now_ms() - began < 8000) ok = timed_call(client, "ping", 1000, NULL) == GOXELPOOL_OK;
    double recovered = now_ms() - began;
    expected(want, sizeof want, "tcp", "127.0.0.4", NULL);
    check(ok && wait_endpoints(client, want, 3000, got, sizeof got), "every address failed: the name is looked up again at once, not after dns_refresh_ms (60 s)",
          "calls work again after %.0f ms; endpoints %s", recovered, got);
    goxelpool_client_free(client);
}

/* A name that does not resolve yet: calls wait within their deadline, then work once it does. */
static void test_not_yet_resolved(void) {
    set_hosts("");
    goxelpool_client *client = dns_client("late.test", 300, NULL);
    if (!client) return;
    double elapsed;
    goxelpool_status st = timed_call(client, "ping", 400, &elapsed);
    check(st == GOXELPOOL_ECONNECT && elapsed >= 380 && strstr(goxelpool_last_error(), "late.test"),
          "a name with no address yet: the call waits for its deadline, then ECONNECT with the lookup's error",
          "%s after %.0f ms: %s", goxelpool_status_name(st), elapsed, goxelpool_last_error());
    set_hosts("127.0.0.4 late.test\n");
    st = timed_call(client, "ping", 4000, &elapsed);
    check(st == GOXELPOOL_OK, "once the name resolves, a waiting call goes through", "%s after %.0f ms %s", goxelpool_status_name(st),
          elapsed, st ? goxelpool_last_error() : "");
    goxelpool_client_free(client);
}

/* dnstls: the certificate (SAN secure.test, not 127.0.0.5) is checked against the name. */
static void test_dnstls(void) {
    char ca[300], client_cert[300], client_key[300];
    snprintf(ca, sizeof ca, "%s/ca.pem", certs);
    snprintf(client_cert, sizeof client_cert, "%s/client.pem", certs);
    snprintf(client_key, sizeof client_key, "%s/client.key", certs);
    pid_t stunnel = start_one_stunnel("dnstls", "127.0.0.5", port, sock_c);
    if (stunnel < 0) return;
    set_hosts("127.0.0.5 secure.test\n");
    const char *forms[] = {"dnstls:secure.test:%d", "tls:127.0.0.5:%d"};
    for (int i = 0; i < 2; i++) {
        char endpoint[128], got[512], want[128];
        snprintf(endpoint, sizeof endpoint, forms[i], port);
        json_t *config = json_pack("{s:[s], s:{s:i, s:i}, s:{s:i}, s:{s:s, s:s, s:s}}", "endpoints", endpoint,
                                   "pool", "min_connections", 1, "max_connections", 1, "health", "interval_ms", 0,
                                   "tls", "ca_file", ca, "cert_file", client_cert, "key_file", client_key);
        goxelpool_client *client = new_client(config);
        if (!client) continue;
        double elapsed;
        goxelpool_status st = timed_call(client, "ping", 3000, &elapsed);
        if (i == 0) {
            snprintf(want, sizeof want, "tls:127.0.0.5:%d", port);
            name_endpoints(client, got, sizeof got);
            check(st == GOXELPOOL_OK && strcmp(got, want) == 0, "dnstls: TLS to each address, the certificate checked against the name",
                  "%s %s; endpoints %s", goxelpool_status_name(st), st ? goxelpool_last_error() : "", got);
        } else {
            check(st == GOXELPOOL_EPEER && strstr(goxelpool_last_error(), "address mismatch"),
                  "control: the same address as tls: (checked against 127.0.0.5) is refused", "%s: %s", goxelpool_status_name(st),
                  goxelpool_last_error());
        }
        goxelpool_client_free(client);
    }
    stop(stunnel, SIGTERM);
}

int main(int argc, char **argv) {
    harness_arguments(argc, argv, " (under unshare --mount)");
    if (!set_hosts("")) {
        printf("SKIP dns-check: cannot bind-mount over /etc/hosts (%s): run under unshare --mount as root\n", strerror(errno));
        return 0;
    }
    /* One port free on every address (each refd listens on its own loopback address). */
    char tcp[3][64];
    for (int attempt = 0; attempt < 20; attempt++) {
        port = free_port("127.0.0.2");
        if (port > 0 && free_port("127.0.0.3") > 0 && !port_open("127.0.0.3", port) && !port_open("127.0.0.4", port) &&
            !port_open("127.0.0.5", port)) break;
    }
    const char *addresses[] = {"127.0.0.2", "127.0.0.3", "127.0.0.4"};
    char *socks[] = {sock_a, sock_b, sock_c};
    pid_t *pids[] = {&refd_a, &refd_b, &refd_c};
    for (int i = 0; i < 3; i++) {
        char log[300];
        snprintf(socks[i], 256, "%s/refd-%d.sock", work, i + 2);
        snprintf(log, sizeof log, "%s/refd-%d.log", work, i + 2);
        snprintf(tcp[i], sizeof tcp[i], "%s:%d", addresses[i], port);
        *pids[i] = start_refd(refd_bin, socks[i], tcp[i], log);
        if (*pids[i] < 0) {
            printf("FAIL setup: goxel-refd on %s did not start\n", tcp[i]);
            for (int j = 0; j < i; j++) stop(*pids[j], SIGKILL);
            return 1;
        }
    }
    printf("# goxel-refd on 127.0.0.2, .3, .4 port %d; /etc/hosts replaced in a private mount namespace\n", port);

    test_follow();
    test_not_yet_resolved();
    test_dnstls();
    test_lookup_when_all_fail();

    for (int i = 0; i < 3; i++) stop(*pids[i], SIGTERM);
    return finish();
}
