//! The generator's fast path while traffic flows: split the server's stream
//! into top-level elements by scanning tags, without building element
//! trees, and read a probe (`SEQ SEND_NS SENDER` in a message body or a
//! presence status) straight from the bytes.
//!
//! It relies on what every server sends once the stream is open: well-formed
//! XML without comments, processing instructions or CDATA (RFC 6120 §11.1).
//! Anything it does not understand is an error, which ends the connection's
//! reader (counted as a disconnect) rather than being misread.

/// Why the splitter gave up.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

/// One thing read from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The bytes of one complete top-level element.
    Element(&'a [u8]),
    /// The closing `</stream:stream>`.
    End,
}

/// Splits a stream (after its header) into top-level elements.
#[derive(Default)]
pub struct Splitter {
    buf: Vec<u8>,
    pos: usize,
}

impl Splitter {
    /// Appends bytes read from the server.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete element, `Ok(None)` when more input is needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let buf = &self.buf;
        let mut i = self.pos;
        while i < buf.len() && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        self.pos = i;
        if i >= buf.len() {
            return Ok(None);
        }
        if buf[i] != b'<' {
            return Err(FrameError("text at the top level of the stream"));
        }
        if i + 1 >= buf.len() {
            return Ok(None);
        }
        if buf[i + 1] == b'/' {
            return Ok(Some(Frame::End));
        }
        let start = i;
        let mut depth = 0usize;
        let mut j = i;
        loop {
            // `j` is at a '<'.
            let Some(&kind) = buf.get(j + 1) else { return Ok(None) };
            if kind == b'!' || kind == b'?' {
                return Err(FrameError("comment, CDATA or processing instruction"));
            }
            let Some(gt) = tag_end(buf, j + 1) else { return Ok(None) };
            if kind == b'/' {
                depth = depth.checked_sub(1).ok_or(FrameError("unbalanced end tag"))?;
            } else if buf[gt - 1] != b'/' {
                depth += 1;
            }
            if depth == 0 {
                self.pos = gt + 1;
                return Ok(Some(Frame::Element(&self.buf[start..gt + 1])));
            }
            match buf[gt + 1..].iter().position(|&b| b == b'<') {
                Some(off) => j = gt + 1 + off,
                None => return Ok(None),
            }
        }
    }
}

/// The index of the '>' closing the tag whose name starts at `from`, outside quoted attribute values.
fn tag_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut quote = 0u8;
    for (off, &b) in buf[from..].iter().enumerate() {
        match b {
            b'\'' | b'"' if quote == 0 => quote = b,
            b if b == quote => quote = 0,
            b'>' if quote == 0 => return Some(from + off),
            _ => {}
        }
    }
    None
}

/// What one top-level element is, for the traffic counters.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A probe: sequence number, send time (ns), sender's position.
    Probe(u64, u64, usize),
    /// A stanza with `type='error'`.
    Error,
    /// A stream error: the stream is over.
    StreamError,
    /// Anything else (roster pushes, other presence, ...).
    Other,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Classifies one element's bytes.
pub fn classify(el: &[u8]) -> Kind {
    let name_end = el.iter().position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/').unwrap_or(el.len());
    let name = &el[1.min(el.len())..name_end.max(1)];
    let start_tag_end = tag_end(el, 1).unwrap_or(el.len());
    let start_tag = &el[..start_tag_end];
    if name == b"stream:error" || name.ends_with(b":error") || name == b"error" {
        return Kind::StreamError;
    }
    if find(start_tag, b"type='error'").is_some() || find(start_tag, b"type=\"error\"").is_some() {
        return Kind::Error;
    }
    let child: &[u8] = match name {
        b"message" => b"<body",
        b"presence" => b"<status",
        _ => return Kind::Other,
    };
    let Some(at) = find(&el[start_tag_end..], child).map(|p| start_tag_end + p) else { return Kind::Other };
    let Some(open_end) = tag_end(el, at + 1) else { return Kind::Other };
    let text = &el[open_end + 1..];
    let text = &text[..text.iter().position(|&b| b == b'<').unwrap_or(text.len())];
    parse_probe(text).map(|(s, t, k)| Kind::Probe(s, t, k)).unwrap_or(Kind::Other)
}

/// `SEQ SEND_NS SENDER` at the start of a probe's text.
pub fn parse_probe(text: &[u8]) -> Option<(u64, u64, usize)> {
    let mut it = text.split(|b| b.is_ascii_whitespace()).filter(|s| !s.is_empty());
    let num = |s: Option<&[u8]>| -> Option<u64> {
        let s = s?;
        if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let seq = num(it.next())?;
    let ts = num(it.next())?;
    let sender = num(it.next())?;
    Some((seq, ts, usize::try_from(sender).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&str]) -> Vec<String> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c.as_bytes());
            loop {
                match s.next_frame() {
                    Ok(Some(Frame::Element(e))) => out.push(String::from_utf8_lossy(e).into_owned()),
                    Ok(Some(Frame::End)) => {
                        out.push("END".into());
                        return out;
                    }
                    Ok(None) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
        out
    }

    #[test]
    fn splits_across_reads_with_nesting_quotes_and_whitespace() {
        let m1 = "<message from='a@x/r' to='b@x/r' type='chat'><body>1 22 3</body></message>";
        let m2 = "<presence from=\"c@x/r\"><show>away</show><status a='>'>4 55 6</status></presence>";
        let m3 = "<iq type='set' id='p'><query xmlns='jabber:iq:roster'><item jid='d@x'/></query></iq>";
        let all = format!(" {m1}\n{m2} {m3}<r/></stream:stream>");
        for split in 0..all.len() {
            let (a, b) = all.split_at(split);
            assert_eq!(frames(&[a, b]), vec![m1, m2, m3, "<r/>", "END"], "split at {split}");
        }
    }

    #[test]
    fn classifies_probes_errors_and_others() {
        let probe = b"<message from='a@x/r' type='chat'><body>7 123456789 4 xxx</body></message>";
        assert_eq!(classify(probe), Kind::Probe(7, 123456789, 4));
        let presence = b"<presence from='a@x/r'><show>dnd</show><status>8 9 10</status></presence>";
        assert_eq!(classify(presence), Kind::Probe(8, 9, 10));
        let error = b"<message type=\"error\" from='b@x'><body>1 2 3</body><error/></message>";
        assert_eq!(classify(error), Kind::Error);
        assert_eq!(classify(b"<stream:error><conflict/></stream:error>"), Kind::StreamError);
        assert_eq!(classify(b"<presence from='a@x/r'/>"), Kind::Other);
        assert_eq!(classify(b"<message><body>hello</body></message>"), Kind::Other);
        assert_eq!(classify(b"<iq type='result' id='x'/>"), Kind::Other);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut s = Splitter::default();
        s.feed(b"<!-- no --><a/>");
        assert!(s.next_frame().is_err());
        let mut s = Splitter::default();
        s.feed(b"text<a/>");
        assert!(s.next_frame().is_err());
    }
}
