//! The proxy-wasm host calls flowgate makes (ABI 0.2.1), declared here rather than taken
//! from the SDK's `hostcalls`, which panic on any status they do not expect (a panic traps
//! the VM): a directory answer over Envoy's `http.async_response_buffer_limit` ends without
//! response headers, and reading `:status` then fails. Here every failure is a value;
//! statuses are read as plain integers.

use std::ptr::{null, null_mut};

use crate::wire;

const OK: u32 = 0;

/// The header maps flowgate reads or writes.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    CallResponseHeaders = 6,
}

/// The buffers flowgate reads or writes.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    CallResponseBody = 4,
    PluginConfiguration = 7,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: Map, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: Map,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: Map,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: Map, key: *const u8, key_size: usize) -> u32;
    fn proxy_set_header_map_pairs(map: Map, data: *const u8, size: usize) -> u32;
    fn proxy_set_buffer_bytes(buffer: Buffer, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: Buffer,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_define_metric(kind: MetricKind, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

/// Takes ownership of a buffer the host returned: on success it allocated it with this
/// module's `proxy_on_memory_allocate`, so it is ours to own as a Vec of that size.
fn returned(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    match status {
        OK if data.is_null() => Some(Vec::new()),
        // SAFETY: see above; the host hands over `size` bytes at `data`.
        OK => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}

/// The serialized header map (decode with `wire::decode_header_map`); `None` on failure.
pub fn header_map(map: Map) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes a pointer and a length into the two out-parameters.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    returned(status, data, size)
}

/// One header's value; `None` when absent or unreadable.
pub fn header(map: Map, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in `header_map`; `name` outlives the call.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    returned(status, data, size)
}

/// Sets (`Some`) or removes (`None`) a header; a failure is logged, never a trap.
pub fn set_header(map: Map, name: &str, value: Option<&str>) {
    // SAFETY: the host reads `name` and `value` during the call only.
    let status = unsafe {
        match value {
            Some(value) => proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()),
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        }
    };
    if status != OK {
        log::warn!("flowgate: could not set header {name}: status {status}");
    }
}

/// Replaces a whole header map (`:status` included) in one call.
pub fn set_header_map(map: Map, headers: &[(&str, &str)]) -> bool {
    let pairs = wire::encode_header_map(headers);
    // SAFETY: the host reads `pairs` during the call only.
    unsafe { proxy_set_header_map_pairs(map, pairs.as_ptr(), pairs.len()) == OK }
}

/// Replaces the first `size` bytes of a buffer (all Envoy holds of it) with `value`.
pub fn set_buffer(kind: Buffer, size: usize, value: &[u8]) -> bool {
    // SAFETY: the host copies `value` during the call.
    unsafe { proxy_set_buffer_bytes(kind, 0, size, value.as_ptr(), value.len()) == OK }
}

/// Starts an HTTP call to `cluster`; its token, or `None` when Envoy refused it.
pub fn http_call(cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Option<u32> {
    let headers = wire::encode_header_map(headers);
    let mut token = 0;
    // SAFETY: the host copies every buffer during the call and writes one integer.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            null(),
            0,
            null(),
            0,
            u32::try_from(timeout_ms).unwrap_or(u32::MAX),
            &mut token,
        )
    };
    (status == OK).then_some(token)
}

/// The first `size` bytes of a buffer; empty when there are none or on failure.
pub fn buffer(kind: Buffer, size: usize) -> Vec<u8> {
    buffer_at(kind, 0, size)
}

/// Bytes `start..start + size` of a buffer (fewer where it ends; empty if unavailable).
pub fn buffer_at(kind: Buffer, start: usize, size: usize) -> Vec<u8> {
    let (mut data, mut size_out) = (null_mut(), 0);
    // SAFETY: as in `header_map`.
    let status = unsafe { proxy_get_buffer_bytes(kind, start, size, &mut data, &mut size_out) };
    returned(status, data, size_out).unwrap_or_default()
}

/// A property of the stream (`["response", "code_details"]`); empty when unknown.
pub fn property(path: &[&str]) -> Vec<u8> {
    let path = path.join("\0");
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in `header_map`; `path` outlives the call.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    returned(status, data, size).unwrap_or_default()
}

/// Answers the sender with a local reply.
pub fn send_reply(status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let headers = wire::encode_header_map(headers);
    // SAFETY: the host copies every buffer during the call.
    let result = unsafe {
        proxy_send_local_response(
            u32::from(status),
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    if result != OK {
        log::warn!("flowgate: could not send reply: status {result}");
    }
}

/// A shared-data entry and its CAS number (`None`, 0: absent or unreadable).
pub fn shared_data(key: &str) -> (Option<Vec<u8>>, u32) {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    // SAFETY: as in `header_map`.
    unsafe {
        let status = proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas);
        (returned(status, data, size), cas)
    }
}

/// Compare-and-swap (`cas` 0: unconditional); false on a CAS mismatch or any failure.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> bool {
    // SAFETY: both slices are valid for the call.
    unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) == OK }
}

pub fn set_tick_period_ms(ms: u64) {
    // SAFETY: no pointers.
    let status = unsafe { proxy_set_tick_period_milliseconds(u32::try_from(ms).unwrap_or(u32::MAX)) };
    if status != OK {
        log::warn!("flowgate: could not set the tick period: status {status}");
    }
}

/// Milliseconds since the epoch (0 if the host does not say).
pub fn now_ms() -> u64 {
    clock_ns() / 1_000_000
}

/// Nanoseconds since the epoch (0 if the host does not say).
pub fn clock_ns() -> u64 {
    let mut nanos = 0;
    // SAFETY: the pointer is valid for the call.
    match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
        OK => nanos,
        _ => 0,
    }
}

pub fn define_metric(kind: MetricKind, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the name and pointer are valid for the call.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

pub fn increment_metric(id: u32, offset: i64) {
    // SAFETY: no pointers.
    let _ = unsafe { proxy_increment_metric(id, offset) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers.
    let _ = unsafe { proxy_record_metric(id, value) };
}
