//! docs/config.schema.json is the JSON Schema that `flowgate::schema::json_schema` generates
//! from the configuration's own types (feature `schema`): this fails when it is stale.
#![cfg(feature = "schema")]

use std::path::Path;

/// The command that rewrites docs/config.schema.json.
const REFRESH: &str = "FLOWGATE_WRITE_SCHEMA=1 cargo test -p flowgate --features schema --test schema";

#[test]
fn the_published_schema_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.schema.json");
    let mut generated = serde_json::to_string_pretty(&flowgate::schema::json_schema()).unwrap_or_default();
    generated.push('\n');
    if std::env::var_os("FLOWGATE_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, generated).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "{} is stale (or missing): the configuration's types changed. Refresh it with\n    {REFRESH}\nand commit it.",
        path.display()
    );
}
