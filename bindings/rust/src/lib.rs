//! libgoxelpool from Rust: the C API as `extern "C"` declarations ([`ffi`]), jansson's few
//! functions that are needed, and a thin owned layer ([`Json`], [`Client`], [`Error`]) over them.
//! No crates: `build.rs` asks pkg-config for the link flags.
//!
//! ```no_run
//! use goxelpool::{Client, Json};
//! let config = Json::parse(r#"{"socket_path": "/tmp/goxel-daemon.sock"}"#).unwrap();
//! let client = Client::new(&config).unwrap();
//! let version = client.call("version", None, -1).unwrap();
//! println!("{}", version.to_json_string());
//! ```
//!
//! Ownership follows the header's words: a `&Json` passed in is borrowed by the library; a
//! returned "new reference" becomes a [`Json`] that releases it on drop.
//!
//! `json_incref`/`json_decref` are `static inline` in jansson.h, so there is no symbol to link:
//! [`ffi::json_incref`] and [`ffi::json_decref`] re-implement them on the `refcount` field with the
//! same atomic operations jansson uses (it is built with `JSON_HAVE_ATOMIC_BUILTINS`), and call
//! the exported `json_delete` when the count reaches zero.

#![allow(non_camel_case_types)]

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int};
use std::ptr;

/// The raw C API (`goxelpool.h`) and the parts of jansson it needs.
pub mod ffi {
    use std::os::raw::{c_char, c_int, c_uint, c_void};
    use std::sync::atomic::{fence, AtomicUsize, Ordering};

    /// jansson's `json_t`: `{ json_type type; volatile size_t refcount; }`.
    #[repr(C)]
    pub struct json_t {
        pub type_: c_int,
        pub refcount: AtomicUsize,
    }

    /// jansson's `json_error_t` (only passed through).
    #[repr(C)]
    pub struct json_error_t {
        pub line: c_int,
        pub column: c_int,
        pub position: c_int,
        pub source: [c_char; 80],
        pub text: [c_char; 160],
    }

    pub const JSON_DECODE_ANY: usize = 0x4;
    pub const JSON_COMPACT: usize = 0x20;
    pub const JSON_ENCODE_ANY: usize = 0x200;

    /// `goxelpool_status`: a C enum, an `int` here (a Rust enum would be undefined behaviour
    /// for values appended to the C enum later).
    pub type goxelpool_status = c_int;
    pub const GOXELPOOL_OK: goxelpool_status = 0;
    pub const GOXELPOOL_EINVAL: goxelpool_status = 1;
    pub const GOXELPOOL_ETIMEDOUT: goxelpool_status = 2;
    pub const GOXELPOOL_ECLOSED: goxelpool_status = 3;
    pub const GOXELPOOL_ECONNECT: goxelpool_status = 4;
    pub const GOXELPOOL_EIO: goxelpool_status = 5;
    pub const GOXELPOOL_EPROTO: goxelpool_status = 6;
    pub const GOXELPOOL_ERPC: goxelpool_status = 7;
    pub const GOXELPOOL_EBUSY: goxelpool_status = 8;
    pub const GOXELPOOL_EUNAVAILABLE: goxelpool_status = 9;
    pub const GOXELPOOL_ETOOBIG: goxelpool_status = 10;
    pub const GOXELPOOL_EPEER: goxelpool_status = 11;
    pub const GOXELPOOL_ENOMEM: goxelpool_status = 12;
    pub const GOXELPOOL_ELOST: goxelpool_status = 13;

    pub const GOXELPOOL_EVENT_ALERT: c_uint = 1 << 0;
    pub const GOXELPOOL_EVENT_HEALTH: c_uint = 1 << 1;
    pub const GOXELPOOL_EVENT_CONNECTION: c_uint = 1 << 2;
    pub const GOXELPOOL_EVENT_POOL: c_uint = 1 << 3;
    pub const GOXELPOOL_EVENT_REQUEST: c_uint = 1 << 4;
    pub const GOXELPOOL_EVENT_LOG: c_uint = 1 << 5;
    pub const GOXELPOOL_EVENT_SESSION: c_uint = 1 << 6;
    pub const GOXELPOOL_EVENT_DAEMON: c_uint = 1 << 7;
    pub const GOXELPOOL_EVENT_ALL: c_uint = 0xff;

    /// Opaque `goxelpool_client`.
    #[repr(C)]
    pub struct goxelpool_client {
        _private: [u8; 0],
    }

    pub type goxelpool_call_cb = Option<
        unsafe extern "C" fn(
            status: goxelpool_status,
            result: *const json_t,
            rpc_error: *const json_t,
            userdata: *mut c_void,
        ),
    >;
    pub type goxelpool_event_cb = Option<unsafe extern "C" fn(event: *const json_t, userdata: *mut c_void)>;

    // Linked by build.rs (pkg-config: -lgoxelpool -ljansson).
    extern "C" {
        pub fn goxelpool_version() -> *const c_char;
        pub fn goxelpool_strerror(status: goxelpool_status) -> *const c_char;
        pub fn goxelpool_status_name(status: goxelpool_status) -> *const c_char;
        pub fn goxelpool_last_error() -> *const c_char;

        pub fn goxelpool_client_new(
            config: *const json_t,
            out: *mut *mut goxelpool_client,
            errbuf: *mut c_char,
            errbuf_len: usize,
        ) -> goxelpool_status;
        pub fn goxelpool_client_close(client: *mut goxelpool_client, drain_timeout_ms: c_int) -> goxelpool_status;
        pub fn goxelpool_client_free(client: *mut goxelpool_client);

        pub fn goxelpool_call(
            client: *mut goxelpool_client,
            method: *const c_char,
            params: *const json_t,
            timeout_ms: c_int,
            result: *mut *mut json_t,
            rpc_error: *mut *mut json_t,
        ) -> goxelpool_status;
        pub fn goxelpool_call_async(
            client: *mut goxelpool_client,
            method: *const c_char,
            params: *const json_t,
            timeout_ms: c_int,
            cb: goxelpool_call_cb,
            userdata: *mut c_void,
        ) -> goxelpool_status;
        pub fn goxelpool_notify(
            client: *mut goxelpool_client,
            method: *const c_char,
            params: *const json_t,
        ) -> goxelpool_status;
        pub fn goxelpool_call_batch(
            client: *mut goxelpool_client,
            requests: *const json_t,
            timeout_ms: c_int,
            results: *mut *mut json_t,
        ) -> goxelpool_status;

        pub fn goxelpool_stats(client: *mut goxelpool_client) -> *mut json_t;
        pub fn goxelpool_health(client: *mut goxelpool_client) -> *mut json_t;
        pub fn goxelpool_add_listener(
            client: *mut goxelpool_client,
            kinds: c_uint,
            cb: goxelpool_event_cb,
            userdata: *mut c_void,
            listener_id: *mut c_int,
        ) -> goxelpool_status;
        pub fn goxelpool_remove_listener(client: *mut goxelpool_client, listener_id: c_int) -> goxelpool_status;
        pub fn goxelpool_event_fd(client: *mut goxelpool_client) -> c_int;
        pub fn goxelpool_dispatch(client: *mut goxelpool_client, max_items: c_int, ran: *mut c_int) -> goxelpool_status;

        // jansson (exported functions only).
        pub fn json_loads(input: *const c_char, flags: usize, error: *mut json_error_t) -> *mut json_t;
        pub fn json_dumps(json: *const json_t, flags: usize) -> *mut c_char;
        pub fn json_dumpb(json: *const json_t, buffer: *mut c_char, size: usize, flags: usize) -> usize;
        pub fn json_delete(json: *mut json_t);
    }

    /// jansson's inline `json_incref`: `__atomic_add_fetch(&refcount, 1, __ATOMIC_ACQUIRE)`,
    /// except for immortal values (refcount `(size_t)-1`).
    ///
    /// # Safety
    /// `json` is NULL or a live jansson value.
    pub unsafe fn json_incref(json: *mut json_t) -> *mut json_t {
        if !json.is_null() && (*json).refcount.load(Ordering::Relaxed) != usize::MAX {
            (*json).refcount.fetch_add(1, Ordering::Acquire);
        }
        json
    }

    /// jansson's inline `json_decref`: `__atomic_sub_fetch(&refcount, 1, __ATOMIC_RELEASE)`, and
    /// `json_delete` at zero (after an acquire fence, as `Arc` does, so that the deleting thread
    /// sees every other owner's writes), except for immortal values.
    ///
    /// # Safety
    /// `json` is NULL or a value the caller owns a reference to, which it gives up.
    pub unsafe fn json_decref(json: *mut json_t) {
        if json.is_null() || (*json).refcount.load(Ordering::Relaxed) == usize::MAX {
            return;
        }
        if (*json).refcount.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            json_delete(json);
        }
    }
}

fn static_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `goxelpool_version()`, e.g. "1.4.3".
pub fn version() -> String {
    static_str(unsafe { ffi::goxelpool_version() })
}

/// `goxelpool_status_name(status)`: "OK", "EINVAL", ... ("UNKNOWN" for other values).
pub fn status_name(status: ffi::goxelpool_status) -> String {
    static_str(unsafe { ffi::goxelpool_status_name(status) })
}

/// `goxelpool_strerror(status)`.
pub fn strerror(status: ffi::goxelpool_status) -> String {
    static_str(unsafe { ffi::goxelpool_strerror(status) })
}

/// `goxelpool_last_error()` of the calling thread.
pub fn last_error() -> String {
    static_str(unsafe { ffi::goxelpool_last_error() })
}

/// One owned reference to a jansson value, released on drop.
pub struct Json(ptr::NonNull<ffi::json_t>);

// jansson values may move between threads; their reference count is atomic.
unsafe impl Send for Json {}

impl Json {
    /// Parses JSON text (any value, not only arrays and objects).
    pub fn parse(text: &str) -> Result<Json, String> {
        let c = CString::new(text).map_err(|_| "JSON text contains NUL".to_string())?;
        let mut error = std::mem::MaybeUninit::<ffi::json_error_t>::zeroed();
        let p = unsafe { ffi::json_loads(c.as_ptr(), ffi::JSON_DECODE_ANY, error.as_mut_ptr()) };
        match ptr::NonNull::new(p) {
            Some(p) => Ok(Json(p)),
            None => {
                let error = unsafe { error.assume_init() };
                Err(static_str(error.text.as_ptr()))
            }
        }
    }

    /// Takes over a new reference (NULL gives None).
    ///
    /// # Safety
    /// `p` is NULL or a reference the caller owns.
    pub unsafe fn from_new_reference(p: *mut ffi::json_t) -> Option<Json> {
        ptr::NonNull::new(p).map(Json)
    }

    /// A new reference to a borrowed value (e.g. an event inside a listener).
    ///
    /// # Safety
    /// `p` is NULL or a live jansson value.
    pub unsafe fn from_borrowed(p: *const ffi::json_t) -> Option<Json> {
        ptr::NonNull::new(ffi::json_incref(p as *mut ffi::json_t)).map(Json)
    }

    /// The value, for a function that borrows it.
    pub fn as_ptr(&self) -> *const ffi::json_t {
        self.0.as_ptr()
    }

    /// Compact JSON text.
    pub fn to_json_string(&self) -> String {
        let flags = ffi::JSON_COMPACT | ffi::JSON_ENCODE_ANY;
        unsafe {
            let size = ffi::json_dumpb(self.as_ptr(), ptr::null_mut(), 0, flags);
            let mut buf = vec![0u8; size];
            let written = ffi::json_dumpb(self.as_ptr(), buf.as_mut_ptr() as *mut c_char, size, flags);
            buf.truncate(written.min(size));
            String::from_utf8_lossy(&buf).into_owned()
        }
    }

    /// The current reference count (for tests and debugging).
    pub fn refcount(&self) -> usize {
        unsafe { (*self.as_ptr()).refcount.load(std::sync::atomic::Ordering::Relaxed) }
    }
}

impl Clone for Json {
    fn clone(&self) -> Json {
        unsafe { Json::from_borrowed(self.as_ptr()) }.expect("non-null")
    }
}

impl Drop for Json {
    fn drop(&mut self) {
        unsafe { ffi::json_decref(self.0.as_ptr()) }
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

/// A failed call: the status, the library's message (`goxelpool_last_error`), and for `ERPC` the
/// daemon's error object.
#[derive(Debug)]
pub struct Error {
    pub status: ffi::goxelpool_status,
    pub message: String,
    pub rpc_error: Option<Json>,
}

impl Error {
    fn from_status(status: ffi::goxelpool_status, message: String) -> Error {
        let message = if message.is_empty() { strerror(status) } else { message };
        Error { status, message, rpc_error: None }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", status_name(self.status), self.message)
    }
}

impl std::error::Error for Error {}

/// A `goxelpool_client`, freed (closed first if needed) on drop. Usable from several threads.
pub struct Client(*mut ffi::goxelpool_client);

// The header: every function may be called from any thread at the same time.
unsafe impl Send for Client {}
unsafe impl Sync for Client {}

fn cstring(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::from_status(ffi::GOXELPOOL_EINVAL, "string contains NUL".into()))
}

impl Client {
    /// `goxelpool_client_new`; `config` is borrowed. EINVAL's message names the bad key.
    pub fn new(config: &Json) -> Result<Client, Error> {
        let mut out: *mut ffi::goxelpool_client = ptr::null_mut();
        let mut errbuf = [0 as c_char; 512];
        let status = unsafe { ffi::goxelpool_client_new(config.as_ptr(), &mut out, errbuf.as_mut_ptr(), errbuf.len()) };
        if status != ffi::GOXELPOOL_OK || out.is_null() {
            return Err(Error::from_status(status, static_str(errbuf.as_ptr())));
        }
        Ok(Client(out))
    }

    /// The raw pointer, for the functions of [`ffi`] not wrapped here.
    pub fn as_ptr(&self) -> *mut ffi::goxelpool_client {
        self.0
    }

    /// `goxelpool_call`: the result (a new reference), or the error (ERPC carries the daemon's
    /// error object). `timeout_ms` < 0: the configured timeout.
    pub fn call(&self, method: &str, params: Option<&Json>, timeout_ms: c_int) -> Result<Json, Error> {
        let method = cstring(method)?;
        let mut result: *mut ffi::json_t = ptr::null_mut();
        let mut rpc_error: *mut ffi::json_t = ptr::null_mut();
        let params = params.map_or(ptr::null(), Json::as_ptr);
        let status = unsafe { ffi::goxelpool_call(self.0, method.as_ptr(), params, timeout_ms, &mut result, &mut rpc_error) };
        let message = if status == ffi::GOXELPOOL_OK { String::new() } else { last_error() };
        let result = unsafe { Json::from_new_reference(result) };
        let rpc_error = unsafe { Json::from_new_reference(rpc_error) };
        if status == ffi::GOXELPOOL_OK {
            // A JSON null result is a non-NULL json_t; NULL only for notifications.
            return result.ok_or_else(|| Error::from_status(ffi::GOXELPOOL_EPROTO, "no result".into()));
        }
        let mut error = Error::from_status(status, message);
        error.rpc_error = rpc_error;
        Err(error)
    }

    /// `goxelpool_notify`.
    pub fn notify(&self, method: &str, params: Option<&Json>) -> Result<(), Error> {
        let method = cstring(method)?;
        let params = params.map_or(ptr::null(), Json::as_ptr);
        let status = unsafe { ffi::goxelpool_notify(self.0, method.as_ptr(), params) };
        if status == ffi::GOXELPOOL_OK { Ok(()) } else { Err(Error::from_status(status, last_error())) }
    }

    /// `goxelpool_call_batch`: one outcome object per request (look at each one's "status").
    pub fn batch(&self, requests: &Json, timeout_ms: c_int) -> Result<Json, Error> {
        let mut results: *mut ffi::json_t = ptr::null_mut();
        let status = unsafe { ffi::goxelpool_call_batch(self.0, requests.as_ptr(), timeout_ms, &mut results) };
        if status != ffi::GOXELPOOL_OK {
            return Err(Error::from_status(status, last_error()));
        }
        unsafe { Json::from_new_reference(results) }.ok_or_else(|| Error::from_status(ffi::GOXELPOOL_ENOMEM, String::new()))
    }

    /// `goxelpool_stats` (also valid after close).
    pub fn stats(&self) -> Option<Json> {
        unsafe { Json::from_new_reference(ffi::goxelpool_stats(self.0)) }
    }

    /// `goxelpool_health`.
    pub fn health(&self) -> Option<Json> {
        unsafe { Json::from_new_reference(ffi::goxelpool_health(self.0)) }
    }

    /// `goxelpool_client_close`: later calls fail with ECLOSED; idempotent.
    pub fn close(&self, drain_timeout_ms: c_int) -> Result<(), Error> {
        let status = unsafe { ffi::goxelpool_client_close(self.0, drain_timeout_ms) };
        if status == ffi::GOXELPOOL_OK { Ok(()) } else { Err(Error::from_status(status, last_error())) }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        unsafe { ffi::goxelpool_client_free(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_status_names() {
        let v = version();
        assert_eq!(v.split('.').count(), 3, "{v}");
        assert!(v.split('.').all(|p| p.parse::<u32>().is_ok()), "{v}");
        assert_eq!(status_name(ffi::GOXELPOOL_OK), "OK");
        assert_eq!(status_name(ffi::GOXELPOOL_ERPC), "ERPC");
        assert_eq!(status_name(ffi::GOXELPOOL_ENOMEM), "ENOMEM");
        assert_eq!(status_name(999), "UNKNOWN");
        assert!(!strerror(999).is_empty());
    }

    #[test]
    fn json_round_trip_and_refcount() {
        let j = Json::parse(r#"{"a":[1,2.5,"x",null,true]}"#).unwrap();
        assert_eq!(j.to_json_string(), r#"{"a":[1,2.5,"x",null,true]}"#);
        assert_eq!(j.refcount(), 1);
        let k = j.clone();
        assert_eq!(j.refcount(), 2);
        drop(k);
        assert_eq!(j.refcount(), 1);
        assert!(Json::parse("{nope").is_err());
        assert_eq!(Json::parse("null").unwrap().to_json_string(), "null");
    }

    #[test]
    fn bad_config_is_einval_naming_the_key() {
        let config = Json::parse(r#"{"socket_path": "/nonexistent.sock", "no_such_key": 1}"#).unwrap();
        let error = Client::new(&config).err().expect("config must be rejected");
        assert_eq!(error.status, ffi::GOXELPOOL_EINVAL);
        assert!(error.message.contains("no_such_key"), "{}", error.message);
    }

    #[test]
    fn closed_client_says_eclosed() {
        let config = Json::parse(r#"{"socket_path": "/nonexistent.sock", "pool": {"min_connections": 0}}"#).unwrap();
        let client = Client::new(&config).unwrap();
        client.close(0).unwrap();
        client.close(0).unwrap();
        let error = client.call("ping", None, 100).unwrap_err();
        assert_eq!(error.status, ffi::GOXELPOOL_ECLOSED, "{error}");
        assert!(client.stats().is_some());
    }
}
