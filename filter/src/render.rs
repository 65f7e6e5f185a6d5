//! Response templates: Jinja2 (minijinja), checked when a flow set loads, compiled on a
//! flow's first answer and kept for the next ones.
//!
//! A compiled minijinja template holds about 10 KB however short its source, so compiling
//! on first use keeps memory proportional to the flows a worker answers, not to the flows
//! configured. Templates are tenant input: a template is rewritten before it is compiled
//! ([`rewrite`]) so that its operators, filters and tests are charged to a per-render
//! budget ([`limits`]); minijinja fuel caps its instructions and the output is capped in
//! size, so no template can stall a worker or exhaust its VM's memory.

mod filters;
#[cfg(test)]
mod hostile;
mod limits;
mod rewrite;

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::rc::Rc;

use minijinja::{AutoEscape, Environment, Value};

pub use limits::{MAX_ITEMS, MAX_STRING_BYTES, MAX_WORK};

/// Instructions a single render may execute; the seed's template needs a few dozen.
const FUEL: u64 = 100_000;
/// Largest rendered body.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// All response templates of one flow set.
pub struct Templates {
    /// Loads a template from its rewritten source on first use and keeps it compiled.
    env: Environment<'static>,
    /// What loading found per template: the variables it reads, or its compile error.
    checked: HashMap<String, Result<HashSet<String>, String>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("checked", &self.checked)
            .finish_non_exhaustive()
    }
}

/// Checks `(name, source)` pairs by rewriting and compiling each once (then dropping the
/// compiled form); failures are kept by name for `Templates::check`.
pub fn check_all<'a>(sources: impl Iterator<Item = (String, &'a str)>) -> Templates {
    let mut valid = HashMap::new();
    let mut checked = HashMap::new();
    let checker = Environment::new();
    for (name, source) in sources {
        let result = rewrite::rewrite(source).and_then(|rewritten| {
            let read = checker
                .template_from_str(&rewritten)
                .map_err(|e| describe(&e))?
                .undeclared_variables(false);
            valid.insert(name.clone(), rewritten);
            Ok(read)
        });
        checked.insert(name, result);
    }
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|_| AutoEscape::None);
    limits::register(&mut env);
    env.set_loader(move |name| Ok(valid.get(name).cloned()));
    Templates { env, checked }
}

impl Templates {
    /// The compile error of a template, if it had one.
    pub fn check(&self, name: &str) -> Result<(), String> {
        match self.checked.get(name) {
            Some(Err(problem)) => Err(problem.clone()),
            _ => Ok(()),
        }
    }

    /// Whether template `name` may read the variable `variable`.
    fn reads(&self, name: &str, variable: &str) -> bool {
        match self.checked.get(name) {
            Some(Ok(read)) => read.contains(variable),
            _ => true,
        }
    }
}

/// A compile error: `syntax error at line 2: unexpected end of input` — kind, line and
/// detail. The detail quotes the template's own source, never a value.
fn describe(e: &minijinja::Error) -> String {
    let line = e.line().map(|line| format!(" at line {line}")).unwrap_or_default();
    match e.detail() {
        Some(detail) => format!("{}{line}: {detail}", e.kind()),
        None => format!("{}{line}", e.kind()),
    }
}

/// A render error: `invalid operation at line 3` — kind and line, plus the detail only
/// when it names one of flowgate's limits. minijinja's own details can quote values
/// (`unable to calculate 987654321 // 0`), which may come from the request or the
/// executor, so they are dropped.
fn describe_render(e: &minijinja::Error) -> String {
    let line = e.line().map(|line| format!(" at line {line}")).unwrap_or_default();
    match e.detail().filter(|detail| limits::DETAILS.contains(detail)) {
        Some(detail) => format!("{}{line}: {detail}", e.kind()),
        None => format!("{}{line}", e.kind()),
    }
}

/// A flow's webhook response: status, content type and a compiled body template.
pub struct ResponseTemplate {
    pub status: u16,
    pub content_type: String,
    /// The template reads the request body (the flow's `ref_id`), so it must be kept.
    pub reads_request_body: bool,
    templates: Rc<Templates>,
    name: String,
    flow_id: String,
}

impl std::fmt::Debug for ResponseTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseTemplate")
            .field("status", &self.status)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ResponseTemplate {
    pub fn new(status: u16, content_type: String, templates: Rc<Templates>, name: String, flow: (&str, &str)) -> Self {
        let (flow_id, ref_id) = flow;
        ResponseTemplate {
            status,
            content_type,
            reads_request_body: templates.reads(&name, ref_id),
            templates,
            name,
            flow_id: flow_id.to_string(),
        }
    }

    /// Renders on `context`; the error is the message of a `template_error` reply.
    pub fn render(&self, context: &Value) -> Result<Vec<u8>, String> {
        let fail = |what: String| format!("response template of flow {:?} failed: {what}", self.flow_id);
        let template = self
            .templates
            .env
            .get_template(&self.name)
            .map_err(|e| fail(describe_render(&e)))?;
        let mut out = CappedWriter(Vec::new());
        limits::start_render();
        template.render_captured_to(context, &mut out).map_err(|e| {
            if out.0.len() > MAX_OUTPUT_BYTES {
                fail(format!("output exceeds {MAX_OUTPUT_BYTES} bytes"))
            } else {
                fail(describe_render(&e))
            }
        })?;
        Ok(out.0)
    }
}

/// Refuses writes past `MAX_OUTPUT_BYTES` (keeping one byte more to tell why it stopped).
struct CappedWriter(Vec<u8>);

impl Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.0.resize(MAX_OUTPUT_BYTES + 1, 0);
            return Err(io::Error::other("output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "{\"valid\": {% if res1.value == \"myResult\" %}\"{{ res1.value }}\"{% else %}false{% endif %}}";

    pub(super) fn template(source: &str) -> ResponseTemplate {
        let templates = Rc::new(check_all(std::iter::once(("t".to_string(), source))));
        templates.check("t").unwrap();
        ResponseTemplate::new(200, "application/json".into(), templates, "t".into(), ("f-1", "web1"))
    }

    pub(super) fn context(json: serde_json::Value) -> Value {
        Value::from_serialize(json)
    }

    #[test]
    fn seed_template_renders_both_ways() {
        let seed = template(SEED);
        let valid = seed
            .render(&context(serde_json::json!({"res1": {"value": "myResult"}})))
            .unwrap();
        assert_eq!(String::from_utf8(valid).unwrap(), r#"{"valid": "myResult"}"#);
        let invalid = seed
            .render(&context(serde_json::json!({"res1": {"value": "other"}})))
            .unwrap();
        assert_eq!(String::from_utf8(invalid).unwrap(), r#"{"valid": false}"#);
    }

    #[test]
    fn the_request_body_is_kept_only_for_templates_that_read_it() {
        assert!(!template(SEED).reads_request_body);
        assert!(template("{{ web1.company_id }}").reads_request_body);
        assert!(template("{% if res1 %}{{ web1 | tojson }}{% endif %}").reads_request_body);
        // `web10` is another variable.
        assert!(!template("{{ web10 }}").reads_request_body);
    }

    #[test]
    fn compile_errors_name_the_line() {
        let templates = check_all(std::iter::once(("t".to_string(), "ok\n{{ a +  }}")));
        let problem = templates.check("t").unwrap_err();
        assert!(problem.starts_with("syntax error at line 2"), "{problem}");
    }

    #[test]
    fn render_errors_name_the_line_but_not_values() {
        let problem = template("{\n{{ secret.value.deeper }}\n}")
            .render(&context(serde_json::json!({"x": "s3cr3t"})))
            .unwrap_err();
        assert!(problem.contains("line 2"), "{problem}");
        assert!(!problem.contains("s3cr3t"), "{problem}");
    }

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let problem = template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
            .render(&Value::UNDEFINED)
            .unwrap_err();
        assert!(problem.contains("fuel"), "{problem}");
    }

    #[test]
    fn output_is_capped() {
        let problem = template("{% for i in range(3) %}{{ 'x' * 1000000 }}{% endfor %}")
            .render(&Value::UNDEFINED)
            .unwrap_err();
        assert!(problem.contains("exceeds"), "{problem}");
    }
}
