//! A tenant's template source, rewritten so that every operation whose cost depends on the
//! size of its operands goes through a checked function of [`super::limits`].
//!
//! minijinja lets filters, tests and functions be replaced, but not its operators: `*`, `+`
//! and `~` build strings and lists of any size in one instruction, and `==`, `in`,
//! slicing and indexing walk values of any size. So the template is parsed, and the source
//! text is edited at the parsed spans before it is compiled:
//!
//! - `a * b`, `a + b`, `a ~ b` become `__flowgate_mul(a, b)`, `__flowgate_add(a, b)`,
//!   `__flowgate_concat(a, b)` (checked sizes, charged to the render's budget);
//! - each operand of a comparison (`==`, `<`, `in`, ...), the value being sliced and the
//!   arguments of a method call (`loop.changed(x)`) are wrapped in `__flowgate_cost(..)`,
//!   which charges the value's size and returns it unchanged; an indexed value is wrapped in
//!   `__flowgate_index(..)`, which charges only lazy sequences (indexing them walks them);
//! - the value of every `{% set %}` is wrapped in `__flowgate_keep(..)`, which charges it
//!   and bounds its nesting depth (a namespace could otherwise nest a list 10,000 deep).
//!
//! Constructs that capture output outside the capped writer (`macro`, `call`, set and
//! filter blocks, recursive loops) or read another flow's template (`include`, `import`,
//! `extends`, `block`) are refused, as is any use of the `__flowgate_` prefix. Newlines
//! are kept, so errors name the line of the tenant's source. An edit only ever drops
//! parentheses, whitespace and the operator itself; if a span would drop anything else the
//! template is refused rather than rewritten wrongly. Last, the result is parsed again and
//! checked: every operator and operand the rewrite guards must be guarded, whatever the
//! spans said, or the template is refused.

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};
use minijinja::machinery::{parse, Span, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;

/// Why a template was refused: `syntax error at line 3: macros are not supported`.
pub type Refusal = String;

/// Names the rewrite introduces; a template may not use them itself.
pub const PREFIX: &str = "__flowgate_";

/// Rewrites `source` (see the module documentation); the error is a compile error.
pub fn rewrite(source: &str) -> Result<String, Refusal> {
    if source.contains(PREFIX) {
        return Err(refuse(None, "names starting with `__flowgate_` are reserved"));
    }
    let ast =
        parse(source, "<template>", SyntaxConfig, WhitespaceConfig::default()).map_err(|e| super::describe(&e))?;
    let mut edits = Edits {
        source,
        list: Vec::new(),
        verify: false,
    };
    edits.stmt(&ast)?;
    let rewritten = edits.apply()?;
    // The spans are minijinja's; rather than trust them, parse the result and check that
    // every operation the rewrite should have guarded is guarded.
    let layout = || refuse(None, "unsupported expression layout");
    let ast = parse(&rewritten, "<template>", SyntaxConfig, WhitespaceConfig::default()).map_err(|_| layout())?;
    let mut check = Edits {
        source: &rewritten,
        list: Vec::new(),
        verify: true,
    };
    check.stmt(&ast).map_err(|_| layout())?;
    Ok(rewritten)
}

fn refuse(span: Option<Span>, what: &str) -> Refusal {
    match span {
        Some(span) => format!("syntax error at line {}: {what}", span.start_line),
        None => format!("syntax error: {what}"),
    }
}

/// Replacements of `start..end` by `text`, in the order they were made (outer before inner).
struct Edits<'s> {
    source: &'s str,
    list: Vec<(usize, usize, String)>,
    /// Instead of editing, check that the source is already rewritten.
    verify: bool,
}

/// Where `expr` starts and ends in the source: its span joined with its operands' (a
/// filter's or test's own span starts at its name, not at the value it applies to).
fn extent(expr: &Expr<'_>) -> (usize, usize) {
    let span = expr.span();
    let own = (span.start_offset as usize, span.end_offset as usize);
    let args = |args: &[CallArg<'_>]| -> Vec<(usize, usize)> {
        args.iter()
            .map(|arg| {
                let (CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e)) = arg;
                extent(e)
            })
            .collect()
    };
    let parts: Vec<(usize, usize)> = match expr {
        Expr::Var(_) | Expr::Const(_) => Vec::new(),
        Expr::Slice(s) => std::iter::once(&s.expr)
            .chain([&s.start, &s.stop, &s.step].into_iter().flatten())
            .map(extent)
            .collect(),
        Expr::UnaryOp(u) => vec![extent(&u.expr)],
        Expr::BinOp(b) => vec![extent(&b.left), extent(&b.right)],
        Expr::Compare(c) => std::iter::once(&c.expr)
            .chain(c.ops.iter().map(|op| &op.expr))
            .map(extent)
            .collect(),
        Expr::IfExpr(i) => [Some(&i.test_expr), Some(&i.true_expr), i.false_expr.as_ref()]
            .into_iter()
            .flatten()
            .map(extent)
            .collect(),
        Expr::Filter(f) => f.expr.iter().map(extent).chain(args(&f.args)).collect(),
        Expr::Test(t) => std::iter::once(extent(&t.expr)).chain(args(&t.args)).collect(),
        Expr::GetAttr(g) => vec![extent(&g.expr)],
        Expr::GetItem(g) => vec![extent(&g.expr), extent(&g.subscript_expr)],
        Expr::Call(c) => std::iter::once(extent(&c.expr)).chain(args(&c.args)).collect(),
        Expr::List(l) => l.items.iter().map(extent).collect(),
        Expr::Map(m) => m.keys.iter().chain(&m.values).map(extent).collect(),
    };
    parts.into_iter().fold(own, |(a, b), (c, d)| (a.min(c), b.max(d)))
}

impl Edits<'_> {
    /// Replaces `start..end` by `text`, keeping the newlines of what it drops; refuses to
    /// drop anything but parentheses, whitespace and `operator`.
    fn replace(&mut self, range: (usize, usize), text: &str, operator: &str, span: Span) -> Result<(), Refusal> {
        let (from, to) = range;
        let dropped = self
            .source
            .get(from..to)
            .ok_or_else(|| refuse(Some(span), "unsupported expression"))?;
        let rest = dropped.replacen(operator, "", 1);
        if !rest.chars().all(|c| c.is_whitespace() || c == '(' || c == ')') {
            return Err(refuse(Some(span), "unsupported expression layout"));
        }
        let newlines = dropped.matches('\n').count();
        self.list.push((from, to, format!("{text}{}", "\n".repeat(newlines))));
        Ok(())
    }

    /// `expr` becomes `function((expr))` (the inner parentheses keep a bare tuple one value).
    fn wrap(&mut self, function: &str, expr: &Expr<'_>) -> Result<(), Refusal> {
        if self.verify {
            let inner = match expr {
                Expr::Call(c) => match (&c.expr, c.args.as_slice()) {
                    (Expr::Var(v), [CallArg::Pos(inner)]) if v.id.strip_prefix(PREFIX) == Some(function) => inner,
                    _ => return Err(refuse(Some(expr.span()), "unguarded")),
                },
                _ => return Err(refuse(Some(expr.span()), "unguarded")),
            };
            return self.expr(inner);
        }
        let (from, to) = extent(expr);
        self.list.push((from, from, format!("{PREFIX}{function}((")));
        self.expr(expr)?;
        self.list.push((to, to, "))".to_string()));
        Ok(())
    }

    fn stmts(&mut self, stmts: &[Stmt<'_>]) -> Result<(), Refusal> {
        stmts.iter().try_for_each(|stmt| self.stmt(stmt))
    }

    fn stmt(&mut self, stmt: &Stmt<'_>) -> Result<(), Refusal> {
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::EmitRaw(_) => Ok(()),
            Stmt::ForLoop(f) if f.recursive => Err(refuse(Some(f.span()), "recursive loops are not supported")),
            Stmt::ForLoop(f) => {
                self.expr(&f.iter)?;
                if let Some(filter) = &f.filter_expr {
                    self.expr(filter)?;
                }
                self.stmts(&f.body)?;
                self.stmts(&f.else_body)
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr)?;
                self.stmts(&i.true_body)?;
                self.stmts(&i.false_body)
            }
            Stmt::WithBlock(w) => {
                for (_, value) in &w.assignments {
                    self.wrap("keep", value)?;
                }
                self.stmts(&w.body)
            }
            Stmt::Set(s) => self.wrap("keep", &s.expr),
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled)?;
                self.stmts(&a.body)
            }
            Stmt::Do(d) => self.call(&d.call.expr, &d.call.args),
            Stmt::SetBlock(s) => Err(refuse(Some(s.span()), "set blocks are not supported")),
            Stmt::FilterBlock(s) => Err(refuse(Some(s.span()), "filter blocks are not supported")),
            Stmt::Macro(s) => Err(refuse(Some(s.span()), "macros are not supported")),
            Stmt::CallBlock(s) => Err(refuse(Some(s.span()), "call blocks are not supported")),
            Stmt::Block(s) => Err(refuse(Some(s.span()), "blocks are not supported")),
            Stmt::Import(s) => Err(refuse(Some(s.span()), "a response template cannot import another")),
            Stmt::FromImport(s) => Err(refuse(Some(s.span()), "a response template cannot import another")),
            Stmt::Extends(s) => Err(refuse(Some(s.span()), "a response template cannot extend another")),
            Stmt::Include(s) => Err(refuse(Some(s.span()), "a response template cannot include another")),
        }
    }

    fn args(&mut self, args: &[CallArg<'_>], wrap: bool) -> Result<(), Refusal> {
        for arg in args {
            let (CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e)) = arg;
            if wrap {
                self.wrap("cost", e)?;
            } else {
                self.expr(e)?;
            }
        }
        Ok(())
    }

    fn call(&mut self, callee: &Expr<'_>, args: &[CallArg<'_>]) -> Result<(), Refusal> {
        self.expr(callee)?;
        // A method (`loop.changed(x)`, `loop.cycle(..)`) compares or keeps its arguments.
        self.args(args, matches!(callee, Expr::GetAttr(_)))
    }

    fn expr(&mut self, expr: &Expr<'_>) -> Result<(), Refusal> {
        match expr {
            Expr::Var(_) | Expr::Const(_) => Ok(()),
            Expr::Slice(s) => {
                self.wrap("cost", &s.expr)?;
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part)?;
                }
                Ok(())
            }
            Expr::UnaryOp(u) => self.expr(&u.expr),
            Expr::BinOp(b) => {
                let (function, operator) = match b.op {
                    BinOpKind::Add => ("add", "+"),
                    BinOpKind::Mul => ("mul", "*"),
                    BinOpKind::Concat => ("concat", "~"),
                    BinOpKind::Eq
                    | BinOpKind::Ne
                    | BinOpKind::Lt
                    | BinOpKind::Lte
                    | BinOpKind::Gt
                    | BinOpKind::Gte
                    | BinOpKind::In => {
                        self.wrap("cost", &b.left)?;
                        return self.wrap("cost", &b.right);
                    }
                    _ => {
                        self.expr(&b.left)?;
                        return self.expr(&b.right);
                    }
                };
                if self.verify {
                    return Err(refuse(Some(b.span()), "unguarded"));
                }
                let (whole, left, right) = (extent(expr), extent(&b.left), extent(&b.right));
                let span = b.span();
                self.replace((whole.0, left.0), &format!("{PREFIX}{function}("), "", span)?;
                self.expr(&b.left)?;
                self.replace((left.1, right.0), ", ", operator, span)?;
                self.expr(&b.right)?;
                self.replace((right.1, whole.1), ")", "", span)
            }
            Expr::Compare(c) => {
                self.wrap("cost", &c.expr)?;
                c.ops.iter().try_for_each(|op| self.wrap("cost", &op.expr))
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr)?;
                self.expr(&i.true_expr)?;
                i.false_expr.as_ref().map_or(Ok(()), |e| self.expr(e))
            }
            Expr::Filter(f) => {
                if let Some(e) = &f.expr {
                    self.expr(e)?;
                }
                self.args(&f.args, false)
            }
            Expr::Test(t) => {
                self.expr(&t.expr)?;
                self.args(&t.args, false)
            }
            Expr::GetAttr(g) => self.expr(&g.expr),
            Expr::GetItem(g) => {
                self.wrap("index", &g.expr)?;
                self.expr(&g.subscript_expr)
            }
            Expr::Call(c) => self.call(&c.expr, &c.args),
            Expr::List(l) => l.items.iter().try_for_each(|e| self.expr(e)),
            Expr::Map(m) => m.keys.iter().chain(&m.values).try_for_each(|e| self.expr(e)),
        }
    }

    /// The rewritten source: edits applied in source order (stable, so an outer edit at the
    /// same offset as an inner one comes first).
    fn apply(mut self) -> Result<String, Refusal> {
        self.list.sort_by_key(|(from, _, _)| *from);
        let mut out = String::with_capacity(self.source.len() * 2);
        let mut at = 0;
        for (from, to, text) in &self.list {
            let kept = self
                .source
                .get(at..*from)
                .ok_or_else(|| refuse(None, "unsupported expression layout"))?;
            out.push_str(kept);
            out.push_str(text);
            at = *to;
        }
        out.push_str(self.source.get(at..).unwrap_or_default());
        Ok(out)
    }
}
