//! Codec throughput: parsing and serializing typical stanzas (RFC 6120 §4
//! streams, RFC 6121 roster pushes, XEP-0313 archive results).
//!
//! Each iteration feeds one complete stanza into a parser whose stream is
//! already open, which is what a server sees when a client's stanza arrives
//! in one read, and `parse_split` feeds it in two reads, so that the boundary
//! scanner rather than the whole-stanza fast path finds its end. Run with
//! `cargo bench -p meerkat-xmpp --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

const CHAT: &str = "<message from='juliet@example.com/balcony' to='romeo@example.net' \
    type='chat' id='ktx72v49' xml:lang='en'><body>Art thou not Romeo, and a Montague?</body>\
    <active xmlns='http://jabber.org/protocol/chatstates'/>\
    <origin-id xmlns='urn:xmpp:sid:0' id='de305d54-75b4-431b-adb2-eb6b9e546014'/></message>";

const ROSTER_PUSH: &str = "<iq to='juliet@example.com/balcony' id='a78b4q6ha463' type='set'>\
    <query xmlns='jabber:iq:roster' ver='ver14'><item jid='nurse@example.com' name='Nurse' \
    subscription='both'><group>Servants</group></item></query></iq>";

const MAM_RESULT: &str = "<message to='juliet@capulet.lit/balcony' id='aeb213'>\
    <result xmlns='urn:xmpp:mam:2' queryid='f27' id='28482-98726-73623'>\
    <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>\
    <message xmlns='jabber:client' from='witch@shakespeare.lit' to='macbeth@shakespeare.lit' \
    type='chat' id='162BEBB1-F6DB-4D9A-9BD8-CFDCC801A0B2'><body>Hail to thee &amp; thine</body>\
    </message></forwarded></result></message>";

fn open_parser() -> StreamParser {
    let mut p = StreamParser::new(Limits::default());
    p.feed(HEADER);
    match p.next_event() {
        Ok(Some(StreamEvent::Header(_))) => p,
        other => panic!("bad header: {other:?}"),
    }
}

fn parse_one(p: &mut StreamParser, xml: &[u8]) -> Element {
    p.feed(xml);
    match p.next_event() {
        Ok(Some(StreamEvent::Stanza(e))) => e,
        other => panic!("expected a stanza, got {other:?}"),
    }
}

fn codec(c: &mut Criterion) {
    let cases = [("chat_message", CHAT), ("roster_push", ROSTER_PUSH), ("mam_result", MAM_RESULT)];
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    for (name, xml) in cases {
        let mut p = open_parser();
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| black_box(parse_one(&mut p, black_box(xml.as_bytes()))))
        });

        let el = parse_one(&mut open_parser(), xml.as_bytes());
        let mut out = String::with_capacity(1024);
        group.bench_function(format!("serialize/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&el).write_to(&mut out, ns::CLIENT);
                black_box(out.len())
            })
        });

        // A stanza split over two reads: the boundary scanner finds its end.
        let (head, tail) = xml.as_bytes().split_at(xml.len() / 2);
        let mut p = open_parser();
        group.bench_function(format!("parse_split/{name}"), |b| {
            b.iter(|| {
                p.feed(black_box(head));
                assert_eq!(p.next_event(), Ok(None));
                black_box(parse_one(&mut p, black_box(tail)))
            })
        });

        // The parser in an IO read loop: many stanzas per read.
        let batch = xml.repeat(32);
        let mut p = open_parser();
        group.throughput(Throughput::Elements(32));
        group.bench_function(format!("parse_batch32/{name}"), |b| {
            b.iter(|| {
                p.feed(black_box(batch.as_bytes()));
                let mut n = 0;
                while let Ok(Some(ev)) = p.next_event() {
                    black_box(ev);
                    n += 1;
                }
                assert_eq!(n, 32);
            })
        });
        group.throughput(Throughput::Elements(1));
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
