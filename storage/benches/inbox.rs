//! Inbox query latency on PostgreSQL: one account with 10,000 conversations,
//! pages of 50 (the first page, pages after a random cursor, and the first
//! page with the totals `<fin/>` carries, as a query costs), against
//! the baseline of a message archive page of 50 from a 10,000-message
//! archive, in the same database and the same run.
//!
//!     cargo bench -p meerkat-storage --bench inbox
//!
//! Uses a fresh database on `MEERKAT_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped at the end. Prints
//! p50, p99 and max per query kind, and one JSON line.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use meerkat_storage::{
    ArchiveDirection, ArchiveQuery, ArchiveRepo, ArchivedMessage, DbTls, InboxMessage, InboxQuery, InboxRepo, Storage,
    StorageConfig,
};
use sqlx::{AssertSqlSafe, Executor};

const CONVERSATIONS: i64 = 10_000;
const QUERIES: usize = 2_000;
const PAGE: u64 = 50;

fn summary(name: &str, h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<24} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms   ({} queries)",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    );
    serde_json::json!({"p50_ms": ms(h.value_at_quantile(0.5)), "p99_ms": ms(h.value_at_quantile(0.99)), "max_ms": ms(h.max())})
}

async fn run(s: &Storage) -> serde_json::Value {
    // 10,000 conversations and a 10,000-message archive for alice.
    let started = Instant::now();
    let body = "<message xmlns='jabber:client' type='chat'><body>a message of a usual length, say forty characters</body></message>";
    for i in 0..CONVERSATIONS {
        let m = InboxMessage {
            remote_jid: format!("contact{i:05}@example.org"),
            msg_id: format!("m{i}").into(),
            content: body.into(),
            stamp_micros: 1_700_000_000_000_000 + i * 1_000,
            incoming: i % 3 == 0,
        };
        s.inbox_message("example.org", "alice", &m).await.unwrap();
    }
    let rows: Vec<ArchivedMessage> = (0..CONVERSATIONS)
        .map(|i| ArchivedMessage {
            domain: "example.org".into(),
            user: "alice".into(),
            id: format!("{i:026}"),
            stamp_micros: 1_700_000_000_000_000 + i * 1_000,
            with_jid: format!("contact{:05}@example.org", i % 100),
            with_resource: None,
            direction: ArchiveDirection::Incoming,
            stanza: body.to_owned(),
        })
        .collect();
    for chunk in rows.chunks(500) {
        s.store_archive(chunk).await.unwrap();
    }
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());

    let mut first = Histogram::<u64>::new(3).unwrap();
    let mut after = Histogram::<u64>::new(3).unwrap();
    let mut archive = Histogram::<u64>::new(3).unwrap();
    let mut whole = Histogram::<u64>::new(3).unwrap();
    for round in 0..QUERIES + 200 {
        let record = round >= 200; // the first 200 warm the caches
        let t = Instant::now();
        let page =
            s.inbox_query("example.org", "alice", &InboxQuery { max: PAGE, ..Default::default() }).await.unwrap();
        let us = t.elapsed().as_micros() as u64;
        assert_eq!(page.len() as u64, PAGE);
        if record {
            first.record(us).unwrap();
        }
        // What an <inbox/> query costs the node: the page and the totals of <fin/>.
        let t = Instant::now();
        s.inbox_query("example.org", "alice", &InboxQuery { max: PAGE, ..Default::default() }).await.unwrap();
        s.inbox_totals("example.org", "alice").await.unwrap();
        if record {
            whole.record(t.elapsed().as_micros() as u64).unwrap();
        }
        let i = rand::random_range(PAGE as i64..CONVERSATIONS);
        let cursor = (1_700_000_000_000_000 + i * 1_000, format!("contact{i:05}@example.org"));
        let t = Instant::now();
        let page = s
            .inbox_query("example.org", "alice", &InboxQuery { max: PAGE, after: Some(cursor), ..Default::default() })
            .await
            .unwrap();
        let us = t.elapsed().as_micros() as u64;
        assert_eq!(page.len() as u64, PAGE);
        if record {
            after.record(us).unwrap();
        }
        let t = Instant::now();
        let page = s
            .query_archive("example.org", "alice", &ArchiveQuery { max: PAGE, from_end: true, ..Default::default() })
            .await
            .unwrap();
        let us = t.elapsed().as_micros() as u64;
        assert_eq!(page.map(|p| p.messages.len() as u64), Some(PAGE));
        if record {
            archive.record(us).unwrap();
        }
    }
    let r = serde_json::json!({
        "backend": s.backend_name(),
        "conversations": CONVERSATIONS,
        "page": PAGE,
        "inbox_first_page": summary("inbox, first page", &first),
        "inbox_after_cursor": summary("inbox, after a cursor", &after),
        "inbox_page_and_totals": summary("inbox, page and totals", &whole),
        "archive_last_page": summary("archive, last page", &archive),
        "p99_inbox_over_archive": first.value_at_quantile(0.99) as f64 / archive.value_at_quantile(0.99).max(1) as f64,
    });
    println!("{r}");
    r
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let admin_url = std::env::var("MEERKAT_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap();
        let db = format!("meerkat_bench_{}", std::process::id());
        admin.execute(AssertSqlSafe(format!("CREATE DATABASE \"{db}\""))).await.unwrap();
        let url = match admin_url.rfind('/') {
            Some(i) => format!("{}/{db}", &admin_url[..i]),
            None => panic!("no database in {admin_url}"),
        };
        let cfg = StorageConfig { url, pool_size: 4, connect_timeout: Duration::from_secs(10), tls: DbTls::Disabled };
        let s = Storage::connect(&cfg).await.unwrap();
        let result = tokio::spawn({
            let s = s.clone();
            async move { run(&s).await }
        })
        .await;
        s.close().await;
        admin.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))).await.unwrap();
        result.unwrap();
    });
}
