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
