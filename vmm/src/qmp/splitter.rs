//! Cuts a QMP byte stream into JSON messages, as QEMU's json-streamer
//! does: it tracks brace and bracket nesting outside strings, so objects
//! may arrive split across reads or several in one read. Oversize or too
//! deeply nested input is skipped up to the end of the value it belongs to
//! and reported once, so the connection carries on after it.

/// Largest message accepted, in bytes (QEMU: MAX_TOKEN_SIZE).
pub const MAX_MESSAGE: usize = 64 << 10;
/// Deepest nesting accepted (QEMU: MAX_NESTING).
pub const MAX_DEPTH: usize = 64;

/// One thing the splitter found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A complete value (or stray top-level text) for the JSON parser.
    Message(Vec<u8>),
    /// A value longer than [`MAX_MESSAGE`]; it was skipped.
    TooLarge,
    /// A value nested deeper than [`MAX_DEPTH`]; it was skipped.
    TooDeep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    No,
    Large,
    Deep,
}

/// The splitter's state between reads.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Top-level text that is not an object or array (a parse error to be).
    junk: bool,
    skip: Skip,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new()
    }
}

impl Splitter {
    pub fn new() -> Self {
        Splitter {
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            junk: false,
            skip: Skip::No,
        }
    }

    /// Feeds bytes read from the peer; returns what they completed.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        for &b in data {
            self.byte(b, &mut out);
        }
        out
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Item>) {
        if self.junk {
            if b.is_ascii_whitespace() || b == b'{' || b == b'[' {
                self.junk = false;
                self.emit(out);
            } else {
                self.push(b);
                return;
            }
        }
        if self.depth == 0 && !self.in_string {
            match b {
                b'{' | b'[' => {}
                _ if b.is_ascii_whitespace() => return,
                _ => {
                    self.junk = true;
                    self.push(b);
                    return;
                }
            }
        }
        self.push(b);
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH && self.skip == Skip::No {
                    self.skip = Skip::Deep;
                    self.buf = Vec::new();
                }
            }
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    self.emit(out);
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, b: u8) {
        if self.skip != Skip::No {
            return;
        }
        if self.buf.len() >= MAX_MESSAGE {
            self.skip = Skip::Large;
            self.buf = Vec::new();
            return;
        }
        self.buf.push(b);
    }

    /// Ends the current value and resets for the next one.
    fn emit(&mut self, out: &mut Vec<Item>) {
        let item = match self.skip {
            Skip::No => Item::Message(std::mem::take(&mut self.buf)),
            Skip::Large => Item::TooLarge,
            Skip::Deep => Item::TooDeep,
        };
        out.push(item);
        self.buf.clear();
        self.skip = Skip::No;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(items: Vec<Item>) -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Message(m) => String::from_utf8(m).unwrap(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn objects_split_across_reads_and_several_per_read() {
        let mut s = Splitter::new();
        assert!(s.feed(b" {\"execute\": \"qu").is_empty());
        assert_eq!(msgs(s.feed(b"it\"}\n")), [r#"{"execute": "quit"}"#]);
        assert_eq!(
            msgs(s.feed(b"{\"a\":1}{\"b\":[2]}\r\n{\"c\"")),
            [r#"{"a":1}"#, r#"{"b":[2]}"#]
        );
        assert_eq!(msgs(s.feed(b":3}")), [r#"{"c":3}"#]);
    }

    #[test]
    fn braces_in_strings_and_escaped_quotes_do_not_count() {
        let mut s = Splitter::new();
        let m = br#"{"a":"}{\"]","b":"\\"}"#;
        assert_eq!(msgs(s.feed(m)), [String::from_utf8(m.to_vec()).unwrap()]);
    }

    #[test]
    fn stray_text_becomes_a_message_for_the_parser() {
        let mut s = Splitter::new();
        assert_eq!(msgs(s.feed(b"hello {\"x\":1}")), ["hello", r#"{"x":1}"#]);
        assert_eq!(msgs(s.feed(b"} ")), ["}"]);
    }

    #[test]
    fn too_deep_and_too_large_are_skipped_and_the_stream_goes_on() {
        let mut s = Splitter::new();
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(msgs(s.feed(deep.as_bytes())), ["TooDeep"]);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(msgs(s.feed(ok.as_bytes())), [ok]);
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_MESSAGE));
        for chunk in big.as_bytes().chunks(1000) {
            let items = s.feed(chunk);
            if !items.is_empty() {
                assert_eq!(msgs(items), ["TooLarge"]);
            }
        }
        assert_eq!(msgs(s.feed(b"{\"b\":2}")), [r#"{"b":2}"#]);
        let junk = vec![b'x'; MAX_MESSAGE + 10];
        assert!(s.feed(&junk).is_empty());
        assert_eq!(msgs(s.feed(b" ")), ["TooLarge"]);
    }
}
