//! The built-in filters and tests, each let through a guard: its arguments are charged to
//! the render's budget ([`super::limits`]) and capped in size, and the filters whose output
//! can outgrow their input (`indent`, `join`, `replace`, `format`, `batch`, `slice`,
//! `tojson`, `pprint`) have their output's size checked before they run.

use std::fmt::Write as _;

use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{filters, tests, Environment, Error, State};

use super::limits::{
    charge, charge_value, check_built, fail, Capped, ITEM_UNITS, MAX_ITEMS, MAX_STRING_BYTES, NOT_SUPPORTED, TOO_LARGE,
};

/// How a built-in filter is let through.
#[derive(Clone, Copy, PartialEq)]
enum Guard {
    /// Constant work (a lazy list is charged, since counting or indexing walks it).
    Free,
    /// Text in, text out: a string argument is at most `MAX_STRING_BYTES`, anything else is
    /// charged and must print within that size.
    Text,
    /// Iterates its input: at most `MAX_ITEMS` items (a string: characters).
    Items,
}

/// The built-in filters, each with its guard; `extra` checks the amplifying ones.
fn builtin_filters() -> Vec<(&'static str, Value, Guard)> {
    use Guard::{Free, Items, Text};
    vec![
        ("safe", Value::from_function(filters::safe), Text),
        ("escape", Value::from_function(filters::escape), Text),
        ("e", Value::from_function(filters::escape), Text),
        ("lower", Value::from_function(filters::lower), Text),
        ("upper", Value::from_function(filters::upper), Text),
        ("title", Value::from_function(filters::title), Text),
        ("capitalize", Value::from_function(filters::capitalize), Text),
        ("replace", Value::from_function(filters::replace), Text),
        ("trim", Value::from_function(filters::trim), Text),
        ("string", Value::from_function(filters::string), Text),
        ("indent", Value::from_function(filters::indent), Text),
        ("format", Value::from_function(filters::format), Text),
        ("tojson", Value::from_function(filters::tojson), Text),
        ("pprint", Value::from_function(filters::pprint), Text),
        ("int", Value::from_function(filters::int), Text),
        ("float", Value::from_function(filters::float), Text),
        ("split", Value::from_function(filters::split), Items),
        ("lines", Value::from_function(filters::lines), Items),
        ("join", Value::from_function(filters::join), Items),
        ("dictsort", Value::from_function(filters::dictsort), Items),
        ("items", Value::from_function(filters::items), Items),
        ("reverse", Value::from_function(filters::reverse), Items),
        ("last", Value::from_function(filters::last), Items),
        ("min", Value::from_function(filters::min), Items),
        ("max", Value::from_function(filters::max), Items),
        ("sort", Value::from_function(filters::sort), Items),
        ("list", Value::from_function(filters::list), Items),
        ("batch", Value::from_function(filters::batch), Items),
        ("slice", Value::from_function(filters::slice), Items),
        ("sum", Value::from_function(filters::sum), Items),
        ("select", Value::from_function(filters::select), Items),
        ("reject", Value::from_function(filters::reject), Items),
        ("selectattr", Value::from_function(filters::selectattr), Items),
        ("rejectattr", Value::from_function(filters::rejectattr), Items),
        ("map", Value::from_function(filters::map), Items),
        ("groupby", Value::from_function(filters::groupby), Items),
        ("unique", Value::from_function(filters::unique), Items),
        ("chain", Value::from_function(filters::chain), Items),
        ("zip", Value::from_function(filters::zip), Items),
        ("length", Value::from_function(filters::length), Free),
        ("count", Value::from_function(filters::length), Free),
        ("first", Value::from_function(filters::first), Free),
        ("default", Value::from_function(filters::default), Free),
        ("d", Value::from_function(filters::default), Free),
        ("attr", Value::from_function(filters::attr), Free),
        ("bool", Value::from_function(filters::bool), Free),
        ("abs", Value::from_function(filters::abs), Free),
        ("round", Value::from_function(filters::round), Free),
    ]
}

/// Charges and checks one argument of a filter.
fn check_argument(guard: Guard, value: &Value) -> Result<(), Error> {
    match (guard, value.as_str()) {
        (Guard::Free, _) if value.kind() == ValueKind::Iterable => charge_value(value),
        (Guard::Free, _) => Ok(()),
        (Guard::Text, Some(s)) if s.len() > MAX_STRING_BYTES => Err(fail(TOO_LARGE)),
        (Guard::Items, Some(s)) if s.len() > MAX_ITEMS => Err(fail(TOO_LARGE)),
        (Guard::Text, Some(s)) => charge(s.len() as u64 + ITEM_UNITS),
        (Guard::Items, Some(s)) => charge((s.len() as u64 + 1) * ITEM_UNITS),
        (Guard::Text, None) => {
            charge_value(value)?;
            Capped::measure(|w| write!(w, "{value}")).map(|_| ())
        }
        (Guard::Items, None) => {
            charge_value(value)?;
            match value.kind() {
                ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
                    let n = value.try_iter().map_or(0, |iter| iter.take(MAX_ITEMS + 1).count());
                    if n > MAX_ITEMS {
                        return Err(fail(TOO_LARGE));
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }
}

/// The numbers among a filter's arguments, keyword arguments included.
fn numbers_in(args: &[Value]) -> impl Iterator<Item = usize> + '_ {
    args.iter().flat_map(|arg| {
        let nested: Vec<Value> = match arg.kind() {
            ValueKind::Map => arg
                .try_iter()
                .into_iter()
                .flatten()
                .filter_map(|k| arg.get_item(&k).ok())
                .collect(),
            _ => vec![arg.clone()],
        };
        nested
            .into_iter()
            .filter_map(|v| (v.kind() == ValueKind::Number).then(|| v.as_usize().unwrap_or(usize::MAX)))
    })
}

/// The size checks of filters whose output can outgrow their input.
fn extra(name: &str, args: &[Value]) -> Result<(), Error> {
    let text = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or_default();
    let largest = numbers_in(args.get(1..).unwrap_or_default()).max().unwrap_or(0);
    let fits = |n: Option<usize>| n.is_some_and(|n| n <= MAX_STRING_BYTES);
    let ok = match name {
        "indent" => fits(largest.checked_mul(text(0).lines().count() + 1)),
        "batch" | "slice" => largest <= MAX_ITEMS,
        "replace" => {
            let (from, to) = (text(1), text(2));
            let hits = if from.is_empty() {
                text(0).chars().count() + 1
            } else {
                text(0).matches(from).count()
            };
            fits(hits.checked_mul(to.len()))
        }
        "join" => {
            let n = args.first().and_then(Value::len).unwrap_or(MAX_ITEMS);
            let printed = Capped::measure(|w| {
                args.first()
                    .and_then(|v| v.try_iter().ok())
                    .into_iter()
                    .flatten()
                    .try_for_each(|item| write!(w, "{item}"))
            })?;
            fits(n.checked_mul(text(1).len()).and_then(|sep| sep.checked_add(printed)))
        }
        "format" => {
            // Each conversion prints at most its width or its argument; `%(key)s` can print
            // the same mapping value many times, so each counts as the widest argument.
            let digits = text(0).split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty());
            let mut widths = digits.map(|w| w.parse::<usize>().unwrap_or(usize::MAX));
            let widest = args.get(1..).unwrap_or_default().iter().try_fold(0, |widest, arg| {
                Capped::measure(|w| write!(w, "{arg}")).map(|n| n.max(widest))
            })?;
            let printed = text(0).matches('%').count().checked_mul(widest);
            let widths = widths.try_fold(text(0).len(), usize::checked_add);
            // minijinja slices a `%(key)` byte by byte and panics inside a multi-byte
            // character (found by the `template` fuzz target): keys must be ASCII.
            let ascii_keys = text(0)
                .split("%(")
                .skip(1)
                .all(|rest| rest.split(')').next().is_some_and(str::is_ascii));
            if !ascii_keys || text(0).contains('*') {
                return Err(fail(NOT_SUPPORTED));
            }
            fits(printed.zip(widths).and_then(|(p, w)| p.checked_add(w)))
        }
        "tojson" => largest <= 16 && json_len(args.first(), largest).is_ok(),
        "pprint" => Capped::measure(|w| write!(w, "{:#?}", args.first().cloned().unwrap_or_default())).is_ok(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(fail(TOO_LARGE))
    }
}

/// Serialises `value` as `tojson` would, counting bytes up to `MAX_STRING_BYTES`.
fn json_len(value: Option<&Value>, indent: usize) -> Result<usize, serde_json::Error> {
    use serde::Serialize;
    let spaces = vec![b' '; indent];
    let mut counter = Counter(0);
    let mut json =
        serde_json::Serializer::with_formatter(&mut counter, serde_json::ser::PrettyFormatter::with_indent(&spaces));
    value.serialize(&mut json)?;
    Ok(counter.0)
}

/// Counts bytes written, refusing past `MAX_STRING_BYTES`.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > MAX_STRING_BYTES {
            return Err(std::io::Error::other("too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Registers the built-in filters and tests, each behind its guard.
pub fn register(env: &mut Environment<'_>) {
    for (name, filter, guard) in builtin_filters() {
        env.add_filter(name, move |state: &State, args: Rest<Value>| {
            for arg in args.iter() {
                check_argument(guard, arg)?;
            }
            extra(name, &args)?;
            let out = filter.call(state, &args)?;
            if guard != Guard::Free {
                check_built(&out)?;
                charge_value(&out)?;
            }
            Ok(out)
        });
    }
    let compare = [
        ("eq", tests::is_eq as fn(&Value, &Value) -> bool),
        ("equalto", tests::is_eq),
        ("==", tests::is_eq),
        ("ne", tests::is_ne),
        ("!=", tests::is_ne),
        ("lt", tests::is_lt),
        ("lessthan", tests::is_lt),
        ("<", tests::is_lt),
        ("le", tests::is_le),
        ("<=", tests::is_le),
        ("gt", tests::is_gt),
        ("greaterthan", tests::is_gt),
        (">", tests::is_gt),
        ("ge", tests::is_ge),
        (">=", tests::is_ge),
    ];
    for (name, test) in compare {
        env.add_test(name, move |a: &Value, b: &Value| -> Result<bool, Error> {
            charge_value(a)?;
            charge_value(b)?;
            Ok(test(a, b))
        });
    }
    let text_tests = [
        ("in", Value::from_function(tests::is_in)),
        ("startingwith", Value::from_function(tests::is_startingwith)),
        ("endingwith", Value::from_function(tests::is_endingwith)),
        ("lower", Value::from_function(tests::is_lower)),
        ("upper", Value::from_function(tests::is_upper)),
    ];
    for (name, test) in text_tests {
        env.add_test(name, move |state: &State, args: Rest<Value>| -> Result<bool, Error> {
            for arg in args.iter() {
                check_argument(Guard::Text, arg)?;
            }
            test.call(state, &args).map(|v| v.is_true())
        });
    }
}
