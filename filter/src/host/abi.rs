//! Host calls the SDK would `unwrap` or decode with panics; here every failure is a value.

use std::ptr::null_mut;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, return_data: *mut *mut u8, return_size: *mut usize) -> Status;
}

/// The serialized header map (decode with `wire::decode_header_map`); empty on failure.
pub fn header_map(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host hands over a buffer it allocated with this module's
    // `proxy_on_memory_allocate`, so it is ours to own as a Vec of that size.
    unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

pub fn set_header(map: MapType, name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(map, name, value) {
        log::warn!("flowgate: could not set header {name}: {status:?}");
    }
}

pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

pub fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    hostcalls::get_buffer(kind, 0, size).ok().flatten().unwrap_or_default()
}

pub fn property(path: Vec<&str>) -> Vec<u8> {
    hostcalls::get_property(path).ok().flatten().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Root context and live directory: raw host calls.
//
// The SDK's `hostcalls` panic on any status they do not expect, and a panic traps the VM: a
// directory answer over Envoy's `http.async_response_buffer_limit` ends without response
// headers, and reading `:status` then returns BadArgument ("unexpected status: 2"). These
// return what the host gave, or nothing. The SDK's `dispatch_http_call` stays in use: its
// dispatcher must register the token to deliver the answer, and it handles every status
// Envoy's `proxy_http_call` returns for valid pointers (Ok, BadArgument, InternalFailure).
// ---------------------------------------------------------------------------------------------

use proxy_wasm::types::{LogLevel, MetricType};

mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_get_log_level(return_level: *mut u32) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    }
}

const OK: u32 = 0;

/// Takes ownership of a buffer the host allocated with this module's allocator.
///
/// # Safety
/// `data` is null or a host-returned allocation of `size` bytes.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// One header of a header map (`None`: absent, or the map does not exist).
pub fn map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the pointers are valid for the call; see `owned`.
    unsafe {
        let status = raw::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size);
        (status == OK).then(|| owned(data, size))
    }
}

/// Up to `size` bytes of a buffer (`None`: there is none).
pub fn buffer_bytes(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    let (mut data, mut size_out) = (null_mut(), 0);
    // SAFETY: as in `map_value`.
    unsafe {
        let status = raw::proxy_get_buffer_bytes(kind as u32, 0, size, &mut data, &mut size_out);
        (status == OK).then(|| owned(data, size_out))
    }
}

/// A shared-data entry and its CAS number (`None`, 0: absent or unreadable).
pub fn shared_data(key: &str) -> (Option<Vec<u8>>, u32) {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    // SAFETY: as in `map_value`.
    unsafe {
        match raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
            OK => (Some(owned(data, size)), cas),
            _ => (None, 0),
        }
    }
}

/// Compare-and-swap (`cas` 0: unconditional); false on a CAS mismatch or any failure.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> bool {
    // SAFETY: both slices are valid for the call.
    unsafe { raw::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) == OK }
}

pub fn set_tick_period_ms(ms: u64) {
    // SAFETY: no pointers.
    let status = unsafe { raw::proxy_set_tick_period_milliseconds(u32::try_from(ms).unwrap_or(u32::MAX)) };
    if status != OK {
        log::warn!("flowgate: could not set the tick period: status {status}");
    }
}

/// Milliseconds since the epoch (0 if the host does not say).
pub fn now_ms() -> u64 {
    let mut nanos = 0;
    // SAFETY: the pointer is valid for the call.
    match unsafe { raw::proxy_get_current_time_nanoseconds(&mut nanos) } {
        OK => nanos / 1_000_000,
        _ => 0,
    }
}

pub fn log_level() -> Option<LogLevel> {
    let mut level = 0;
    // SAFETY: the pointer is valid for the call.
    if unsafe { raw::proxy_get_log_level(&mut level) } != OK {
        return None;
    }
    Some(match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    })
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the name and pointer are valid for the call.
    let status = unsafe { raw::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

pub fn increment_metric(id: u32, offset: i64) {
    // SAFETY: no pointers.
    let _ = unsafe { raw::proxy_increment_metric(id, offset) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers.
    let _ = unsafe { raw::proxy_record_metric(id, value) };
}
