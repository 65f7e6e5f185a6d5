//! Request trailers: what flowgate removes from them before they go on.

use super::Host;
use crate::{gate, wire};

/// Removes sender-supplied `x-flowgate-*` trailers, and `Authorization` too when the
/// request goes to the executor; false when the trailers cannot be read.
pub(super) fn strip_trailers(host: &mut impl Host, admitted: bool) -> bool {
    let Some(map) = host.request_trailers() else {
        return false;
    };
    let Some(trailers) = wire::decode_header_map(&map) else {
        return false;
    };
    for (name, _) in trailers {
        let secret = admitted && name.eq_ignore_ascii_case(b"authorization");
        if gate::is_own_header(name) || secret {
            match std::str::from_utf8(name) {
                Ok(name) => host.remove_request_trailer(name),
                Err(_) => return false,
            }
        }
    }
    true
}
