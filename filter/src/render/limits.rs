//! The budget of one render: what a tenant's template may build, compare and walk.
//!
//! Fuel counts template instructions; this counts the work inside them. Every operation
//! whose cost grows with its operands (see [`super::rewrite`] for the operators, and the
//! filters and tests registered here) charges *units* to a per-render budget before it
//! runs: a string costs its bytes, every value (list item, map entry, scalar) costs
//! [`ITEM_UNITS`] more, nested values are walked. A render that spends more than
//! [`MAX_WORK`] units fails. Because a value can only be kept by an operation that was
//! charged for building it, the budget also bounds the memory a render holds; and no
//! single string or list an operation builds exceeds [`MAX_STRING_BYTES`] or [`MAX_ITEMS`],
//! so no operation allocates more than a few MiB at once.

use std::cell::Cell;
use std::fmt::{self, Write as _};

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// Largest string an operation or filter may build.
pub const MAX_STRING_BYTES: usize = 1024 * 1024;
/// Largest list an operation or filter may build, or iterate item by item.
pub const MAX_ITEMS: usize = 100_000;
/// Units one render may spend: about its peak memory in bytes, and about 0.1 s of work
/// natively at worst (text formatted with escapes is the slowest unit).
pub const MAX_WORK: u64 = 16 * 1024 * 1024;
/// Units per value: about what a value and its slot in a list occupy.
pub const ITEM_UNITS: u64 = 32;
/// Deepest nesting a kept value may have (request bodies parse to at most 127 levels).
const MAX_DEPTH: usize = 160;

/// The details a render error may carry into a reply: they name a limit, never a value.
pub const OVER_BUDGET: &str = "the template exceeds its work budget";
pub const TOO_LARGE: &str = "the template builds a string over 1 MiB or a list over 100,000 items";
pub const TOO_DEEP: &str = "the template nests values too deeply";
pub const NOT_SUPPORTED: &str = "this use of the filter is not supported";
pub const DETAILS: [&str; 4] = [OVER_BUDGET, TOO_LARGE, TOO_DEEP, NOT_SUPPORTED];

thread_local! {
    static SPENT: Cell<u64> = const { Cell::new(0) };
}

/// Starts a render's budget.
pub fn start_render() {
    SPENT.with(|spent| spent.set(0));
}

pub(super) fn fail(what: &'static str) -> Error {
    Error::new(ErrorKind::InvalidOperation, what)
}

pub(super) fn charge(units: u64) -> Result<(), Error> {
    SPENT.with(|spent| {
        let total = spent.get().saturating_add(units);
        spent.set(total);
        if total > MAX_WORK {
            Err(fail(OVER_BUDGET))
        } else {
            Ok(())
        }
    })
}

fn is_list(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// Charges `value` and everything it holds, walking no further than the budget allows
/// (a lazy list of a billion items fails after a few million) and no deeper than
/// `MAX_DEPTH`.
pub fn charge_value(value: &Value) -> Result<(), Error> {
    charge(ITEM_UNITS + value.as_str().map_or(0, |s| s.len() as u64))?;
    let mut open = Vec::new();
    if let Some(iter) = children(value) {
        open.push((value.clone(), iter));
    }
    while let Some((container, iter)) = open.last_mut() {
        let Some(item) = iter.next() else {
            open.pop();
            continue;
        };
        // A map yields its keys; its values are walked too.
        let entry = if container.kind() == ValueKind::Map {
            container.get_item(&item).ok()
        } else {
            None
        };
        for value in std::iter::once(item).chain(entry) {
            charge(ITEM_UNITS + value.as_str().map_or(0, |s| s.len() as u64))?;
            if let Some(iter) = children(&value) {
                if open.len() >= MAX_DEPTH {
                    return Err(fail(TOO_DEEP));
                }
                open.push((value, iter));
            }
        }
    }
    Ok(())
}

fn children(value: &Value) -> Option<minijinja::value::ValueIter> {
    match value.kind() {
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => value.try_iter().ok(),
        _ => None,
    }
}

/// Fails unless `value` is within the size of one built value.
pub(super) fn check_built(value: &Value) -> Result<(), Error> {
    let too_large = match value.as_str() {
        Some(s) => s.len() > MAX_STRING_BYTES,
        None => value.len().is_some_and(|n| n > MAX_ITEMS),
    };
    if too_large {
        Err(fail(TOO_LARGE))
    } else {
        Ok(())
    }
}

/// A `fmt::Write` that counts (or keeps) at most `MAX_STRING_BYTES`, then refuses.
pub(super) struct Capped {
    out: Option<String>,
    len: usize,
}

impl Capped {
    pub(super) fn measure(print: impl FnOnce(&mut Capped) -> fmt::Result) -> Result<usize, Error> {
        let mut capped = Capped { out: None, len: 0 };
        print(&mut capped).map_err(|_| fail(TOO_LARGE))?;
        Ok(capped.len)
    }
}

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.len += s.len();
        if self.len > MAX_STRING_BYTES {
            return Err(fmt::Error);
        }
        if let Some(out) = &mut self.out {
            out.push_str(s);
        }
        Ok(())
    }
}

/// `a ~ b`: both as text, at most `MAX_STRING_BYTES`.
fn concat(a: &Value, b: &Value) -> Result<Value, Error> {
    charge_value(a)?;
    charge_value(b)?;
    let mut capped = Capped {
        out: Some(String::new()),
        len: 0,
    };
    write!(capped, "{a}{b}").map_err(|_| fail(TOO_LARGE))?;
    built(Value::from(capped.out.unwrap_or_default()))
}

/// `a + b`: lists joined, strings joined, or numbers added.
fn add(a: &Value, b: &Value) -> Result<Value, Error> {
    if is_list(a) && is_list(b) {
        let items = collect(a, 1)?.into_iter().chain(collect(b, 1)?).collect::<Vec<_>>();
        return built(Value::from(items));
    }
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return built(Value::from([x, y].concat()));
    }
    numbers(a, b, i128::checked_add, |x, y| x + y)
}

/// `a * b`: a string or list repeated, or numbers multiplied.
fn mul(a: &Value, b: &Value) -> Result<Value, Error> {
    let (repeated, times) = if is_list(a) || a.as_str().is_some() {
        (a, b)
    } else {
        (b, a)
    };
    if let Some(s) = repeated.as_str() {
        let times = times
            .as_usize()
            .ok_or_else(|| fail("strings can only be multiplied with integers"))?;
        match s.len().checked_mul(times) {
            Some(len) if len <= MAX_STRING_BYTES => charge(len as u64 + ITEM_UNITS)?,
            _ => return Err(fail(TOO_LARGE)),
        }
        return Ok(Value::from(s.repeat(times)));
    }
    if is_list(repeated) {
        let times = times
            .as_usize()
            .ok_or_else(|| fail("lists can only be multiplied with integers"))?;
        let items = collect(repeated, times)?;
        // An empty list repeated a quintillion times is empty at once, not after a long loop.
        let times = if items.is_empty() { 0 } else { times };
        let repeated: Vec<Value> = (0..times).flat_map(|_| items.iter().cloned()).collect();
        return built(Value::from(repeated));
    }
    numbers(a, b, i128::checked_mul, |x, y| x * y)
}

/// The items of a list, after checking that `times` copies of them fit in `MAX_ITEMS`.
fn collect(list: &Value, times: usize) -> Result<Vec<Value>, Error> {
    let items: Vec<Value> = list.try_iter()?.take(MAX_ITEMS + 1).collect();
    match items.len().checked_mul(times) {
        Some(n) if n <= MAX_ITEMS => Ok(items),
        _ => Err(fail(TOO_LARGE)),
    }
}

/// Charges a value an operation built and checks its size.
fn built(value: Value) -> Result<Value, Error> {
    check_built(&value)?;
    charge_value(&value)?;
    Ok(value)
}

/// Arithmetic as minijinja does it: integers as i128 (overflow is an error), otherwise f64.
fn numbers(
    a: &Value,
    b: &Value,
    int: fn(i128, i128) -> Option<i128>,
    float: fn(f64, f64) -> f64,
) -> Result<Value, Error> {
    let is_float = |v: &Value| v.kind() == ValueKind::Number && !v.is_integer();
    if is_float(a) || is_float(b) {
        if let (Ok(x), Ok(y)) = (f64::try_from(a.clone()), f64::try_from(b.clone())) {
            return Ok(Value::from(float(x, y)));
        }
    } else if let (Ok(x), Ok(y)) = (i128::try_from(a.clone()), i128::try_from(b.clone())) {
        let result = int(x, y).ok_or_else(|| fail("integer overflow"))?;
        return Ok(i64::try_from(result).map_or_else(|_| Value::from(result), Value::from));
    }
    Err(fail("unsupported operand types"))
}

/// Registers the checked operators and filters on a template environment, and removes
/// `debug()` (it prints the whole context).
pub fn register(env: &mut Environment<'_>) {
    env.add_function("__flowgate_add", add);
    env.add_function("__flowgate_mul", mul);
    env.add_function("__flowgate_concat", concat);
    env.add_function("__flowgate_cost", |value: Value| charge_value(&value).map(|()| value));
    env.add_function("__flowgate_keep", |value: Value| charge_value(&value).map(|()| value));
    env.add_function("__flowgate_index", |value: Value| {
        let walks = value.kind() == ValueKind::Iterable || value.as_str().is_some();
        let charged = if walks { charge_value(&value) } else { Ok(()) };
        charged.map(|()| value)
    });
    env.remove_global("debug");
    super::filters::register(env);
}
