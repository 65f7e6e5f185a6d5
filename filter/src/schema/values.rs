//! The checked values of the plugin configuration: each newtype checks itself as it is
//! deserialized (`#[serde(try_from = ...)]`), and its error is the problem an operator reads
//! after the field's location (`flows[2] (id "f-1003").token_sha256[0]: must be ...`).

use serde::Deserialize;

use crate::auth::{self, TokenDigest};

pub const DEFAULT_PREFIX: &str = "/v1/flow-webhook/";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Bodies are buffered in Envoy; beyond this a limit is surely a mistake.
pub const MAX_BODY_BYTES_CEILING: u64 = 64 * 1024 * 1024;
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";
pub const DEFAULT_DIRECTORY_PATH: &str = "/v1/flows";
pub const DEFAULT_REFRESH_MS: u64 = 2000;
const MAX_FLOW_ID_LEN: usize = 128;

/// A JSON Schema for a newtype, written by hand: the derive cannot see a `TryFrom` check.
#[cfg(feature = "schema")]
macro_rules! schema {
    ($name:ident, $schema:tt) => {
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}
#[cfg(not(feature = "schema"))]
macro_rules! schema {
    ($name:ident, $schema:tt) => {};
}

/// A string that passes `check`, else the error `problem`.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr, $problem:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok($name(value))
                } else {
                    Err($problem(&value))
                }
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }
    };
}

/// A number from `min` to `max`, else "must be from `min` to `max`".
macro_rules! checked_range {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "u64")]
        pub struct $name(u64);

        impl TryFrom<u64> for $name {
            type Error = String;
            fn try_from(value: u64) -> Result<Self, String> {
                if ($min..=$max).contains(&value) {
                    Ok($name(value))
                } else {
                    Err(format!("must be from {} to {}", $min, $max))
                }
            }
        }

        impl $name {
            pub fn get(self) -> u64 {
                self.0
            }
        }

        schema!($name, {"type": "integer", "minimum": $min, "maximum": $max});
    };
}

checked_string!(
    /// Where webhooks live: starts and ends with `/`, canonical (no `//`, `.`, `..`, `%`, `\`, `;`).
    WebhookPrefix,
    |prefix| prefix.len() > 1 && prefix.ends_with('/') && !prefix.contains('?') && crate::route::is_plain(prefix),
    |_: &str| "must start and end with '/' and contain no '//', '.', '..', '%', '\\\\' or ';'".to_string()
);
schema!(WebhookPrefix, {
    "type": "string",
    // Segments of anything but `/ % \ ; # ?`, none of them `.` or `..`.
    "pattern": r"^/((?:[^/%\\;#?.][^/%\\;#?]*|\.[^/%\\;#?.][^/%\\;#?]*|\.\.[^/%\\;#?]+)/)+$"
});

checked_string!(
    /// The `{flow_id}` path segment: 1-128 unreserved characters, not `.` or `..`.
    FlowId,
    |id| {
        (1..=MAX_FLOW_ID_LEN).contains(&id.len())
            && id != "."
            && id != ".."
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    },
    |_: &str| "must be 1-128 characters of A-Z a-z 0-9 - . _ ~ (and not '.' or '..')".to_string()
);
schema!(FlowId, {
    "type": "string",
    "pattern": "^[A-Za-z0-9._~-]{1,128}$",
    "not": {"enum": [".", ".."]}
});

checked_string!(
    /// The webhook step's ref-id: an identifier, the request body's name in templates.
    RefId,
    |name| {
        let mut bytes = name.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    },
    |_: &str| "must be an identifier usable in templates (letters, digits, '_'; not starting with a digit)".to_string()
);
schema!(RefId, {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"});

checked_string!(
    /// An upper-case HTTP method.
    Method,
    |method| !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()),
    |bad: &str| format!("{bad:?} is not an upper-case HTTP method")
);
schema!(Method, {"type": "string", "pattern": "^[A-Z]+$"});

checked_string!(
    /// A response `content-type`: a non-empty header value.
    ContentType,
    |value| !value.is_empty() && !value.bytes().any(|b| b.is_ascii_control()),
    |_: &str| "must be a non-empty header value".to_string()
);
schema!(ContentType, {"type": "string", "minLength": 1, "pattern": r"^[^\x00-\x1f\x7f]+$"});

checked_string!(
    /// An Envoy cluster name.
    ClusterName,
    |name| !name.is_empty(),
    |_: &str| "must name an Envoy cluster".to_string()
);
schema!(ClusterName, {"type": "string", "minLength": 1});

checked_string!(
    /// The directory's path: starts with `/`.
    DirectoryPath,
    |path| path.starts_with('/'),
    |_: &str| "must start with '/'".to_string()
);
schema!(DirectoryPath, {"type": "string", "pattern": "^/"});

checked_range!(
    /// A body limit in bytes.
    BodyLimit,
    1,
    MAX_BODY_BYTES_CEILING
);

checked_range!(
    /// How often the directory is fetched, in milliseconds.
    RefreshMs,
    100,
    3_600_000
);

/// Whether a flow runs: draft and live run, paused is answered at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum FlowStatus {
    Draft,
    Live,
    Paused,
}

impl TryFrom<String> for FlowStatus {
    type Error = String;
    fn try_from(status: String) -> Result<Self, String> {
        match status.as_str() {
            "draft" => Ok(FlowStatus::Draft),
            "live" => Ok(FlowStatus::Live),
            "paused" => Ok(FlowStatus::Paused),
            other => Err(format!("must be \"draft\", \"live\" or \"paused\", not {other:?}")),
        }
    }
}

impl FlowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Draft => "draft",
            FlowStatus::Live => "live",
            FlowStatus::Paused => "paused",
        }
    }
}
schema!(FlowStatus, {"type": "string", "enum": ["draft", "live", "paused"]});

/// A SHA-256 digest written as 64 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HexDigest(TokenDigest);

impl TryFrom<String> for HexDigest {
    type Error = &'static str;
    fn try_from(hex: String) -> Result<Self, &'static str> {
        auth::parse_hex_digest(&hex)
            .map(HexDigest)
            .ok_or("must be 64 lowercase hex characters (the SHA-256 of the token)")
    }
}
schema!(HexDigest, {"type": "string", "pattern": "^[0-9a-f]{64}$"});

/// A non-empty list.
macro_rules! non_empty {
    ($(#[$doc:meta])* $name:ident($item:ty => $inner:ty), $convert:expr, $problem:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(Vec<$inner>);

        // What `#[serde(try_from = "Vec<...>")]` would derive (the attribute takes no macro types).
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let items = Vec::<$item>::deserialize(deserializer)?;
                $name::try_from(items).map_err(serde::de::Error::custom)
            }
        }

        impl TryFrom<Vec<$item>> for $name {
            type Error = &'static str;
            fn try_from(items: Vec<$item>) -> Result<Self, &'static str> {
                if items.is_empty() {
                    return Err($problem);
                }
                let convert: fn($item) -> $inner = $convert;
                Ok($name(items.into_iter().map(convert).collect()))
            }
        }

        impl $name {
            pub fn into_vec(self) -> Vec<$inner> {
                self.0
            }
        }

        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let item = generator.subschema_for::<$item>();
                schemars::json_schema!({"type": "array", "minItems": 1, "items": item})
            }
        }
    };
}

non_empty!(
    /// The accepted tokens' digests; several allow rotation.
    TokenDigests(HexDigest => TokenDigest),
    |digest| digest.0,
    "needs at least one digest"
);

non_empty!(
    /// The allowed methods.
    Methods(Method => String),
    Method::into_string,
    "needs at least one method"
);

/// An HTTP status the reply can carry a body with: 200..=599, not 204 or 304.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct ResponseStatus(u16);

impl TryFrom<u64> for ResponseStatus {
    type Error = &'static str;
    fn try_from(status: u64) -> Result<Self, &'static str> {
        // The reply carries the rendered body: 1xx, 204 and 304 cannot.
        match u16::try_from(status) {
            Ok(status @ 200..=599) if status != 204 && status != 304 => Ok(ResponseStatus(status)),
            _ => Err("must be an HTTP status code from 200 to 599, not 204 or 304"),
        }
    }
}

impl ResponseStatus {
    pub fn get(self) -> u16 {
        self.0
    }
}
schema!(ResponseStatus, {
    "type": "integer",
    "minimum": 200,
    "maximum": 599,
    "not": {"enum": [204, 304]}
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_check_themselves() {
        assert!(FlowId::try_from("f-1.a_b~".to_string()).is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(FlowId::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
        assert!(RefId::try_from("_web1".to_string()).is_ok());
        assert!(RefId::try_from("1web".to_string()).is_err());
        assert_eq!(
            Method::try_from("get".to_string()).unwrap_err(),
            "\"get\" is not an upper-case HTTP method"
        );
        assert!(Methods::try_from(Vec::new()).is_err());
        assert!(TokenDigests::try_from(Vec::new()).is_err());
        assert!(WebhookPrefix::try_from("/v1/hooks/".to_string()).is_ok());
        for bad in ["/", "v1/", "/v1", "/v1//x/", "/v1/./", "/v1/%41/", "/v1?/"] {
            assert!(WebhookPrefix::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
        for (status, ok) in [
            (200, true),
            (599, true),
            (199, false),
            (204, false),
            (304, false),
            (600, false),
        ] {
            assert_eq!(ResponseStatus::try_from(status).is_ok(), ok, "{status}");
        }
        assert_eq!(ResponseStatus::try_from(70_000 + 200).ok(), None);
        assert_eq!(BodyLimit::try_from(0).unwrap_err(), "must be from 1 to 67108864");
        assert!(RefreshMs::try_from(99).is_err() && RefreshMs::try_from(100).is_ok());
        assert_eq!(
            FlowStatus::try_from("on".to_string()).unwrap_err(),
            "must be \"draft\", \"live\" or \"paused\", not \"on\""
        );
    }
}
