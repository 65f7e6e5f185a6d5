//! Reading a directory answer a piece at a time, from slices of any size: a full document
//! `{"flows": [...]}` or changes only, `{"version", "changed": [...], "removed": [...]}`
//! (contract 4.1). Only the answer's shape is checked here; entries are checked as they
//! apply. Each value is read by serde_json; this walks the punctuation between them.

use std::ops::Range;

use serde_json::value::RawValue;

/// What an answer holds: every flow, or only what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Full,
    Changes,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// The directory's version, for the next `?since=`.
    Version(String),
    /// A flow entry of `flows` or `changed`: its bytes are [`Scan::text`] until the next item.
    Entry(Range<usize>),
    /// An id of `removed`.
    Removed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Entries,
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Key { first: bool },
    Member,
    Array { field: Field, first: bool },
    Element(Field),
    End,
}

/// An answer being read; [`Scan::next`] asks for the next slice when it needs one.
#[derive(Debug)]
pub struct Scan {
    buffer: Vec<u8>,
    at: usize,
    state: State,
    form: Option<Form>,
}

enum Read<T> {
    Got(T),
    More,
}
use Read::{Got, More};

impl Default for Scan {
    fn default() -> Self {
        Scan {
            buffer: Vec::new(),
            at: 0,
            state: State::Open,
            form: None,
        }
    }
}

impl Scan {
    pub fn form(&self) -> Option<Form> {
        self.form
    }

    /// An entry's bytes.
    pub fn text(&self, range: Range<usize>) -> &[u8] {
        self.buffer.get(range).unwrap_or_default()
    }

    /// The next item; `None` once the answer has ended well. `more` gives the next slice.
    pub fn next(&mut self, more: &mut dyn FnMut() -> Option<Vec<u8>>) -> Result<Option<Item>, String> {
        loop {
            match self.step()? {
                Got(Some(item)) => return Ok(Some(item)),
                Got(None) => {}
                // Past the end, only white space may follow.
                More if self.state == State::End => match more() {
                    Some(slice) => self.buffer.extend_from_slice(&slice),
                    None => {
                        return match self.form {
                            Some(_) => Ok(None),
                            None => Err("no \"flows\" field".into()),
                        }
                    }
                },
                More => {
                    let slice = more().ok_or("the answer ends early")?;
                    self.buffer.drain(..self.at.min(self.buffer.len()));
                    self.at = 0;
                    self.buffer.extend_from_slice(&slice);
                }
            }
        }
    }

    /// One move of the walk: an item, nothing yet, or a need for more bytes.
    fn step(&mut self) -> Result<Read<Option<Item>>, String> {
        let Some(&byte) = self.skip_space() else {
            return Ok(More);
        };
        let unexpected = |what: &str| Err(format!("not a flow directory: expected {what}"));
        match (self.state, byte) {
            (State::Open, b'{') => self.punctuation(State::Key { first: true }),
            (State::Open, _) => unexpected("an object"),
            (State::Key { first: true }, b'}') | (State::Member, b'}') => self.punctuation(State::End),
            (State::Member, b',') => self.punctuation(State::Key { first: false }),
            (State::Member, _) => unexpected("`,` or `}`"),
            (State::Key { .. }, b'"') => self.member(),
            (State::Key { .. }, _) => unexpected("a field name"),
            (State::Array { first: true, .. }, b']') | (State::Element(_), b']') => self.punctuation(State::Member),
            (State::Element(field), b',') => self.punctuation(State::Array { field, first: false }),
            (State::Element(_), _) => unexpected("`,` or `]`"),
            (State::Array { field, .. }, _) => {
                let Got(range) = self.value()? else {
                    return Ok(More);
                };
                self.state = State::Element(field);
                Ok(Got(Some(match field {
                    Field::Entries => Item::Entry(range),
                    Field::Removed => Item::Removed(
                        serde_json::from_slice(self.text(range))
                            .map_err(|_| "\"removed\" must list ids".to_string())?,
                    ),
                })))
            }
            (State::End, _) => unexpected("nothing after the answer"),
        }
    }

    /// A field name, its colon and (for the fields a directory answer has) what follows.
    fn member(&mut self) -> Result<Read<Option<Item>>, String> {
        let start = self.at;
        let Got(name) = self.value()? else {
            return Ok(More);
        };
        let name: String = serde_json::from_slice(self.text(name)).map_err(|e| format!("not a flow directory: {e}"))?;
        match self.skip_space() {
            None => {
                self.at = start;
                return Ok(More);
            }
            Some(b':') => self.at += 1,
            Some(_) => return Err("not a flow directory: expected `:`".into()),
        }
        if self.skip_space().is_none() {
            self.at = start;
            return Ok(More);
        }
        let field = match name.as_str() {
            "flows" => Some((Form::Full, Field::Entries)),
            "changed" => Some((Form::Changes, Field::Entries)),
            "removed" => Some((Form::Changes, Field::Removed)),
            _ => None,
        };
        if let Some((form, field)) = field {
            if self.form.is_some_and(|known| known != form) {
                return Err("an answer holds either \"flows\" or \"changed\"/\"removed\"".into());
            }
            if self.buffer.get(self.at) != Some(&b'[') {
                return Err(format!("\"{name}\" is not an array"));
            }
            self.form = Some(form);
            self.at += 1;
            self.state = State::Array { field, first: true };
            return Ok(Got(None));
        }
        let Got(value) = self.value()? else {
            self.at = start;
            return Ok(More);
        };
        self.state = State::Member;
        if name != "version" {
            return Ok(Got(None));
        }
        let version = match serde_json::from_slice::<serde_json::Value>(self.text(value)) {
            Ok(serde_json::Value::String(version)) => version,
            Ok(number @ serde_json::Value::Number(_)) => number.to_string(),
            _ => return Err("\"version\" must be a string".into()),
        };
        Ok(Got(Some(Item::Version(version))))
    }

    fn punctuation(&mut self, next: State) -> Result<Read<Option<Item>>, String> {
        self.at += 1;
        self.state = next;
        Ok(Got(None))
    }

    /// The next byte that is not white space, if there is one yet.
    fn skip_space(&mut self) -> Option<&u8> {
        while self.buffer.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
        self.buffer.get(self.at)
    }

    /// The range of the JSON value at `at`, read past.
    fn value(&mut self) -> Result<Read<Range<usize>>, String> {
        let rest = self.buffer.get(self.at..).unwrap_or_default();
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<&RawValue>();
        match values.next() {
            // A value that ends the slice may go on in the next (a number), and a whole answer
            // never ends with one: read it again with more.
            Some(Ok(_)) if values.byte_offset() == rest.len() => Ok(More),
            Some(Ok(raw)) => {
                let start = self.at + (raw.get().as_ptr() as usize - rest.as_ptr() as usize);
                let end = self.at + values.byte_offset();
                self.at = end;
                Ok(Got(start..end))
            }
            Some(Err(e)) if e.is_eof() || at_end(&e, rest) => Ok(More),
            None => Ok(More),
            Some(Err(e)) => Err(format!("not a flow directory: {e}")),
        }
    }
}

/// Whether a syntax error is at the last byte of `text` (a number cut by the slice's end,
/// `1.` or `-`, is invalid rather than unfinished to serde_json).
fn at_end(error: &serde_json::Error, text: &[u8]) -> bool {
    let line_start = match error.line() {
        0 | 1 => 0,
        line => text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(text.len(), |(at, _)| at + 1),
    };
    line_start + error.column() >= text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of `answer` read in slices of `size` bytes, as text.
    fn read(answer: &[u8], size: usize) -> Result<(Option<Form>, Vec<String>), String> {
        let mut slices = answer.chunks(size).map(<[u8]>::to_vec);
        let mut scan = Scan::default();
        let mut items = Vec::new();
        while let Some(item) = scan.next(&mut || slices.next())? {
            items.push(match item {
                Item::Version(v) => format!("version {v}"),
                Item::Entry(range) => String::from_utf8_lossy(scan.text(range)).into_owned(),
                Item::Removed(id) => format!("removed {id}"),
            });
        }
        Ok((scan.form(), items))
    }

    #[test]
    fn full_documents_and_changes_read_alike_in_slices_of_any_size() {
        let full = br#" {"x": {"flows": 1}, "flows": [ {"id": "a", "s": "]}"} , 7,"s"], "version": "9"} "#;
        let changes = br#"{"version":12,"changed":[{"id":"b","n":-1.5e3}],"removed":["c", "d"]}"#;
        for size in [1, 2, 3, 7, 64] {
            assert_eq!(
                read(full, size).unwrap(),
                (
                    Some(Form::Full),
                    vec![
                        r#"{"id": "a", "s": "]}"}"#.into(),
                        "7".into(),
                        r#""s""#.into(),
                        "version 9".into()
                    ]
                ),
                "slices of {size}"
            );
            let expected = vec![
                "version 12".into(),
                r#"{"id":"b","n":-1.5e3}"#.into(),
                "removed c".into(),
                "removed d".into(),
            ];
            assert_eq!(read(changes, size).unwrap(), (Some(Form::Changes), expected));
        }
        assert_eq!(read(br#"{"flows": []}"#, 3).unwrap(), (Some(Form::Full), vec![]));
        assert_eq!(read(br#"{"removed": []}"#, 3).unwrap(), (Some(Form::Changes), vec![]));
    }

    #[test]
    fn answers_of_another_shape_are_refused() {
        let refused = |answer: &[u8]| read(answer, 5).unwrap_err();
        assert!(refused(b"<html>").starts_with("not a flow directory: expected an object"));
        assert!(refused(b"[]").starts_with("not a flow directory"));
        assert_eq!(refused(br#"{"flows": {}}"#), "\"flows\" is not an array");
        assert_eq!(refused(br#"{}"#), "no \"flows\" field");
        assert_eq!(refused(br#"{"flows": [1, 2"#), "the answer ends early");
        assert_eq!(
            refused(br#"{"flows": [1 2]}"#),
            "not a flow directory: expected `,` or `]`"
        );
        assert_eq!(
            refused(br#"{"flows": [], "changed": []}"#),
            "an answer holds either \"flows\" or \"changed\"/\"removed\""
        );
        assert_eq!(refused(br#"{"removed": [1]}"#), "\"removed\" must list ids");
        assert_eq!(
            refused(br#"{"flows": []} x"#),
            "not a flow directory: expected nothing after the answer"
        );
        assert_eq!(
            refused(br#"{"flows": [], "version": null}"#),
            "\"version\" must be a string"
        );
        assert!(refused(br#"{"flows": [tru]}"#).starts_with("not a flow directory: expected ident"));
    }
}
