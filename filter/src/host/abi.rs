//! The proxy-wasm host calls flowgate makes, declared here rather than taken from the
//! SDK's `hostcalls`, which panic on any status they do not expect (a panic traps the
//! VM): a directory answer over Envoy's `http.async_response_buffer_limit` ends without
//! response headers, and reading `:status` then fails. Here every failure is a value;
//! statuses are read as plain integers. The SDK's `dispatch_http_call` stays in use: its
//! dispatcher must register the token to deliver the answer, and it handles every status
//! Envoy's `proxy_http_call` returns for valid pointers.

use std::ptr::{null, null_mut};

use proxy_wasm::types::{BufferType, MapType, MetricType};

use crate::wire;

const OK: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: MapType, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: MapType,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: MapType,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: MapType, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: BufferType,
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
    fn proxy_define_metric(kind: MetricType, name: *const u8, name_size: usize, id: *mut u32) -> u32;
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
pub fn header_map(map: MapType) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes a pointer and a length into the two out-parameters.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    returned(status, data, size)
}

/// One header's value; `None` when absent or unreadable.
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in `header_map`; `name` outlives the call.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    returned(status, data, size)
}

/// Sets (`Some`) or removes (`None`) a header; a failure is logged, never a trap.
pub fn set_header(map: MapType, name: &str, value: Option<&str>) {
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

/// The first `size` bytes of a buffer; empty when there are none or on failure.
pub fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    let (mut data, mut size_out) = (null_mut(), 0);
    // SAFETY: as in `header_map`.
    let status = unsafe { proxy_get_buffer_bytes(kind, 0, size, &mut data, &mut size_out) };
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
    let mut nanos = 0;
    // SAFETY: the pointer is valid for the call.
    match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
        OK => nanos / 1_000_000,
        _ => 0,
    }
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
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
