//! Hostile and ordinary templates: the budget stops the first quickly and leaves the
//! second as minijinja renders them.

use super::tests::{context, template};
use super::*;

fn render(source: &str, json: serde_json::Value) -> Result<String, String> {
    template(source)
        .render(&context(json))
        .map(|body| String::from_utf8(body).unwrap())
}

/// The refusal of a hostile render. How fast it comes is measured by the `template` fuzz
/// target (`scripts/fuzz.sh`), not asserted here: unit tests assert no timings.
fn refused(source: &str) -> String {
    render(source, serde_json::json!({"web1": {"company_id": 1}})).unwrap_err()
}

fn refused_at_load(source: &str) -> String {
    check_all(std::iter::once(("t".to_string(), source)))
        .check("t")
        .unwrap_err()
}

#[test]
fn one_operator_cannot_build_gigabytes() {
    for source in [
        "{{ [1] * 1000000000 }}",
        "{{ ([0] * 50000000) | join(',') }}",
        "{{ ([0] * 50000000) | last }}",
        "{% set a = 'x' * 100000000 %}{% set b = a ~ a ~ a ~ a %}",
        "{{ 'x' * 1000000 ~ 'y' * 1000000 }}",
        "{{ [1] + [2] * 100001 }}",
        "{{ [[1] * 100000] * 100000 }}",
    ] {
        let problem = refused(source);
        assert!(
            problem.contains("1 MiB") || problem.contains("budget"),
            "{source}: {problem}"
        );
    }
}

/// Found by the `template` fuzz target: nothing to allocate, but a loop as long as the number.
#[test]
fn an_empty_list_repeats_at_once() {
    // Within a 32-bit count, so the shipped wasm32 build takes it as a number too.
    let empty = render("{{ [] * 4000000000 }}", serde_json::json!({}));
    assert_eq!(empty, Ok("[]".to_string()));
}

/// Found by the `template` fuzz target: minijinja's `format` panicked on a `%(key)` with a
/// multi-byte character (a panic aborts the wasm VM).
#[test]
fn format_keys_are_ascii() {
    let problem = render("{{ '%(é)s' | format({'é': 1}) }}", serde_json::json!({})).unwrap_err();
    assert!(problem.contains("line 1"), "{problem}");
    let ascii = render("{{ '%(a)s-é' | format({'a': 1}) }}", serde_json::json!({}));
    assert_eq!(ascii, Ok("1-é".to_string()));
}

#[test]
fn filter_arguments_are_capped() {
    for source in [
        "{{ [1] | indent(3308274083) }}",
        "{% set a = [1] | indent(3308274083) | tojson %}",
        "{{ ('x\n' * 1000) | indent(2000) }}",
        "{{ '%999999999s' | format(1) }}",
        "{{ ('%(a)s' * 100000) | format({'a': 'x' * 100000}) }}",
        "{{ '%*s' | format(999999999, 1) }}",
        "{{ ('ab' * 1000) | replace('', 'x' * 1000) }}",
        "{{ ('a' * 100000) | replace('a', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb') }}",
        "{{ [1] | batch(1000000000, 0) }}",
        "{{ [1] | slice(1000000000, 0) }}",
        "{{ web1 | tojson(indent=100000) }}",
        "{{ ([1] * 1000) | join('x' * 100000) }}",
        "{{ range(1000000000) | list }}",
        "{{ ('x' * 1000000) | list }}",
    ] {
        refused(source);
    }
}

#[test]
fn doubling_in_a_loop_is_stopped() {
    let problem = refused(
        "{% set ns = namespace(a='x') %}{% for i in range(60) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}{{ ns.a | length }}",
    );
    assert!(problem.contains("1 MiB"), "{problem}");
    refused("{% set ns = namespace(a=[1]) %}{% for i in range(60) %}{% set ns.a = ns.a + ns.a %}{% endfor %}");
}

#[test]
fn kept_values_are_charged() {
    // Each slice is a new 1 MB string kept in a list: 5,000 of them would be 5 GB.
    refused(
        "{% set s = 'x' * 1000000 %}{% set ns = namespace(l=[]) %}{% for i in range(5000) %}{% set ns.l = ns.l + [s[1:]] %}{% endfor %}",
    );
    let problem = refused(
        "{% set ns = namespace(l=[]) %}{% for i in range(5000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
    );
    assert!(problem.contains("deeply"), "{problem}");
}

#[test]
fn comparing_large_values_is_charged() {
    for source in [
        "{% set s = 'x' * 1000000 %}{% for i in range(20000) %}{% if s == s ~ '' %}{% endif %}{% endfor %}",
        "{% set s = 'x' * 1000000 %}{% for i in range(20000) %}{% if s is eq(s) %}{% endif %}{% endfor %}",
        "{% set l = ['x' * 1000000] * 1000 %}{% for i in range(20000) %}{% if 'y' in l %}{% endif %}{% endfor %}",
        "{% set s = 'x' * 1000000 %}{% for i in range(20000) %}{{ s[999999] }}{% endfor %}",
    ] {
        let problem = refused(source);
        assert!(problem.contains("budget"), "{source}: {problem}");
    }
}

#[test]
fn capturing_and_cross_flow_constructs_are_refused_at_load() {
    for source in [
        "{% macro m() %}x{% endmacro %}",
        "{% set x %}y{% endset %}",
        "{% filter upper %}x{% endfilter %}",
        "{% include 'f1' %}",
        "{% import 'f1' as x %}",
        "{% extends 'f1' %}",
        "{% for x in y recursive %}{% endfor %}",
        "{{ __flowgate_cost(1) }}",
        "{% set __flowgate_add = 1 %}",
    ] {
        let problem = refused_at_load(source);
        assert!(problem.starts_with("syntax error"), "{source}: {problem}");
    }
    assert!(render("{{ debug() }}", serde_json::json!({}))
        .unwrap_err()
        .contains("line 1"));
}

#[test]
fn errors_do_not_repeat_request_values() {
    let problem = render(
        "{\n{{ web1.company_id // web1.user_id }}\n}",
        serde_json::json!({"web1": {"company_id": 987654321, "user_id": 0}}),
    )
    .unwrap_err();
    assert!(problem.contains("line 2"), "{problem}");
    assert!(!problem.contains("987654321"), "{problem}");
    let problem = render(
        "{{ web1.secret + 1 }}",
        serde_json::json!({"web1": {"secret": "s3cr3t"}}),
    )
    .unwrap_err();
    assert!(!problem.contains("s3cr3t"), "{problem}");
}

#[test]
fn ordinary_templates_render_as_before() {
    let ctx = serde_json::json!({"web1": {"company_id": 5, "tags": ["a", "b", "c"], "name": "Ada"}, "res1": {"value": "ok", "n": 2.5}});
    for (source, expected) in [
        ("{{ 1 + 2 }}|{{ -1 * 3 }}|{{ 2 ** 3 * 2 }}|{{ (1 + 2) * 3 }}|{{ 7 // 2 }}|{{ 7 % 3 }}", "3|-3|16|9|3|1"),
        ("{{ res1.n + 1 }}|{{ res1.n * 2 }}|{{ 1 / 4 }}", "3.5|5.0|0.25"),
        ("{{ 'a' ~ 1 ~ [1] }}|{{ [1, 2] + [3] }}|{{ 'ab' * 2 }}|{{ [0] * 3 }}|{{ 'x' + 'y' }}", "a1[1]|[1, 2, 3]|abab|[0, 0, 0]|xy"),
        ("{{ web1.tags[1:] }}|{{ web1.tags[0] }}|{{ web1.name[::-1] }}|{{ web1['name'] }}", "[\"b\", \"c\"]|a|adA|Ada"),
        ("{% if 'a' in web1.tags and 1 < 2 < 3 and 'd' not in web1.tags %}in{% endif %}", "in"),
        ("{{ web1.tags | join('-') }}|{{ web1.tags | length }}|{{ web1.name | upper }}|{{ web1.tags | first }}", "a-b-c|3|ADA|a"),
        ("{{ web1 | tojson }}", r#"{"company_id":5,"name":"Ada","tags":["a","b","c"]}"#),
        ("{{ web1.tags | tojson(indent=1) }}", "[\n \"a\",\n \"b\",\n \"c\"\n]"),
        ("{% set ns = namespace(n=0) %}{% for t in web1.tags %}{% set ns.n = ns.n + loop.index %}{% endfor %}{{ ns.n }}", "6"),
        ("{% for t in web1.tags %}{{ loop.cycle('x', 'y') }}{% if loop.changed(t) %}.{% endif %}{% endfor %}", "x.y.x."),
        ("{{ '%s-%03d' | format('a', 7) }}|{{ 'a b' | replace(' ', '_') }}|{{ web1.tags | map('upper') | list }}", "a-007|a_b|[\"A\", \"B\", \"C\"]"),
        ("{% with x = web1.company_id * 2 %}{{ x }}{% endwith %}|{{ web1.tags | select('eq', 'b') | list }}", "10|[\"b\"]"),
        ("{{ (\n  web1.company_id\n  ~ 'x'\n) }}", "5x"),
        ("{{ ((('a')) * 3) }}|{{ not 1 ~ 2 }}|{{ web1.x is defined ~ '!' }}|{{ none ~ 1 }}|{{ [3, 1][::-1] * 2 }}", "aaa|False|False!|None1|[1, 3, 1, 3]"),
        ("{{ (web1.name ~ '?')[0] }}|{{ web1.tags | join ~ '.' }}|{{ 1 if 2 > 1 else 0 ~ 'x' }}|{{ [1] + [2] + [3] }}", "A|abc.|1|[1, 2, 3]"),
        ("{{ {'a': [1, 2 * 2]}['a'][1] }}|{{ web1.company_id * -2 }}|{{ (1, 2) + (3,) }}|{{ 2 * 'ab' }}", "4|-10|[1, 2, 3]|abab"),
        ("{% set a, b = 1, 2 %}{{ a + b }}|{% set t = (1, 2) %}{{ t | length }}|{% set x = [1] %}{{ x * 2 }}", "3|2|[1, 1]"),
    ] {
        // As minijinja itself renders it, and as written here.
        let plain = minijinja::Environment::new().render_str(source, &ctx).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(render(source, ctx.clone()), Ok(plain), "{source}");
        assert_eq!(render(source, ctx.clone()), Ok(expected.to_string()), "{source}");
    }
}

#[test]
fn multi_line_expressions_keep_their_line_numbers() {
    let problem = render("{{ 1 ~\n 2 ~\n 3 }}\n{{ web1.a.b.c }}", serde_json::json!({})).unwrap_err();
    assert!(problem.contains("line 4"), "{problem}");
}
