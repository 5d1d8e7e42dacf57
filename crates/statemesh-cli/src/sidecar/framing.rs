//! LSP-style framing: `Content-Length: N\r\n\r\n` followed by N bytes of body.
//!
//! [`FrameDecoder`] is a pure, incremental decoder: bytes in (in chunks of any size, split
//! anywhere), bodies and framing errors out. It never panics and never buffers more than
//! [`MAX_HEADER_BYTES`] of header or the announced body length, which is checked against the
//! limit before a single body byte is stored. After an error it resynchronises on its own:
//!
//! - a body longer than the limit is skipped exactly (its length is known), so the stream stays
//!   in step and the next message is read normally;
//! - a malformed header block (a line that is not `Name: value`, an invalid or missing
//!   `Content-Length`, a header block longer than [`MAX_HEADER_BYTES`]) makes the decoder
//!   discard input up to the next occurrence of `Content-Length:` (any case, anywhere), where
//!   it starts reading headers again. The search starts at the second byte of the offending
//!   line — so a message right behind garbage on the same line is found — or, for a block
//!   without `Content-Length`, at the block's second byte; for a header block too long, at its
//!   first byte past the limit. One error is reported per malformed block.
//!
//! How the input is cut into chunks never changes what is decoded.
//!
//! Header lines end with `\r\n` (a bare `\n` is tolerated); names are case-insensitive; headers
//! other than `Content-Length` (such as `Content-Type`) are accepted and ignored. Empty lines
//! between messages are ignored.

/// The longest header block (all header lines of one message), in bytes.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The default limit on one message body: 16 MiB.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

const CONTENT_LENGTH: &[u8] = b"content-length";
/// What resynchronisation looks for (compared ignoring case).
const RESYNC_ON: &[u8] = b"Content-Length:";

/// Frames `body` for the wire: `Content-Length: <len>\r\n\r\n<body>`.
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Something wrong with the framing of the input stream. The decoder has already recovered
/// (see the module documentation); the error is for reporting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A header line is not of the form `Name: value`.
    #[error(
        "invalid header line {line:?}: expected `Content-Length: <bytes>`; input skipped up to the next Content-Length header"
    )]
    InvalidHeader {
        /// The start of the offending line (lossily decoded, at most 64 characters).
        line: String,
    },
    /// The `Content-Length` value is not a decimal number, or two differ.
    #[error(
        "invalid Content-Length {value:?}: expected one decimal number of bytes; input skipped up to the next Content-Length header"
    )]
    InvalidContentLength {
        /// The offending value (at most 64 characters).
        value: String,
    },
    /// A header block ended without a `Content-Length` header.
    #[error(
        "header block without Content-Length; input skipped up to the next Content-Length header"
    )]
    MissingContentLength,
    /// A header block was longer than [`MAX_HEADER_BYTES`].
    #[error(
        "header block longer than {MAX_HEADER_BYTES} bytes; input skipped up to the next Content-Length header"
    )]
    HeaderTooLarge,
    /// A body was longer than the limit; it was skipped without being stored.
    #[error("message of {length} bytes exceeds the limit of {max} bytes; skipped")]
    TooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        max: usize,
    },
}

/// What the decoder found in its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete message body (not yet checked to be UTF-8 or JSON).
    Body(Vec<u8>),
    /// A framing error, already recovered from.
    Error(FrameError),
}

#[derive(Debug)]
enum State {
    /// Reading header lines.
    Header,
    /// Reading a body of this many bytes.
    Body(usize),
    /// Discarding this many bytes of an oversize body.
    Skip(u64),
}

/// An incremental decoder of `Content-Length`-framed messages. See the module documentation.
#[derive(Debug)]
pub struct FrameDecoder {
    max_body: usize,
    state: State,
    /// The current header block, complete lines and the current partial line (or the body).
    buf: Vec<u8>,
    /// Where the current header line starts in `buf`.
    line_start: usize,
    /// Whether the current header block has any header line yet.
    in_block: bool,
    /// The Content-Length seen in the current header block.
    length: Option<u64>,
    /// Discarding input until `Content-Length:`; the value is how much of it matched so far.
    resync: Option<usize>,
}

impl FrameDecoder {
    /// A decoder refusing bodies longer than `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self {
            max_body,
            state: State::Header,
            buf: Vec::new(),
            line_start: 0,
            in_block: false,
            length: None,
            resync: None,
        }
    }

    /// The body limit.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Bytes currently held (a partial header block or body): never more than
    /// [`MAX_HEADER_BYTES`] or the announced body length.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the decoder is between messages (nothing partial is held). At the end of the
    /// input, `false` means the stream was cut inside a message.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header)
            && self.buf.is_empty()
            && !self.in_block
            && self.resync.is_none()
    }

    /// Feeds `input` (any chunk of the stream) and returns what it completed, in order.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        // Bytes of malformed header blocks to search again (see `header_chunk`), each with how
        // far it was read; the innermost last. Each is read before the rest of what held it.
        let mut again: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut at = 0;
        loop {
            let (bytes, from) = match again.last() {
                Some((b, from)) => (b.as_slice(), *from),
                None => (input, at),
            };
            if from >= bytes.len() {
                if again.pop().is_none() {
                    return out;
                }
                continue;
            }
            let (used, rescan) = self.step(&bytes[from..], &mut out);
            match again.last_mut() {
                Some((_, from)) => *from += used,
                None => at += used,
            }
            if let Some(rescan) = rescan {
                again.push((rescan, 0));
            }
        }
    }

    /// Reads the start of `input` (not empty): part of a body, or up to one header line end.
    /// Returns how many bytes it used, and bytes to search again for `Content-Length:` before
    /// the rest of the input (after a malformed header block).
    fn step(&mut self, input: &[u8], out: &mut Vec<Decoded>) -> (usize, Option<Vec<u8>>) {
        match self.state {
            State::Skip(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::Header
                } else {
                    State::Skip(left)
                };
                (n, None)
            }
            State::Body(len) => {
                let n = (len - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..n]);
                if self.buf.len() == len {
                    out.push(Decoded::Body(std::mem::take(&mut self.buf)));
                    self.state = State::Header;
                }
                (n, None)
            }
            State::Header => {
                let (line_end, used) = match input.iter().position(|b| *b == b'\n') {
                    Some(i) => (true, i + 1),
                    None => (false, input.len()),
                };
                (used, self.header_chunk(&input[..used], line_end, out))
            }
        }
    }

    /// Handles part of a header line (`line_end`: the chunk ends with the line's `\n`). Returns
    /// the bytes to search again when this completed a malformed header block: from the second
    /// byte of the offending line, or of a block without `Content-Length` (a message may start
    /// right behind garbage, on the same line).
    ///
    /// What is found does not depend on how the stream was cut into chunks: in particular,
    /// the bytes of a header block past [`MAX_HEADER_BYTES`] are searched for the next
    /// `Content-Length:` exactly as if a chunk had ended at the limit, and only complete lines
    /// are searched again.
    fn header_chunk(
        &mut self,
        mut chunk: &[u8],
        line_end: bool,
        out: &mut Vec<Decoded>,
    ) -> Option<Vec<u8>> {
        loop {
            if let Some(matched) = self.resync {
                match resync_scan(matched, chunk) {
                    Ok(found) => {
                        // Found: read headers again, starting with this one.
                        self.resync = None;
                        self.buf.clear();
                        self.buf.extend_from_slice(RESYNC_ON);
                        self.line_start = 0;
                        chunk = &chunk[found..];
                    }
                    Err(matched) => {
                        self.resync = Some(matched);
                        return None;
                    }
                }
            }
            let room = MAX_HEADER_BYTES - self.buf.len();
            if chunk.len() > room {
                out.push(Decoded::Error(FrameError::HeaderTooLarge));
                self.start_resync();
                // The bytes up to the limit are dropped; the rest is searched.
                chunk = &chunk[room..];
                continue;
            }
            self.buf.extend_from_slice(chunk);
            if !line_end {
                return None;
            }
            let mut line = &self.buf[self.line_start..];
            line = line.strip_suffix(b"\n").unwrap_or(line);
            line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                return self.end_of_block(out);
            }
            match parse_header_line(line) {
                Ok(Some((n, _))) if self.length.is_none_or(|m| m == n) => self.length = Some(n),
                Ok(Some((_, value))) => {
                    let e = FrameError::InvalidContentLength {
                        value: excerpt(value),
                    };
                    return Some(self.malformed(e, self.line_start + 1, out));
                }
                Ok(None) => {}
                Err(e) => return Some(self.malformed(e, self.line_start + 1, out)),
            }
            self.in_block = true;
            self.line_start = self.buf.len();
            return None;
        }
    }

    /// Reports `e` for the current header block and starts resynchronising; returns the
    /// block's bytes from `from` on, to be searched again.
    fn malformed(&mut self, e: FrameError, from: usize, out: &mut Vec<Decoded>) -> Vec<u8> {
        out.push(Decoded::Error(e));
        let rescan = self.buf.get(from..).unwrap_or_default().to_vec();
        self.start_resync();
        rescan
    }

    fn end_of_block(&mut self, out: &mut Vec<Decoded>) -> Option<Vec<u8>> {
        if !self.in_block {
            // A stray empty line between messages.
            self.buf.clear();
            self.line_start = 0;
            return None;
        }
        let Some(n) = self.length.take() else {
            // The block held no Content-Length header: one may still start inside it, behind
            // garbage that made a valid header name (`garbageContent-Length: 2`).
            return Some(self.malformed(FrameError::MissingContentLength, 1, out));
        };
        self.in_block = false;
        self.line_start = 0;
        self.buf.clear();
        match usize::try_from(n) {
            Ok(0) => out.push(Decoded::Body(Vec::new())),
            Ok(n) if n <= self.max_body => {
                // Grown as bytes arrive: the announced length is not trusted up front.
                self.buf = Vec::with_capacity(n.min(64 * 1024));
                self.state = State::Body(n);
            }
            _ => {
                out.push(Decoded::Error(FrameError::TooLarge {
                    length: n,
                    max: self.max_body,
                }));
                self.state = State::Skip(n);
            }
        }
        None
    }

    fn start_resync(&mut self) {
        self.resync = Some(0);
        self.buf.clear();
        self.line_start = 0;
        self.in_block = false;
        self.length = None;
    }
}

/// Parses one header line (without its line end): `Ok(Some((length, value)))` for a
/// `Content-Length` header, `Ok(None)` for another header.
fn parse_header_line(line: &[u8]) -> Result<Option<(u64, &[u8])>, FrameError> {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return Err(FrameError::InvalidHeader {
            line: excerpt(line),
        });
    };
    let name = line[..colon].trim_ascii();
    if name.is_empty() || !name.iter().all(|b| is_token(*b)) {
        return Err(FrameError::InvalidHeader {
            line: excerpt(line),
        });
    }
    if !name.eq_ignore_ascii_case(CONTENT_LENGTH) {
        return Ok(None); // Content-Type and the like: tolerated, ignored.
    }
    let value = line[colon + 1..].trim_ascii();
    let invalid = || FrameError::InvalidContentLength {
        value: excerpt(value),
    };
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|n| Some((n, value)))
        .ok_or_else(invalid)
}

/// Searches `chunk` for the rest of [`RESYNC_ON`], `matched` bytes of which ended the previous
/// chunk: `Ok(end)` if it ends at `chunk[end - 1]`, else `Err(matched)` with how much of it
/// ends `chunk`.
fn resync_scan(mut matched: usize, chunk: &[u8]) -> Result<usize, usize> {
    for (i, b) in chunk.iter().enumerate() {
        matched = if b.eq_ignore_ascii_case(&RESYNC_ON[matched]) {
            matched + 1
        } else {
            // No proper prefix of the pattern is also its suffix: restart, or start over on
            // this byte.
            usize::from(b.eq_ignore_ascii_case(&RESYNC_ON[0]))
        };
        if matched == RESYNC_ON.len() {
            return Ok(i + 1);
        }
    }
    Err(matched)
}

/// Whether `b` may appear in a header name (an RFC 9110 token character).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bodies(out: &[Decoded]) -> Vec<&[u8]> {
        out.iter()
            .filter_map(|d| match d {
                Decoded::Body(b) => Some(b.as_slice()),
                Decoded::Error(_) => None,
            })
            .collect()
    }

    fn errors(out: &[Decoded]) -> Vec<&FrameError> {
        out.iter()
            .filter_map(|d| match d {
                Decoded::Error(e) => Some(e),
                Decoded::Body(_) => None,
            })
            .collect()
    }

    #[test]
    fn decodes_one_message() {
        let mut d = FrameDecoder::new(1024);
        let out = d.feed(&encode(br#"{"a":1}"#));
        assert_eq!(out, vec![Decoded::Body(br#"{"a":1}"#.to_vec())]);
        assert!(d.is_idle());
    }

    #[test]
    fn tolerates_other_headers_any_case_bare_newlines_and_blank_lines() {
        let mut d = FrameDecoder::new(1024);
        let input = b"\r\n\r\ncontent-type: application/vscode-jsonrpc; charset=utf-8\r\nCONTENT-LENGTH:  2 \r\n\r\n{}\r\nContent-Length: 2\n\n[]";
        let out = d.feed(input);
        assert_eq!(bodies(&out), vec![b"{}".as_slice(), b"[]".as_slice()]);
        assert!(errors(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn oversize_body_is_skipped_exactly_and_never_stored() {
        let mut d = FrameDecoder::new(10);
        let mut input = b"Content-Length: 1000\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.extend(encode(b"ok"));
        let mut out = Vec::new();
        for chunk in input.chunks(7) {
            out.extend(d.feed(chunk));
            assert!(d.buffered() <= 64, "buffered {}", d.buffered());
        }
        assert_eq!(
            errors(&out),
            vec![&FrameError::TooLarge {
                length: 1000,
                max: 10
            }]
        );
        assert_eq!(bodies(&out), vec![b"ok".as_slice()]);
    }

    #[test]
    fn a_huge_length_is_refused_before_anything_is_allocated() {
        let mut d = FrameDecoder::new(DEFAULT_MAX_BODY);
        let out = d.feed(b"Content-Length: 18446744073709551615\r\n\r\n");
        assert_eq!(
            errors(&out),
            vec![&FrameError::TooLarge {
                length: u64::MAX,
                max: DEFAULT_MAX_BODY
            }]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn garbage_resyncs_on_the_next_content_length() {
        let mut d = FrameDecoder::new(1024);
        let mut input = br#"{"jsonrpc":"2.0","method":"raw json without headers"}"#.to_vec();
        input.extend_from_slice(b"\r\nmore garbage\r\n\r\n");
        input.extend(encode(b"1"));
        let out = d.feed(&input);
        assert_eq!(errors(&out).len(), 1, "{out:?}");
        assert!(matches!(errors(&out)[0], FrameError::InvalidHeader { .. }));
        assert_eq!(bodies(&out), vec![b"1".as_slice()]);
    }

    /// Issue 14: garbage followed on the same line by a valid message lost the message (the
    /// search for `Content-Length:` started after the offending line) and reported nothing
    /// more.
    #[test]
    fn a_message_right_behind_garbage_on_the_same_line_is_found() {
        for garbage in [
            b"garbage ".as_slice(),
            b"{\"jsonrpc\":\"2.0\",\"id\":1}",
            b"X-Foo",
            b"X-Foo: bar",
            b"Content-Length: 3",
            b"Content-Length: x",
            b"content-length:",
            b"\x01",
        ] {
            let mut input = garbage.to_vec();
            input.extend(encode(b"next"));
            let label = String::from_utf8_lossy(garbage);
            for cut in [input.len(), 1, 5] {
                let mut d = FrameDecoder::new(1024);
                let out: Vec<Decoded> = input.chunks(cut).flat_map(|c| d.feed(c)).collect();
                assert_eq!(
                    bodies(&out),
                    vec![b"next".as_slice()],
                    "{label:?} in chunks of {cut}: {out:?}"
                );
                assert!(!errors(&out).is_empty(), "{label:?}: {out:?}");
                assert!(d.is_idle(), "{label:?}");
            }
        }
        // Each malformed block is reported once: two pieces of garbage, two errors.
        let mut d = FrameDecoder::new(1024);
        let mut input = b"junk ".to_vec();
        input.extend(encode(b"a"));
        input.extend_from_slice(b"more junk\r\n\r\nstill junk");
        input.extend(encode(b"b"));
        let out = d.feed(&input);
        assert_eq!(bodies(&out), vec![b"a".as_slice(), b"b".as_slice()]);
        assert_eq!(errors(&out).len(), 2, "{out:?}");
    }

    #[test]
    fn bad_lengths_and_missing_lengths_are_reported() {
        for (input, want) in [
            (
                b"Content-Length: abc\r\n\r\n".as_slice(),
                FrameError::InvalidContentLength {
                    value: "abc".into(),
                },
            ),
            (
                b"Content-Length: -1\r\n\r\n",
                FrameError::InvalidContentLength { value: "-1".into() },
            ),
            (
                b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
                FrameError::InvalidContentLength { value: "2".into() },
            ),
            (
                b"Content-Length: 99999999999999999999999\r\n\r\n",
                FrameError::InvalidContentLength {
                    value: "99999999999999999999999".into(),
                },
            ),
            (b"Content-Type: x\r\n\r\n", FrameError::MissingContentLength),
            (
                b": no name\r\n\r\n",
                FrameError::InvalidHeader {
                    line: ": no name".into(),
                },
            ),
            (
                b"{\"jsonrpc\":\"2.0\"}\r\n\r\n",
                FrameError::InvalidHeader {
                    line: "{\"jsonrpc\":\"2.0\"}".into(),
                },
            ),
        ] {
            let mut d = FrameDecoder::new(1024);
            let mut all = input.to_vec();
            all.extend(encode(b"next"));
            let out = d.feed(&all);
            assert_eq!(
                errors(&out),
                vec![&want],
                "{}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(bodies(&out), vec![b"next".as_slice()]);
        }
    }

    #[test]
    fn endless_header_is_bounded() {
        let mut d = FrameDecoder::new(1024);
        let mut out = Vec::new();
        for _ in 0..1000 {
            out.extend(d.feed(&[b'a'; 1000]));
            assert!(d.buffered() <= MAX_HEADER_BYTES);
        }
        assert_eq!(errors(&out), vec![&FrameError::HeaderTooLarge]);
        for _ in 0..1000 {
            out.extend(d.feed(b"X-Many: headers\r\n"));
        }
        out.extend(d.feed(b"\r\n"));
        out.extend(d.feed(&encode(b"ok")));
        assert_eq!(bodies(&out), vec![b"ok".as_slice()]);
    }

    #[test]
    fn many_header_lines_hit_the_block_limit() {
        let mut d = FrameDecoder::new(1024);
        let mut out = Vec::new();
        for _ in 0..1000 {
            out.extend(d.feed(b"X-Many: headers\r\n"));
        }
        assert_eq!(errors(&out), vec![&FrameError::HeaderTooLarge]);
        assert!(d.buffered() <= MAX_HEADER_BYTES);
    }

    /// An invariant of the `sidecar_rpc` fuzz target (the same result in one chunk and byte by
    /// byte) this broke: the bytes of an over-long header line past the limit were searched for
    /// `Content-Length:` only if a chunk happened to end before the line did.
    #[test]
    fn content_length_past_the_header_limit_is_found_however_the_input_is_cut() {
        let mut input = b"X-A: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES - 2));
        input.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
        let want = vec![
            Decoded::Error(FrameError::HeaderTooLarge),
            Decoded::Body(b"{}".to_vec()),
        ];
        for cut in [input.len(), 1, 7, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1] {
            let mut d = FrameDecoder::new(1024);
            let out: Vec<Decoded> = input.chunks(cut).flat_map(|c| d.feed(c)).collect();
            assert_eq!(out, want, "in chunks of {cut}");
            assert!(d.is_idle());
        }
        // The limit cuts the header name: what is past it is not a header.
        let mut input = vec![b'a'; MAX_HEADER_BYTES - 4];
        input.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
        for cut in [input.len(), 1, MAX_HEADER_BYTES] {
            let mut d = FrameDecoder::new(1024);
            let out: Vec<Decoded> = input.chunks(cut).flat_map(|c| d.feed(c)).collect();
            assert_eq!(
                out,
                vec![Decoded::Error(FrameError::HeaderTooLarge)],
                "in chunks of {cut}"
            );
            assert!(!d.is_idle());
        }
    }

    #[test]
    fn resync_recognises_content_length_split_across_chunks() {
        let mut d = FrameDecoder::new(1024);
        let mut out = d.feed(b"garbage\r\n");
        for b in b"Content-Length: 3\r\n\r\nabc" {
            out.extend(d.feed(&[*b]));
        }
        assert_eq!(errors(&out).len(), 1);
        assert_eq!(bodies(&out), vec![b"abc".as_slice()]);
    }

    #[test]
    fn a_body_of_unknown_length_directly_followed_by_a_frame() {
        let mut d = FrameDecoder::new(1024);
        let mut input = b"Content-Type: x\r\n\r\n{\"no\":\"length\"}".to_vec();
        input.extend(encode(b"next"));
        let out = d.feed(&input);
        assert_eq!(errors(&out), vec![&FrameError::MissingContentLength]);
        assert_eq!(bodies(&out), vec![b"next".as_slice()]);
    }

    #[test]
    fn empty_body() {
        let mut d = FrameDecoder::new(1024);
        assert_eq!(
            d.feed(b"Content-Length: 0\r\n\r\n"),
            vec![Decoded::Body(Vec::new())]
        );
    }

    fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8)
    }

    proptest! {
        #[test]
        fn round_trips_whatever_the_chunking(bodies_in in frames(), cuts in proptest::collection::vec(1usize..50, 1..20)) {
            let stream: Vec<u8> = bodies_in.iter().flat_map(|b| encode(b)).collect();
            let mut d = FrameDecoder::new(1024);
            let mut out = Vec::new();
            let mut rest = stream.as_slice();
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                out.extend(d.feed(&rest[..n]));
                rest = &rest[n..];
                i += 1;
            }
            prop_assert!(d.is_idle());
            let got: Vec<Vec<u8>> = bodies(&out).into_iter().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(got, bodies_in);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(input in proptest::collection::vec(any::<u8>(), 0..4096), max in 0usize..64) {
            let mut d = FrameDecoder::new(max);
            for chunk in input.chunks(13) {
                let _ = d.feed(chunk);
                prop_assert!(d.buffered() <= MAX_HEADER_BYTES.max(max));
            }
        }

        #[test]
        fn garbage_then_a_frame_recovers(garbage in "[a-zA-Z0-9 :\r\n{}\"]{0,300}", body in proptest::collection::vec(any::<u8>(), 0..100)) {
            // Garbage that is itself a well-formed frame start is not garbage: keep it out.
            prop_assume!(!garbage.to_ascii_lowercase().contains("content-length"));
            let mut d = FrameDecoder::new(1024);
            let mut input = garbage.into_bytes();
            // End the garbage with a line break, then a blank line: a clean boundary.
            input.extend_from_slice(b"\r\n\r\n");
            input.extend(encode(&body));
            let out = d.feed(&input);
            let got = bodies(&out);
            prop_assert_eq!(got.last().copied(), Some(body.as_slice()));
            prop_assert!(d.is_idle());
        }

        #[test]
        fn the_chunking_never_changes_what_is_decoded(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(b"Content-Length: ".to_vec()),
                    Just(b"content-length:".to_vec()),
                    Just(b"X-Other: y".to_vec()),
                    Just(b"\r\n".to_vec()),
                    Just(b"\n".to_vec()),
                    Just(b"{}".to_vec()),
                    "[0-9]{1,4}".prop_map(String::into_bytes),
                    (1usize..9000).prop_map(|n| vec![b'a'; n]),
                ],
                0..24,
            ),
            cut in 1usize..600,
        ) {
            let input = parts.concat();
            let mut whole = FrameDecoder::new(512);
            let want = whole.feed(&input);
            let mut cutd = FrameDecoder::new(512);
            let got: Vec<Decoded> = input.chunks(cut).flat_map(|c| cutd.feed(c)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(cutd.is_idle(), whole.is_idle());
            prop_assert_eq!(cutd.buffered(), whole.buffered());
        }

        #[test]
        fn oversize_never_desyncs(len in 11u64..5000, body in proptest::collection::vec(any::<u8>(), 0..10)) {
            let mut d = FrameDecoder::new(10);
            let mut input = format!("Content-Length: {len}\r\n\r\n").into_bytes();
            input.extend(std::iter::repeat_n(b'z', usize::try_from(len).unwrap_or_default()));
            input.extend(encode(&body));
            let out = d.feed(&input);
            let want = FrameError::TooLarge { length: len, max: 10 };
            prop_assert_eq!(errors(&out), vec![&want]);
            prop_assert_eq!(bodies(&out), vec![body.as_slice()]);
        }
    }
}
