//! Fuzzes the XML stream parser (RFC 6120 §4, §11) and the serializer.
//!
//! Properties checked for arbitrary input:
//! 1. No panic, no hang, bounded memory (the limits are enforced).
//! 2. Splitting the input into arbitrary chunks changes nothing: the same
//!    events come out, and the run fails iff the unsplit run fails.
//! 3. Every stanza serializes to XML that parses back to an equal tree.
//!
//! Run with `cargo +nightly fuzz run stream_parser` from `actors/xmpp`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meerkat_xmpp::parser::{Limits, ParseError, StreamEvent, StreamParser};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

/// Small limits so the fuzzer reaches them often.
const LIMITS: Limits = Limits { max_stanza_size: 4096, max_depth: 16 };

fn run<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<StreamEvent>, Option<ParseError>) {
    let mut parser = StreamParser::new(LIMITS);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk);
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => {
                    // A failed stream stays failed.
                    assert_eq!(parser.next_event(), Err(e.clone()));
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

/// Splits `input` into chunks whose sizes come from a tiny PRNG seeded by
/// the fuzzer, so that every split position gets explored.
fn chunks(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 1;
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (state % 8 + 1) as usize;
        let (a, b) = rest.split_at(size.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fn assert_round_trip(el: &meerkat_xmpp::element::Element) {
    let xml = el.to_xml("");
    let mut parser = StreamParser::new(Limits {
        // Escaping and namespace declarations can make the copy larger.
        max_stanza_size: usize::MAX / 2,
        max_depth: LIMITS.max_depth,
    });
    parser.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
    parser.feed(xml.as_bytes());
    assert!(matches!(parser.next_event(), Ok(Some(StreamEvent::Header(_)))));
    match parser.next_event() {
        Ok(Some(StreamEvent::Stanza(again))) => assert_eq!(&again, el, "re-parse of {xml}"),
        other => panic!("serialization {xml} did not re-parse: {other:?}"),
    }
    assert_eq!(parser.buffered_len(), 0, "trailing bytes after {xml}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    // Half of the inputs get a valid header for free, so the fuzzer spends
    // its effort on stanzas rather than on rediscovering the header.
    let input = if control & 1 == 1 { [HEADER, body].concat() } else { body.to_vec() };
    let (whole, whole_err) = run(std::iter::once(&input[..]));
    let (split, split_err) = run(chunks(&input, control >> 1).into_iter());
    assert_eq!(whole, split);
    assert_eq!(whole_err.is_some(), split_err.is_some(), "{whole_err:?} vs {split_err:?}");
    for ev in &whole {
        if let StreamEvent::Stanza(el) = ev {
            assert_round_trip(el);
        }
    }
});
