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
#define GOXELPOOL_VERSION_MINOR 4
#define GOXELPOOL_VERSION_PATCH 3
#define GOXELPOOL_VERSION_STRING "1.4.3"

/* The library's version at run time, e.g. "1.4.3"; equals GOXELPOOL_VERSION_STRING of the
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
 *     callbacks "thread" | "dispatch" (where async callbacks and listeners run: on library threads,
 *              or only inside goxelpool_dispatch; see "Event loops" below),
 *     pool { min_connections 2, max_connections 10, acquire_timeout_ms 5000, idle_timeout_ms 60000,
 *            max_lifetime_ms 0, max_requests_per_connection 0, max_waiters 1024,
 *            load_balancing "least_used" | "round_robin" | "random" (among idle connections; a
 *            thread first gets back the connection it released last, when that one is idle and
 *            healthy), connect_timeout_ms 1000,
 *            reuse_while_waiting 16 (since 1.2, 8 before 1.4; 0..1000000: while calls wait for
 *              a connection, one that is released is kept for the releasing thread's next call
 *              up to this many calls in a row and within reuse_window_us of when that thread
 *              got it, then handed to the longest-waiting call; 0: hand it over at every
 *              release, strict FIFO. Waiters stay FIFO among themselves. Since 1.4, with
 *              fast_path, a connection kept this way is taken back without the pool's lock),
 *            reuse_window_us 3000 (since 1.2, 1000 before 1.4; 1..60000000: only short calls
 *              are reused: a call that took half of it or longer, or that ends after it, hands
 *              its connection over at once),
 *            reuse_grace_us 200 (since 1.2; 1..1000000: a kept connection whose thread does not
 *              call again within this many microseconds goes to the longest-waiting call, at
 *              the next call into the pool or at the latest 2 ms later, from the library's
 *              maintenance thread),
 *            fast_path true (since 1.3: while no call waits for a connection, a thread gives
 *              back and takes back its own last connection without the pool's lock, when the
 *              call was answered within health.healthy_latency_ms and under 10 ms, the
 *              connection is healthy and no rotation or lifetime is due; the pool records
 *              those calls, in the order they were made, at its next decision, so statistics,
 *              health tiers, alerts and the circuit breaker are what they would be without it.
 *              A snapshot counts a call's lease when the call ends. A connection parked that
 *              way is seen by housekeeping (idle expiry, health checks) at the maintenance
 *              pass, at least once a second. Since 1.4, while calls wait, a release that
 *              reuse_while_waiting keeps for its thread is kept the same way (its thread takes
 *              it back with no lock) under the same bounds; such a connection counts as idle
 *              in a snapshot, as one kept through the lock does (busy before 1.4.1). false:
 *              every call takes the pool's lock),
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
 *     spawn { command [...] (required: the daemon's argv, "{socket}" replaced by the socket the
 *              library chose; see "Managed daemons" below), instances 1 (1..64), env {} (strings
 *              added to, or replacing, the environment the daemon inherits; "{socket}" replaced),
 *              max_connections_per_process 240 (0: no limit), max_age_ms 0 (0: none; else >= 1000),
 *              start_timeout_ms 10000, stop_grace_ms 2000, drain_timeout_ms 60000,
 *              output "log" | "null" } (instead of socket_path or endpoints),
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
 * Returns OK, EINVAL (bad config or arguments; the message names the key), ENOMEM (also when
 *   no file descriptor is left for the event fd of "callbacks": "dispatch").
 * The daemon need not be running: connections are retried with backoff. */
goxelpool_status goxelpool_client_new(const json_t *config, goxelpool_client **out,
                                      char *errbuf, size_t errbuf_len);

/* Stops the client: new calls fail with ECLOSED at once; calls waiting for a connection fail with
 * ECLOSED; calls in flight may finish for up to drain_timeout_ms (< 0: the configured timeout_ms),
 * then their connections are shut down and they fail with ECLOSED; queued async calls get their
 * callback with ECLOSED. Then the managed daemons (spawn) get SIGTERM, SIGKILL after
 * spawn.stop_grace_ms, and are reaped; their sockets and private directory are removed. Every
 * socket is closed, every process the library started reaped and every library thread joined
 * before it returns (a DNS lookup in progress is waited for: getaddrinfo cannot be interrupted;
 * it is bounded by the system resolver's timeout, resolv.conf "timeout" x "attempts").
 * Idempotent: a second close returns OK at once. In thread mode it must not be called from a
 * callback of this client (returns EINVAL: it would wait for itself); in dispatch mode callbacks
 * run on your thread, so it may be, and the callbacks of queued async calls then wait in the
 * dispatch queue (with ECLOSED) for goxelpool_dispatch.
 * Returns OK, EINVAL (client NULL, or called from a callback in thread mode). */
goxelpool_status goxelpool_client_close(goxelpool_client *client, int drain_timeout_ms);

/* Closes the client (drain timeout 0) if needed and frees it. NULL is fine. After it returns no
 * callback or listener of this client runs again. The caller must make sure no other thread uses
 * the client during or after this call. From a callback of the client it is deferred: the client
 * is freed when the callback returns.
 * Thread mode: after a free from a callback, async callbacks not yet run never run.
 * Dispatch mode: every item still queued runs first, on the thread calling free (from a callback:
 * in the goxelpool_dispatch that ran it, once the callback returns), so each async callback
 * still runs exactly once (ECLOSED for calls cut off); calls made from them return ECLOSED. The
 * event fd is closed: stop watching it before. */
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
 * valid only during the callback (json_incref them to keep them). Runs on a library thread (in
 * dispatch mode: inside goxelpool_dispatch, on its caller's thread), never under an internal lock;
 * it may call any goxelpool_* function of the same client except goxelpool_client_close in
 * thread mode (goxelpool_client_free is deferred until the callback returns). On a failure,
 * goxelpool_last_error() in the callback gives the detail. */
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

/* Sends a JSON-RPC notification (a request without id) and returns once it is written: it never
 * waits for an answer. The real daemon still answers a notification with `"id": null`, a JSON-RPC
 * 2.0 daemon does not; the next exchange on that connection skips such an answer, so the
 * connection stays in step with both. Returns as goxelpool_call (never ERPC, never ETIMEDOUT for
 * a missing answer). Notifications are never retried. */
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
 * drain_timeout_ms (< 0: the configured timeout_ms), then its connections are closed. Sessions on
 * it: a durable one is checkpointed there and moves to another free daemon (waiting up to its
 * restore_timeout_ms for one), where its document is restored; one that is not durable ends
 * (its calls return ELOST). Returns when done. A DNS name ("dns:name:port") is removed with
 * every address it brought; one address of a name cannot be removed alone (EINVAL: it would come
 * back at the next lookup). Must not be called from a callback of this client (EINVAL).
 * Returns OK, EINVAL (NULL, malformed, not present, an address of a DNS name, called from a
 * callback, or a daemon the library manages: spawn replaces and stops those itself). */
goxelpool_status goxelpool_remove_endpoint(goxelpool_client *client, const char *endpoint,
                                           int drain_timeout_ms);

/* ---------------------------------------------------------------------------------------------
 * Statistics, health and events
 * ------------------------------------------------------------------------------------------- */

/* A snapshot of the pool's statistics as a JSON object (new reference; NULL if client is NULL or
 * out of memory). Keys: see README "Statistics" (with spawn also "daemons", one object per
 * managed daemon, and "spawn", their totals). Valid at any instant, also after close. */
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
    GOXELPOOL_EVENT_SESSION = 1u << 6,    /* "session": session_opened, session_closed, session_restoring,
                                           * session_restored, checkpoint (with session_id, endpoint) */
    GOXELPOOL_EVENT_DAEMON = 1u << 7,     /* "daemon": daemon_started, daemon_exited, daemon_recycling,
                                           * daemon_retired (managed daemons, with pid, endpoint, slot) */
    GOXELPOOL_EVENT_ALL = 0xff
};

/* A listener. event is borrowed: valid only during the call (json_incref it to keep it). Runs on
 * the client's event thread (in dispatch mode: inside goxelpool_dispatch), one event at a time,
 * in order, never under an internal lock. It may call any goxelpool_* function of the same
 * client except goxelpool_client_close in thread mode. Events wait in a bounded queue
 * (event_queue_size): if listeners fall behind, the oldest events are dropped and counted in the
 * statistics ("events_dropped"); the pool itself never waits for a listener. */
typedef void (*goxelpool_event_cb)(const json_t *event, void *userdata);

/* Registers cb for the event kinds in `kinds` (a non-zero mask of GOXELPOOL_EVENT_*).
 * Only events that happen after it returns reach cb; nothing is kept for listeners to come (the
 * statistics count every alert). goxelpool_client_new already starts opening min_connections
 * connections, so an early connection_added, or an alert for a refused first connection, may
 * come before any listener: to see everything from the first connection, configure
 * pool.min_connections 0 (the first call opens it; managed daemons still start at once) or
 * read goxelpool_stats.
 * listener_id: may be NULL; else receives an id for goxelpool_remove_listener.
 * Returns OK, EINVAL (NULL client or cb, kinds 0 or unknown bits), ECLOSED, ENOMEM. */
goxelpool_status goxelpool_add_listener(goxelpool_client *client, unsigned kinds,
                                        goxelpool_event_cb cb, void *userdata, int *listener_id);

/* Unregisters a listener. When it returns the listener is not running and never runs again,
 * except when called from that listener itself (it then is not called again after it returns).
 * Returns OK, EINVAL (NULL client or unknown id). */
goxelpool_status goxelpool_remove_listener(goxelpool_client *client, int listener_id);

/* ---------------------------------------------------------------------------------------------
 * Sessions: a document pinned to one daemon
 *
 * A daemon holds ONE document for all its connections (a goxel.create_project from any
 * connection wipes what the others built), so a program's work belongs on one daemon, held
 * alone. A session is that: every call of a session goes to its daemon, over that daemon's
 * pooled connections. goxelpool_call (no session) keeps spreading calls over all endpoints and
 * may reach a daemon that holds a session: keep document-changing calls inside sessions.
 *
 * Exclusive sessions (the default) hold their daemon alone; shared ones ("exclusive": false) may
 * share a daemon with other shared sessions. Sessions with the same "key" go to the same daemon
 * (rendezvous hashing over the available endpoints: the same key finds the same daemon in every
 * process, and few keys move when endpoints come and go).
 *
 * A durable session ("durable": true) survives its daemon's crashes (the real daemon dies 300 s
 * after goxel.create_project): every call that changes the document (all but ping, version,
 * status, echo, list_methods, goxel.get_*, goxel.list_* and the configured idempotent_methods)
 * is journaled once the daemon answered it with a result; every checkpoint_every calls or
 * checkpoint_interval_ms (and right after goxel.create_project) the library checkpoints the
 * document (goxel.save_project into checkpoint_dir, alternating between two files) and folds the
 * journal. The daemon's identity is its process: connections learn its pid (`status`); when a
 * call, a new connection or a broken one shows a new pid, the session is restored before any
 * other call of it goes on: goxel.load_project of the last checkpoint, then the journal replayed
 * in order; calls that arrive meanwhile wait within their own deadlines. A call that was in
 * flight when the daemon died was never journaled, so after the restore it runs again: within a
 * durable session every call runs exactly once, and a caller sees at worst a slower call. A
 * restore that fails (checkpoint unreadable, a replayed call rejected, the daemon still down
 * after restore_timeout_ms) loses the session: its calls return GOXELPOOL_ELOST.
 * ------------------------------------------------------------------------------------------- */

typedef struct goxelpool_session goxelpool_session;

/* Opens a session: places it on a daemon (waiting, FIFO, while every suitable daemon is held),
 * learns the daemon's pid, and for a durable session writes its first checkpoint.
 *
 * client: the client (borrowed; the session keeps what it needs, so it may outlive
 *   goxelpool_client_free: its calls then return ECLOSED).
 * options: borrowed; a JSON object or NULL for all defaults. Keys (all optional; unknown keys,
 *   wrong types and out-of-range values are EINVAL with a message naming the key):
 *     "key": string               sessions with the same key go to the same daemon
 *     "exclusive": bool           true: no other session is placed on this daemon while it is open
 *     "durable": bool             false: journal + checkpoints, restored after a daemon restart
 *                                 (a durable session must be exclusive)
 *     "checkpoint_dir": string    absolute directory on the DAEMON's machine where it writes the
 *                                 checkpoints (goxel.save_project paths); required for a durable
 *                                 session, except with managed daemons (spawn), whose private
 *                                 directory is the default. Two files per session,
 *                                 goxelpool-<pid>-<id>-<n>-{0,1}.gox;
 *                                 removed at goxelpool_session_close when the daemon is on a Unix
 *                                 socket (same machine), left behind otherwise.
 *     "checkpoint_every": int     10000 journaled calls (1..10000000)
 *     "checkpoint_interval_ms": int  60000 (0: by count only): the oldest journaled call's age
 *     "max_journal_entries": int  100000: while checkpoints fail the journal grows up to this; past
 *                                 it, document-changing calls fail with EBUSY (never silently
 *                                 undurable)
 *     "restore_timeout_ms": int   30000: how long a restore waits for the daemon to come back
 * timeout_ms: deadline for the whole open, waiting for a free daemon included (< 0: the configured
 *   timeout_ms).
 * out: receives the session (NULL on failure). Must not be NULL.
 * Returns OK; EINVAL (NULL client or out, bad options, or the daemon cannot write checkpoint_dir:
 *   the message says why); ETIMEDOUT (no daemon became free, or it did not answer, in time);
 *   EBUSY (pool.max_waiters opens already waiting); ECLOSED; ECONNECT, EUNAVAILABLE, EIO, EPEER
 *   (the daemon could not be reached); EPROTO (a durable session on a daemon whose `status`
 *   reports no pid); ENOMEM.
 * Any thread. It blocks up to timeout_ms; from a callback of the client it blocks that callback. */
goxelpool_status goxelpool_session_open(goxelpool_client *client, const json_t *options,
                                        int timeout_ms, goxelpool_session **out);

/* Calls `method` on the session's daemon and waits for the answer. Arguments, ownership and
 * statuses are those of goxelpool_call, plus:
 *   ELOST: the session's document was lost (goxelpool_last_error says why; every later call of
 *     the session returns ELOST too); also a session that is not durable whose endpoint was
 *     removed;
 *   ECLOSED: the session or its client is closed;
 *   EBUSY: a durable session's journal is full (max_journal_entries) because checkpoints fail;
 *   ETIMEDOUT: also while waiting for a restore or a checkpoint of the session.
 * In a durable session a crash of the daemon is not an error: the call waits (within timeout_ms)
 * for the daemon to come back and the document to be restored, and runs on the restored document
 * exactly once. A call that timed out, or broke on a daemon that did NOT restart, may have run:
 * the library then checkpoints the daemon's document as it is, so the journal stays true to it.
 * Several threads may call one session at once; the daemon's own order applies to concurrent
 * calls (a restore replays them in the order their answers arrived: keep calls that must be
 * ordered on one thread). Any thread. */
goxelpool_status goxelpool_session_call(goxelpool_session *session, const char *method,
                                        const json_t *params, int timeout_ms,
                                        json_t **result, json_t **rpc_error);

/* A snapshot of the session (new reference; NULL if session is NULL or out of memory):
 * "id", "key" (or null), "endpoint", "daemon_pid", "state" ("active" | "restoring" | "lost" |
 * "closed"), "exclusive", "durable", "calls", "restores", "calls_replayed", "moves",
 * "journal_length", "checkpoints", "checkpoint_failures", "last_checkpoint_ms" (Unix ms or null),
 * "checkpoint_path" (the last good checkpoint, or null), "opened_ms", "last_error" (or null).
 * Any thread. */
json_t *goxelpool_session_info(goxelpool_session *session);

/* Closes the session and frees it: its daemon is free for the next session, and its checkpoint
 * files are removed when they can be (see checkpoint_dir). Calls of the session waiting for a
 * restore or checkpoint return ECLOSED. NULL is fine. The caller must make sure no other thread
 * uses the session during or after this call. May be called before or after goxelpool_client_free
 * of its client. Returns OK (also for NULL). */
goxelpool_status goxelpool_session_close(goxelpool_session *session);

/* ---------------------------------------------------------------------------------------------
 * Event loops (dispatch mode)
 *
 * A client created with "callbacks": "dispatch" runs no code of yours on library threads. The
 * callbacks of goxelpool_call_async and the listeners' events wait in a queue, and run only
 * inside goxelpool_dispatch, on the thread that calls it: your event loop watches one file
 * descriptor and calls one function, as with libpq's PQsocket/PQconsumeInput or libcurl's
 * multi_socket_action:
 *
 *     int fd = goxelpool_event_fd(client);          // watch for readability, level-triggered
 *     ... when fd is readable: goxelpool_dispatch(client, 0, NULL);
 *
 * The queue: async completions are never dropped (each callback runs exactly once); events keep
 * the bound of event_queue_size, dropping the oldest (counted in "events_dropped"). Items run in
 * the order they were queued. The statistics report "dispatch_queue_depth" and
 * "dispatch_queue_peak". The library's own threads (connections, health checks, async calls
 * waiting for their answer) are the same as in thread mode, less the event thread.
 *
 * Closing: goxelpool_client_close completes every async call (cut-off ones with ECLOSED) into the
 * queue; keep dispatching to run them. goxelpool_client_free runs whatever is still queued before
 * it frees (see goxelpool_client_free). In a callback, every goxelpool_* function may be called,
 * goxelpool_client_close included (it blocks your thread for the drain); goxelpool_client_free is
 * deferred until the callback returns; goxelpool_dispatch is refused (EINVAL: no nesting).
 * ------------------------------------------------------------------------------------------- */

/* The client's event fd: an eventfd that is readable while something is queued for
 * goxelpool_dispatch, and not readable once a goxelpool_dispatch has left the queue empty (during
 * a goxelpool_dispatch it may stay readable). Level-triggered: watch it with poll, select, epoll
 * without EPOLLET, or a uv_poll_t. Owned by the client: do not read, write or close it; it is
 * valid until goxelpool_client_free (also after close). Any thread may call this.
 * Returns the fd (>= 0), or -1 when client is NULL or in thread mode ("callbacks": "thread"), with
 * the reason in goxelpool_last_error(). */
int goxelpool_event_fd(goxelpool_client *client);

/* Runs queued async callbacks and listener events on the calling thread, in order, never under
 * an internal lock, and returns when done (it never waits for something to be queued).
 * max_items: at most this many items (an async completion, or an event with all the listeners
 *   that want it); <= 0: every item queued when the call starts (items queued while it runs wait
 *   for the next call, so a callback that starts a call cannot keep it running forever).
 * ran: may be NULL; else receives the number of items run (0 on failure).
 * Threads: any thread, one at a time per client: typically your event loop's. A call while another
 * thread is in goxelpool_dispatch for the same client returns EBUSY at once, running nothing;
 * a call from a callback it is running returns EINVAL. Also after goxelpool_client_close.
 * Returns OK (also when nothing was queued), EINVAL (client NULL, a client in thread mode, or
 * called from one of its own callbacks), EBUSY (another thread is dispatching this client). */
goxelpool_status goxelpool_dispatch(goxelpool_client *client, int max_items, int *ran);

/* ---------------------------------------------------------------------------------------------
 * Prometheus metrics
 *
 * The statistics and health of goxelpool_stats / goxelpool_health in the Prometheus text
 * exposition format 0.0.4, for a service that embeds the library and is scraped by Prometheus
 * (serve the text with Content-Type "text/plain; version=0.0.4; charset=utf-8"). Names start with
 * "goxelpool_"; counters end in "_total"; durations are in seconds. Every figure the statistics
 * have per endpoint carries a label endpoint="unix:/path" or "tcp:host:port" (and never a client
 * total beside it: sum() over endpoints gives the total); failures carry status="ETIMEDOUT" ...,
 * closed connections reason="idle" ..., alerts type="...", states state="...". Request latency
 * and the wait for a connection are histograms (le buckets from 100 us to 10 s, _sum, _count).
 * The families and their meaning: README "Prometheus metrics".
 * ------------------------------------------------------------------------------------------- */

/* Writes the client's metrics as text.
 * out: must not be NULL; on OK receives a NUL-terminated UTF-8 string allocated by the library,
 *   which the caller owns and releases with goxelpool_free (set to NULL on failure).
 * May be called from any thread, at any time, as often as wanted (a scrape takes a snapshot, as
 * goxelpool_stats does), also from a listener or callback of the client and after close.
 * Returns OK, EINVAL (client or out NULL), ENOMEM. */
goxelpool_status goxelpool_metrics_text(goxelpool_client *client, char **out);

/* Releases memory the library allocated for the caller (the text of goxelpool_metrics_text).
 * NULL is fine. Any thread. Never use free() on it: the library may allocate differently. */
void goxelpool_free(void *p);

/* ---------------------------------------------------------------------------------------------
 * Managed daemons (the "spawn" configuration; no functions of their own)
 *
 * With "spawn": {"command": ["goxel-daemon", "--foreground", "--socket", "{socket}"], ...} the
 * client starts `instances` daemons itself, each on a socket of its own in a private directory
 * (mkdtemp under $TMPDIR or /tmp, mode 0700), and makes each one an endpoint once it answers
 * `ping` (health.method). A call made before any daemon answers waits within its deadline; when
 * the last start of every daemon failed, calls fail at once with ECONNECT and a message naming
 * the command, its exit status or signal, and its last lines of output (goxelpool_last_error).
 * A start that fails (command not found, exit before answering, no answer within
 * start_timeout_ms) is retried after the reconnect backoff. A daemon that exits is restarted at
 * once; when daemons keep dying soon after their start, restarts wait for the backoff.
 * Recycling: before a daemon has had max_connections_per_process connections in its life (the
 * real daemon accepts 256), or when it reaches max_age_ms, its replacement is started; new calls
 * go to the replacement once it answers; the old daemon drains (its calls in flight finish, up to
 * drain_timeout_ms), then gets SIGTERM and, after stop_grace_ms, SIGKILL. The library never opens
 * more than max_connections_per_process connections to one daemon: calls wait rather than fail.
 * Sessions are placed by slot (a key keeps its slot when the slot's daemon is replaced). A
 * durable session moves with its daemon: at a recycle it is checkpointed on the old daemon and
 * restored on the replacement before the old one drains; after a crash it waits for the
 * successor (restore_timeout_ms) and is restored there from its last checkpoint and journal. Its
 * checkpoints default to the private directory. A session that is not durable ends when its
 * daemon goes (its document goes with it).
 * Events of kind "daemon" and alerts daemon_start_failed, daemon_crashed, daemon_crash_loop tell
 * what happens; goxelpool_stats and goxelpool_health list the daemons (pid, state, start time,
 * restarts, lifetime connections).
 *
 * What the library then owns, besides the threads of every client: one supervisor thread (it
 * starts every daemon, so it lives until close), up to 4 threads for readiness probes and up to
 * 8 for removing endpoints (their drain); per daemon two processes: the daemon, and its reaper, a
 * small process sharing the host's memory that waits for the daemon and reports how it ended.
 * Toward the host program:
 *   - no signal handler is installed; the host gets no SIGCHLD for the library's processes, and
 *     its wait(), waitpid(-1, ...) or a SIGCHLD set to SIG_IGN never see or reap them (only a
 *     wait with __WALL or __WCLONE would); the library waits only for its own reapers;
 *   - no descriptor of the host leaks into a daemon, close-on-exec or not (all but 0, 1, 2 are
 *     closed; stdin is /dev/null; stdout and stderr go to log events, kind "log", level "info",
 *     at most 20 lines a second after a burst of 50, or to /dev/null with "output": "null");
 *   - every signal handler is reset to the default in the daemon, which runs in a process group
 *     of its own (a Ctrl-C to the host's terminal does not reach it);
 *   - when the host dies (even by SIGKILL) its daemons die too (PR_SET_PDEATHSIG); their private
 *     directory is then left in /tmp, as any crash leaves its files.
 * Under valgrind (which cannot run the reaper's kind of clone) the reaper is a thread instead,
 * and the daemons are direct children of the host: a host's waitpid(-1) could then take their
 * exit status (the exit is reported with an unknown status, and handled all the same).
 * ------------------------------------------------------------------------------------------- */

#ifdef __cplusplus
}
#endif

#endif /* GOXELPOOL_H */
