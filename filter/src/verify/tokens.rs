//! Schemes whose proof is a shared value rather than a signature: Okta event hooks and
//! GitLab (a header equals a secret), Microsoft Graph change notifications (every
//! notification's `clientState` equals a secret). Compared in constant time.

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::signed::Signed;
use super::{Failure, Key};

/// The header's value equals one of the keys.
pub fn header_equals(delivery: &Signed, header: &str, keys: &[Key]) -> Result<(), Failure> {
    let presented = delivery.require(header)?;
    if any_equals(presented, keys) {
        return Ok(());
    }
    Err(Failure::NoKeyMatches)
}

/// Every notification of a Graph batch (`{"value": [{"clientState": ...}, ...]}`) carries one of the keys.
pub fn client_states(body: &[u8], keys: &[Key]) -> Result<(), Failure> {
    #[derive(Deserialize)]
    struct Batch {
        value: Vec<Notification>,
    }
    #[derive(Deserialize)]
    struct Notification {
        #[serde(rename = "clientState")]
        client_state: Option<String>,
    }
    let batch: Batch = serde_json::from_slice(body).map_err(|_| Failure::MissingField("value"))?;
    if batch.value.is_empty() {
        return Err(Failure::MissingField("value"));
    }
    for notification in batch.value {
        let state = notification.client_state.ok_or(Failure::MissingField("clientState"))?;
        if !any_equals(state.as_bytes(), keys) {
            return Err(Failure::NoKeyMatches);
        }
    }
    Ok(())
}

fn any_equals(presented: &[u8], keys: &[Key]) -> bool {
    let mut found = 0u8;
    for key in keys {
        if let Key::Mac(secret) = key {
            found |= presented.ct_eq(secret).unwrap_u8();
        }
    }
    found != 0
}
