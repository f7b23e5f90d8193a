//! goxelpool-smoke SOCKET: libgoxelpool from Rust against a running daemon (goxel-refd).
//!
//! Calls `version` and `echo`, checks an RPC error, a batch, an async call (callback on a library
//! thread), statistics, close and use after close. Prints "PASS rust:NAME" / "FAIL rust:NAME: why"
//! per check and exits 1 if any failed.

use std::os::raw::c_void;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread::ThreadId;

use goxelpool::{ffi, status_name, version, Client, Json};

/// What the async callback sends back: status, result as text, the thread it ran on.
type Done = mpsc::Sender<(ffi::goxelpool_status, Option<String>, ThreadId)>;

struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, why: impl FnOnce() -> String) -> bool {
        if ok {
            println!("PASS rust:{name}");
        } else {
            println!("FAIL rust:{name}: {}", why());
            self.failed.push(name.to_string());
        }
        ok
    }
}

/// The async call's callback: runs once on a library thread. `result` is borrowed, so it is
/// copied (a new reference) before the callback returns.
unsafe extern "C" fn on_done(
    status: ffi::goxelpool_status,
    result: *const ffi::json_t,
    _rpc_error: *const ffi::json_t,
    userdata: *mut c_void,
) {
    let sender = Box::from_raw(userdata as *mut Done);
    let text = Json::from_borrowed(result).map(|j| j.to_json_string());
    let _ = sender.send((status, text, std::thread::current().id()));
}

fn main() -> ExitCode {
    let socket = std::env::args().nth(1).unwrap_or_else(|| "/tmp/goxel-daemon.sock".to_string());
    let mut c = Checks { failed: Vec::new() };
    let v = version();
    c.check("version", !v.is_empty() && v.split('.').count() == 3, || format!("goxelpool_version() = {v:?}"));

    let bad = Json::parse(&format!(r#"{{"socket_path": {socket:?}, "pool": {{"max_connections": "ten"}}}}"#)).unwrap();
    match Client::new(&bad) {
        Ok(_) => c.check("config-rejected", false, || "accepted".into()),
        Err(e) => c.check("config-rejected", e.status == ffi::GOXELPOOL_EINVAL && e.message.contains("pool.max_connections"),
                          || e.to_string()),
    };

    let config = Json::parse(&format!(
        r#"{{"socket_path": {socket:?}, "timeout_ms": 5000, "pool": {{"min_connections": 1, "max_connections": 2}}}}"#
    ))
    .unwrap();
    let client = match Client::new(&config) {
        Ok(client) => client,
        Err(e) => {
            c.check("client-new", false, || e.to_string());
            return ExitCode::FAILURE;
        }
    };
    drop(config); // borrowed by goxelpool_client_new: ours to release at once
    c.check("client-new", true, String::new);

    match client.call("version", None, -1) {
        Ok(r) => {
            let text = r.to_json_string();
            c.check("call-version", text.contains("\"version\""), || text.clone())
        }
        Err(e) => c.check("call-version", false, || e.to_string()),
    };

    let payload = r#"[1,"two",{"three":3.5,"four":[null,true]}]"#;
    let params = Json::parse(payload).unwrap();
    match client.call("echo", Some(&params), -1) {
        Ok(r) => {
            let text = r.to_json_string();
            c.check("call-echo", text == payload && r.refcount() == 1, || format!("{text} (refcount {})", r.refcount()))
        }
        Err(e) => c.check("call-echo", false, || e.to_string()),
    };
    c.check("params-still-ours", params.refcount() == 1, || format!("refcount {}", params.refcount()));

    match client.call("no.such_method", Some(&Json::parse("{}").unwrap()), -1) {
        Ok(r) => c.check("call-erpc", false, || format!("succeeded: {r:?}")),
        Err(e) => {
            let err = e.rpc_error.as_ref().map(Json::to_json_string).unwrap_or_default();
            c.check("call-erpc", e.status == ffi::GOXELPOOL_ERPC && err.contains("-32601") && !e.message.is_empty(),
                    || format!("{e}; rpc_error {err}"))
        }
    };

    let requests = Json::parse(r#"[{"method":"echo","params":[7]},{"method":"no.such_method"},{"method":"ping"}]"#).unwrap();
    match client.batch(&requests, -1) {
        Ok(r) => {
            let text = r.to_json_string();
            c.check("batch", text.starts_with(r#"[{"status":"OK","result":[7]},{"status":"ERPC""#) && text.contains("pong"),
                    || text.clone())
        }
        Err(e) => c.check("batch", false, || e.to_string()),
    };

    let (tx, rx) = mpsc::channel();
    let tx: Done = tx;
    let userdata = Box::into_raw(Box::new(tx)) as *mut c_void;
    let method = std::ffi::CString::new("echo").unwrap();
    let status = unsafe {
        ffi::goxelpool_call_async(client.as_ptr(), method.as_ptr(), params.as_ptr(), -1, Some(on_done), userdata)
    };
    if status != ffi::GOXELPOOL_OK {
        // On any status but OK the callback never runs: the userdata is still ours.
        drop(unsafe { Box::from_raw(userdata as *mut Done) });
        c.check("call-async", false, || status_name(status));
    } else {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok((st, text, thread)) => c.check(
                "call-async",
                st == ffi::GOXELPOOL_OK && text.as_deref() == Some(payload) && thread != std::thread::current().id(),
                || format!("{} {text:?}", status_name(st)),
            ),
            Err(e) => c.check("call-async", false, || format!("no callback: {e}")),
        };
    }

    match client.stats() {
        Some(s) => {
            let text = s.to_json_string();
            c.check("stats", text.contains("\"total_requests_served\""), || text.clone())
        }
        None => c.check("stats", false, || "NULL".into()),
    };

    let closed = client.close(-1).and_then(|_| client.close(-1));
    c.check("close", closed.is_ok(), || format!("{closed:?}"));
    match client.call("ping", None, -1) {
        Ok(_) => c.check("call-after-close", false, || "succeeded".into()),
        Err(e) => c.check("call-after-close", e.status == ffi::GOXELPOOL_ECLOSED, || e.to_string()),
    };
    drop(client); // goxelpool_client_free

    if c.failed.is_empty() {
        println!("rust: all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("rust: {} failed: {}", c.failed.len(), c.failed.join(" "));
        ExitCode::FAILURE
    }
}
