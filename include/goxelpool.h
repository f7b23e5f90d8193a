/*
 * goxelpool.h - connection pool and health monitor for the Goxel voxel daemon.
 *
 * libgoxelpool talks JSON-RPC 2.0 to `goxel-daemon` over its Unix socket. It keeps a pool of
 * persistent connections (one request in flight on each, as the daemon requires), puts a deadline
 * on every call, retries only where that is safe, checks the health of idle connections, and
 * reports what happens to listeners that you register.
 *
 * Conventions used on every declaration below:
 *   - JSON values are jansson's `json_t`. "borrowed" means the library does not take a reference:
 *     the caller keeps ownership and may free the value as soon as the function returns. "new
 *     reference" means the caller owns the returned value and must `json_decref` it.
 *   - Every function may be called from any thread, at the same time as any other, unless its
 *     comment says otherwise. No function prints anything; log lines go to listeners.
 *   - Functions that fail return a goxelpool_status. The detail of the most recent failure on the
 *     calling thread is readable with goxelpool_last_error().
 *   - Status codes are never renumbered; new ones are only appended.
 */
#ifndef GOXELPOOL_H
#define GOXELPOOL_H

#include <stddef.h>
#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GOXELPOOL_VERSION_MAJOR 1
#define GOXELPOOL_VERSION_MINOR 1
#define GOXELPOOL_VERSION_PATCH 0
#define GOXELPOOL_VERSION_STRING "1.1.0"

/* The library's version at run time, e.g. "1.1.0"; equals GOXELPOOL_VERSION_STRING of the
 * header the library was built with. Static string: never free it. */
const char *goxelpool_version(void);

/* Outcome of every call. Never renumbered. */
typedef enum goxelpool_status {
    GOXELPOOL_OK = 0,           /* success */
    GOXELPOOL_EINVAL = 1,       /* bad argument or configuration (message names it) */
    GOXELPOOL_ETIMEDOUT = 2,    /* the deadline passed (waiting for a connection or an answer) */
    GOXELPOOL_ECLOSED = 3,      /* the client is closed or closing */
    GOXELPOOL_ECONNECT = 4,     /* no connection to the daemon could be opened */
    GOXELPOOL_EIO = 5,          /* the connection broke; a non-idempotent call may have run */
    GOXELPOOL_EPROTO = 6,       /* the daemon answered something that is not a valid answer */
    GOXELPOOL_ERPC = 7,         /* the daemon answered with a JSON-RPC error (see rpc_error) */
    GOXELPOOL_EBUSY = 8,        /* the wait queue is full */
    GOXELPOOL_EUNAVAILABLE = 9, /* the daemon is known to be down (circuit open); failed fast */
    GOXELPOOL_ETOOBIG = 10,     /* a request or an answer is larger than max_message_size */
    GOXELPOOL_EPEER = 11,       /* the peer was refused or refused us: a Unix socket served by another
                                   user, or a TLS certificate or name that failed verification, or
                                   a client certificate the server refused (a configuration fault) */
    GOXELPOOL_ENOMEM = 12,      /* out of memory */
    GOXELPOOL_ELOST = 13        /* a session's document was lost and could not be restored */
} goxelpool_status;

/* A static English sentence for any value, unknown ones included. Never free it. */
const char *goxelpool_strerror(goxelpool_status status);

/* The status's name without prefix ("OK", "EINVAL", ...; "UNKNOWN" for other values), as used in
 * the "status" field of batch results and events. Static string. */
const char *goxelpool_status_name(goxelpool_status status);

/* The message of the most recent failed goxelpool_* call made on the calling thread (empty string
 * if none). Thread-local: valid until the next goxelpool_* call on the same thread. Never free it. */
const char *goxelpool_last_error(void);

/* ---------------------------------------------------------------------------------------------
 * Client
 * ------------------------------------------------------------------------------------------- */

typedef struct goxelpool_client goxelpool_client;

/* Creates a client and starts opening `pool.min_connections` connections in the background
 * (the call does not wait for them; a call made before one is open waits for it).
 *
 * config: borrowed; a JSON object or NULL for all defaults. Every key is optional; unknown keys
 *   are rejected. Keys and defaults (see README "Configuration"):
 *     socket_path "/tmp/goxel-daemon.sock", pooling true, timeout_ms 5000, retry_attempts 3,
 *     retry_delay_ms 1000, max_message_size 1048576, verify_peer true, idempotent_methods [],
 *     log_level "warn", event_queue_size 1024,
 *     pool { min_connections 2, max_connections 10, acquire_timeout_ms 5000, idle_timeout_ms 60000,
 *            max_lifetime_ms 0, max_requests_per_connection 0, max_waiters 1024,
 *            load_balancing "least_used" | "round_robin" | "random", connect_timeout_ms 1000,
 *            validate_on_connect true },
 *     reconnect { initial_backoff_ms 1000, multiplier 1.6, jitter 0.2, max_backoff_ms 120000 },
 *     health { interval_ms 30000, timeout_ms 5000, method "ping", failure_threshold 3,
 *              success_threshold 2, healthy_latency_ms 1000, degraded_latency_ms 3000,
 *              trend_analysis true, trend_sample_size 10, latency_spike_factor 3.0 },
 *     circuit_breaker { enabled true, consecutive_connect_failures 5, failure_rate 0.5,
 *              window_size 20, minimum_calls 10, cooldown_ms 5000 },
 *     endpoints [] (instead of socket_path: "unix:/path", "tcp:host:port", "tcp:[::1]:port",
 *              "tls:host:port", "dns:name:port", "dnstls:name:port"; see "Several daemons behind
 *              one client" below), max_total_connections 0 (no cap),
 *     outlier_detection { consecutive_failures 5, success_rate 0.5, window 20, minimum_calls 10,
 *              base_ejection_ms 1000, max_ejection_ms 30000, panic_threshold 0.5 },
 *     dns_refresh_ms 30000 (how often dns: names are looked up again; 0: only when every
 *              address of a name failed; else at least 100),
 *     tls { ca_file (PEM; default: the system's CA store), cert_file (PEM client certificate
 *              chain; default: none), key_file (PEM; default: in cert_file), server_name (the name
 *              the server's certificate must carry, also sent as SNI; default: the endpoint's host,
 *              or the name of a dnstls: endpoint), verify true, min_version "1.2" | "1.3" }.
 *              The files are read once, here: one that cannot be read or used is EINVAL, with the
 *              key, the path and OpenSSL's reason.
 * out: receives the client (set to NULL on failure). Must not be NULL.
 * errbuf: may be NULL; else receives a NUL-terminated message on failure (truncated to
 *   errbuf_len - 1 bytes).
 * Returns OK, EINVAL (bad config or arguments; the message names the key), ENOMEM.
 * The daemon need not be running: connections are retried with backoff. */
goxelpool_status goxelpool_client_new(const json_t *config, goxelpool_client **out,
                                      char *errbuf, size_t errbuf_len);

/* Stops the client: new calls fail with ECLOSED at once; calls waiting for a connection fail with
 * ECLOSED; calls in flight may finish for up to drain_timeout_ms (< 0: the configured timeout_ms),
 * then their connections are shut down and they fail with ECLOSED; queued async calls get their
 * callback with ECLOSED. Every socket is closed and every library thread joined before it returns
 * (a DNS lookup in progress is waited for: getaddrinfo cannot be interrupted; it is bounded by the
 * system resolver's timeout, resolv.conf "timeout" x "attempts").
 * Idempotent: a second close returns OK at once. Must not be called from a callback of this
 * client (returns EINVAL: it would wait for itself).
 * Returns OK, EINVAL (client NULL, or called from a callback). */
goxelpool_status goxelpool_client_close(goxelpool_client *client, int drain_timeout_ms);

/* Closes the client (drain timeout 0) if needed and frees it. NULL is fine. After it returns no
 * callback or listener of this client runs again. The caller must make sure no other thread uses
 * the client during or after this call. From a callback of the client it is deferred: the client
 * is freed when the callback returns. */
void goxelpool_client_free(goxelpool_client *client);

/* ---------------------------------------------------------------------------------------------
 * Calls
 * ------------------------------------------------------------------------------------------- */

/* Calls `method` with `params` and waits for the answer.
 *
 * method: borrowed, a non-empty NUL-terminated string.
 * params: borrowed; NULL (no params), a JSON array or a JSON object.
 * timeout_ms: deadline for the whole call, waiting for a connection and retries included;
 *   < 0 means the configured timeout_ms.
 * result: may be NULL (the result is dropped); on OK receives a new reference to the result.
 * rpc_error: may be NULL; on ERPC receives a new reference to the daemon's error object
 *   ({"code": int, "message": str, ...}). Both are set to NULL in every other case.
 * Returns OK, ERPC, EINVAL, ETIMEDOUT, ECLOSED, ECONNECT, EIO, EPROTO, EBUSY, EUNAVAILABLE,
 *   ETOOBIG, EPEER, ENOMEM.
 * Retries: only when the request was never written, or when the method is idempotent (ping,
 * version, status, echo, list_methods, goxel.get_*, goxel.list_* and the configured
 * idempotent_methods) and the connection broke; never after a timeout, within the deadline and at
 * most retry_attempts times. A call that timed out closes its connection (its state is unknown). */
goxelpool_status goxelpool_call(goxelpool_client *client, const char *method,
                                const json_t *params, int timeout_ms,
                                json_t **result, json_t **rpc_error);

/* Called exactly once with the outcome of goxelpool_call_async. result and rpc_error are borrowed:
 * valid only during the callback (json_incref them to keep them). Runs on a library thread, never
 * under an internal lock; it may call any goxelpool_* function of the same client except
 * goxelpool_client_close (goxelpool_client_free is deferred until the callback returns). */
typedef void (*goxelpool_call_cb)(goxelpool_status status, const json_t *result,
                                  const json_t *rpc_error, void *userdata);

/* Queues a call and returns at once. Arguments are as for goxelpool_call; method and params are
 * copied before it returns. On OK, cb runs exactly once later (with OK, ERPC, a failure status,
 * ETIMEDOUT, or ECLOSED when the client closes first). On any other return cb never runs.
 * Returns OK, EINVAL (NULL client/method/cb, bad params), ECLOSED, EBUSY (max_waiters async calls
 * already queued), ENOMEM. */
goxelpool_status goxelpool_call_async(goxelpool_client *client, const char *method,
                                      const json_t *params, int timeout_ms,
                                      goxelpool_call_cb cb, void *userdata);

/* Sends a JSON-RPC notification (a request without id). The real daemon still answers it with
 * `"id": null`; the library reads and drops that answer so the connection stays in step.
 * Returns as goxelpool_call (never ERPC). Notifications are never retried. */
goxelpool_status goxelpool_notify(goxelpool_client *client, const char *method,
                                  const json_t *params);

/* Runs several calls concurrently over the pool's connections (never as a JSON-RPC batch array:
 * the daemon crashes on one) and waits for all of them.
 * requests: borrowed, a JSON array of {"method": str, "params": array|object (optional)}.
 * timeout_ms: deadline for the whole batch (< 0: configured timeout_ms).
 * results: must not be NULL; on OK receives a new reference to an array of the same length, in the
 *   same order, of {"status": "<name>", "result": ...} or {"status": "ERPC", "error": {...}} or
 *   {"status": "<name>", "message": "..."}: every request gets its own outcome.
 * Returns OK when every request has an outcome (look at each one), EINVAL for a malformed
 * `requests` (nothing is sent), ECLOSED, ENOMEM. */
goxelpool_status goxelpool_call_batch(goxelpool_client *client, const json_t *requests,
                                      int timeout_ms, json_t **results);

/* ---------------------------------------------------------------------------------------------
 * Several daemons behind one client
 *
 * A client connects to the endpoints of its configuration ("endpoints": ["unix:/path",
 * "tcp:host:port", "tcp:[::1]:port", "tls:host:port", "dns:name:port", "dnstls:name:port"], or
 * just "socket_path").
 *   tls:host:port (tls:[v6]:port): TCP with TLS (OpenSSL), typically a terminator such as stunnel
 *     in front of a daemon on another machine. The server's chain and name (host, or
 *     tls.server_name) are verified unless tls.verify is false; SNI is sent; the client
 *     certificate of the tls section is sent when the server asks. The handshake happens when a
 *     connection opens, within pool.connect_timeout_ms; connections are reused as any other (no
 *     handshake per call), and a reconnection resumes the TLS session when the server allows it.
 *   dns:name:port: every A and AAAA address of `name`, one endpoint per address (tcp:ADDRESS:port),
 *     looked up on a library thread (never the caller's) with getaddrinfo, again every
 *     dns_refresh_ms and as soon as every address of the name failed (at most once a second).
 *     A new address is added; one that vanished is drained (calls in flight finish for up to
 *     timeout_ms) and removed. A failed or empty lookup keeps the last good set and raises a
 *     "dns_resolution_failed" alert (once per failure streak; "dns_resolution_recovered" when it
 *     resolves again). Until a name's first lookup succeeds, calls wait for it within their
 *     deadline (then ECONNECT with the lookup's error, or ETIMEDOUT). A change posts a "pool"
 *     event of type "dns_updated" (added, removed, addresses).
 *   dnstls:name:port: as dns:, with TLS to each address, the certificate checked against `name`.
 * A refusal (EPEER: TLS verification failed, a wrong name, a client certificate the server
 * refused, a Unix socket served by another user) is a configuration fault, not a daemon that is
 * down: calls on that endpoint fail at once with EPEER and OpenSSL's reason until a connection
 * attempt, made with the reconnect backoff, succeeds; the circuit breaker does not count it; a
 * critical alert "tls_rejected" (or "peer_rejected") says so; with several endpoints, the
 * endpoint is ejected at once and the call goes to another. A TLS 1.3 server refuses a client
 * certificate only after the handshake: the validation call (pool.validate_on_connect) or the
 * first call sees it, as EPEER too.
 * Each endpoint has its own pool
 * (pool.min_connections / max_connections apply per endpoint, within max_total_connections),
 * health, backoff and circuit breaker. Each call goes to one endpoint, chosen by
 * power-of-two-choices on outstanding calls weighted by a peak-EWMA latency; a call that never
 * reached its daemon (no connection, circuit open) or an idempotent one whose connection broke is
 * retried on another endpoint within its deadline. Failing endpoints are ejected for a growing
 * time ("outlier_detection"), never the last available one; when fewer than half are available,
 * all are used (panic mode).
 * ------------------------------------------------------------------------------------------- */

/* Adds a daemon at run time. endpoint: borrowed, "unix:/path", "tcp:host:port", "tls:host:port"
 * (a bare path is a Unix socket), or a DNS name "dns:name:port" / "dnstls:name:port" (looked up
 * on the resolver thread: this call does not wait for it). The first TLS endpoint of a client
 * without a tls section builds its TLS context with the defaults.
 * Returns OK, EINVAL (NULL or malformed, already present, a TLS context that cannot be built),
 * EBUSY (no share of max_total_connections left), ECLOSED. */
goxelpool_status goxelpool_add_endpoint(goxelpool_client *client, const char *endpoint);

/* Removes a daemon: no new call goes there; calls in flight on it finish for up to
 * drain_timeout_ms (< 0: the configured timeout_ms), then its connections are closed. Returns
 * when done. A DNS name ("dns:name:port") is removed with every address it brought; one address
 * of a name cannot be removed alone (EINVAL: it would come back at the next lookup). Must not be
 * called from a callback of this client (EINVAL).
 * Returns OK, EINVAL (NULL, malformed, not present, an address of a DNS name, called from a
 * callback). */
goxelpool_status goxelpool_remove_endpoint(goxelpool_client *client, const char *endpoint,
                                           int drain_timeout_ms);

/* ---------------------------------------------------------------------------------------------
 * Statistics, health and events
 * ------------------------------------------------------------------------------------------- */

/* A snapshot of the pool's statistics as a JSON object (new reference; NULL if client is NULL or
 * out of memory). Keys: see README "Statistics". Valid at any instant, also after close. */
json_t *goxelpool_stats(goxelpool_client *client);

/* A snapshot of the health monitor: pool state ("ready", "degraded", "unhealthy", "closed") and,
 * per connection, health tier, latency history, trend. New reference; NULL if client is NULL. */
json_t *goxelpool_health(goxelpool_client *client);

/* Event kinds, a bit mask for goxelpool_add_listener. Every event is a JSON object with at least
 * "kind" (one of the names below), "type" and "timestamp_ms" (Unix time in milliseconds). */
enum {
    GOXELPOOL_EVENT_ALERT = 1u << 0,      /* "alert": type, severity, message, connection_id ... */
    GOXELPOOL_EVENT_HEALTH = 1u << 1,     /* "health": a connection changed health tier */
    GOXELPOOL_EVENT_CONNECTION = 1u << 2, /* "connection": connection_added / connection_removed */
    GOXELPOOL_EVENT_POOL = 1u << 3,       /* "pool": pool_state_changed */
    GOXELPOOL_EVENT_REQUEST = 1u << 4,    /* "request": request_queued / request_served (hot) */
    GOXELPOOL_EVENT_LOG = 1u << 5,        /* "log": level, message (see config log_level) */
    GOXELPOOL_EVENT_SESSION = 1u << 6,    /* "session": opened, closed, restoring, restored, checkpoint */
    GOXELPOOL_EVENT_DAEMON = 1u << 7,     /* "daemon": a managed daemon started, exited, recycled */
    GOXELPOOL_EVENT_ALL = 0xff
};

/* A listener. event is borrowed: valid only during the call (json_incref it to keep it). Runs on
 * the client's event thread, one event at a time, in order, never under an internal lock. It may
 * call any goxelpool_* function of the same client except goxelpool_client_close. Events wait in
 * a bounded queue (event_queue_size): if listeners fall behind, the oldest events are dropped and
 * counted in the statistics ("events_dropped"); the pool itself never waits for a listener. */
typedef void (*goxelpool_event_cb)(const json_t *event, void *userdata);

/* Registers cb for the event kinds in `kinds` (a non-zero mask of GOXELPOOL_EVENT_*).
 * listener_id: may be NULL; else receives an id for goxelpool_remove_listener.
 * Returns OK, EINVAL (NULL client or cb, kinds 0 or unknown bits), ECLOSED, ENOMEM. */
goxelpool_status goxelpool_add_listener(goxelpool_client *client, unsigned kinds,
                                        goxelpool_event_cb cb, void *userdata, int *listener_id);

/* Unregisters a listener. When it returns the listener is not running and never runs again,
 * except when called from that listener itself (it then is not called again after it returns).
 * Returns OK, EINVAL (NULL client or unknown id). */
goxelpool_status goxelpool_remove_listener(goxelpool_client *client, int listener_id);

#ifdef __cplusplus
}
#endif

#endif /* GOXELPOOL_H */
