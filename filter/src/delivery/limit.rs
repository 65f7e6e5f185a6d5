//! A flow's rate limit: a token bucket in Envoy's shared data, so every worker of one Envoy
//! process spends the same tokens (compare-and-swap, retried on a race).

use super::Store;

/// How often a write is retried when another worker changed the bucket in between.
pub const ATTEMPTS: usize = 16;
/// One delivery, in thousandths of a token.
const TOKEN: u64 = 1000;

/// `requests_per_second` tokens a second, at most `burst` held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u64,
    pub burst: u64,
}

/// A bucket as stored: thousandths of a token, and when it was last refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub millitokens: u64,
    pub at_ms: u64,
}

impl Bucket {
    pub fn encode(self) -> Vec<u8> {
        format!("{} {}", self.millitokens, self.at_ms).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        let (tokens, at) = std::str::from_utf8(bytes).ok()?.split_once(' ')?;
        Some(Bucket {
            millitokens: tokens.parse().ok()?,
            at_ms: at.parse().ok()?,
        })
    }
}

impl RateLimit {
    /// Takes one token at `now_ms` from `bucket` (a full one when there is none yet): the
    /// bucket to store, or how many whole seconds (at least 1) until a token is there.
    pub fn take(self, bucket: Option<Bucket>, now_ms: u64) -> Result<Bucket, u64> {
        let full = self.burst.saturating_mul(TOKEN);
        let Bucket { millitokens, at_ms } = bucket.unwrap_or(Bucket {
            millitokens: full,
            at_ms: now_ms,
        });
        // `per_second` tokens a second is `per_second` thousandths a millisecond.
        let refill = now_ms.saturating_sub(at_ms).saturating_mul(self.per_second);
        let millitokens = millitokens.saturating_add(refill).min(full);
        let at_ms = at_ms.max(now_ms);
        match millitokens.checked_sub(TOKEN) {
            Some(left) => Ok(Bucket {
                millitokens: left,
                at_ms,
            }),
            None => {
                let wait_ms = (TOKEN - millitokens).div_ceil(self.per_second.max(1));
                Err(wait_ms.div_ceil(1000).max(1))
            }
        }
    }
}

/// Spends a token of flow `flow_id`'s bucket: `Err(retry_after_s)` when there is none. A
/// store that keeps failing admits (a rate limit must not stop a flow on its own fault).
pub fn spend(store: &mut impl Store, flow_id: &str, limit: RateLimit) -> Result<(), u64> {
    let key = format!("flowgate.limit.{flow_id}");
    for _ in 0..ATTEMPTS {
        let (value, cas) = store.get(&key);
        let bucket = value.as_deref().and_then(Bucket::decode);
        let now_ms = store.now_ms();
        let next = limit.take(bucket, now_ms)?;
        if store.set(&key, &next.encode(), cas) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::MemoryStore;

    #[test]
    fn a_burst_then_the_rate_then_a_refill() {
        let limit = RateLimit {
            per_second: 2,
            burst: 3,
        };
        let mut store = MemoryStore::default();
        let spent: Vec<_> = (0..5).map(|_| spend(&mut store, "f", limit)).collect();
        assert_eq!(spent, [Ok(()), Ok(()), Ok(()), Err(1), Err(1)]);
        store.now_ms += 499;
        assert_eq!(spend(&mut store, "f", limit), Err(1));
        store.now_ms += 1;
        assert_eq!(spend(&mut store, "f", limit), Ok(()));
        store.now_ms += 60_000;
        let spent: Vec<_> = (0..4).map(|_| spend(&mut store, "f", limit)).collect();
        assert_eq!(spent, [Ok(()), Ok(()), Ok(()), Err(1)]);
        assert_eq!(spend(&mut store, "other", limit), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        let slow = RateLimit {
            per_second: 1,
            burst: 1,
        };
        let empty = Bucket {
            millitokens: 0,
            at_ms: 0,
        };
        assert_eq!(slow.take(Some(empty), 0), Err(1));
        assert_eq!(slow.take(Some(empty), 999), Err(1));
        assert!(slow.take(Some(empty), 1000).is_ok());
        assert_eq!(Bucket::decode(&empty.encode()), Some(empty));
        assert_eq!(Bucket::decode(b"x 1"), None);
    }

    #[test]
    fn a_race_is_retried_on_the_new_value() {
        let limit = RateLimit {
            per_second: 1,
            burst: 2,
        };
        let mut store = MemoryStore {
            races: 1,
            ..MemoryStore::default()
        };
        assert_eq!(spend(&mut store, "f", limit), Ok(()));
        assert_eq!(
            spend(&mut store, "f", limit),
            Err(1),
            "the raced write spent a token too"
        );
    }
}
