//! One repository test suite, run against SQLite (a file in a temporary directory, and
//! in-memory), PostgreSQL and MariaDB/MySQL.
//!
//! The network databases come from `MEERKAT_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `MEERKAT_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`). That database is only used to create a fresh
//! `meerkat_t_<unique>` database per test, which the test then connects to (so the
//! migrations always start from nothing) and drops at the end, even when the suite
//! fails. An unreachable database fails the test: nothing is skipped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use meerkat_storage::{
    AccountRepo, ArchiveDirection, ArchivePage, ArchiveQuery, ArchiveRepo, ArchivedMessage, BlocklistRepo, DbTls,
    FastSlot, FastToken, FastTokenRepo, FastTokens, InboxBoxes, InboxChange, InboxDelta, InboxLast, InboxMessage,
    InboxQuery, InboxRepo, InboxTotals, OfflineRepo, PrivateRepo, PubsubItem, PubsubNode, PubsubRepo,
    PubsubSubscription, PushRepo, PushSubscription, RosterItem, RosterRepo, SecretRepo, Storage, StorageConfig,
    StorageError, StoredPassword, Subscription, VcardRepo,
};
use sqlx::{AssertSqlSafe, Executor};

const DOMAIN: &str = "example.org";
const OTHER_DOMAIN: &str = "other.example";
const UNICODE: &str = "😀🦀 ünïcödé";

fn config(url: &str) -> StorageConfig {
    StorageConfig { url: url.to_owned(), pool_size: 4, connect_timeout: Duration::from_secs(10), tls: DbTls::Disabled }
}

/// A database name no other test (or earlier run) uses.
fn unique_db_name() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("meerkat_t_{}_{}_{}", std::process::id(), nanos % 1_000_000_000_000, SEQ.fetch_add(1, Ordering::Relaxed))
}

/// `url` with its database (path) replaced by `db`; the query string is kept.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn item(contact: &str, subscription: Subscription, groups: &[&str]) -> RosterItem {
    RosterItem {
        contact: contact.to_owned(),
        name: None,
        subscription,
        ask_out: false,
        pending_in: false,
        pre_approved: false,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

/// A string of exactly `bytes` bytes mixing 1-, 2-, 3- and 4-byte characters.
fn long_text(bytes: usize) -> String {
    let unit = "<body>a ü € 😀🦀</body>\n";
    let mut s = String::with_capacity(bytes);
    while s.len() + unit.len() <= bytes {
        s.push_str(unit);
    }
    while s.len() < bytes {
        s.push('x');
    }
    s
}

async fn accounts(s: &Storage) {
    let plain = StoredPassword::Plain("secret".into());
    let scram = StoredPassword::Scram("v=1,s=c2FsdA==,i=4096,k=a2V5".into());

    s.create_account(DOMAIN, "alice", &plain).await.expect("create alice");
    match s.create_account(DOMAIN, "alice", &scram).await {
        Err(StorageError::Conflict(_)) => {}
        other => panic!("duplicate account: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        s.get_password(DOMAIN, "alice").await.expect("get"),
        Some(plain.clone()),
        "the conflicting create must not overwrite"
    );
    // Exact (binary) comparison: no case folding, no other domain.
    assert_eq!(s.get_password(DOMAIN, "ALICE").await.expect("get"), None);
    assert_eq!(s.get_password(OTHER_DOMAIN, "alice").await.expect("get"), None);
    assert_eq!(s.get_password(DOMAIN, "nobody").await.expect("get"), None);

    assert!(s.set_password(DOMAIN, "alice", &scram).await.expect("set"));
    assert_eq!(s.get_password(DOMAIN, "alice").await.expect("get"), Some(scram.clone()));
    // Setting the same value again still reports the user as found (MySQL counts
    // changed rows unless CLIENT_FOUND_ROWS is set).
    assert!(s.set_password(DOMAIN, "alice", &scram).await.expect("set"));
    assert!(!s.set_password(DOMAIN, "nobody", &plain).await.expect("set"));
    assert_eq!(s.get_password(DOMAIN, "nobody").await.expect("get"), None);

    let emoji_user = format!("{UNICODE}-user");
    for user in ["bob", "Zed", "ünï", emoji_user.as_str(), "ALICE"] {
        s.create_account(DOMAIN, user, &StoredPassword::Plain(format!("pw-{user}"))).await.expect("create");
    }
    s.create_account(OTHER_DOMAIN, "alice", &plain).await.expect("same user in another domain");
    assert_eq!(
        s.get_password(DOMAIN, &emoji_user).await.expect("get"),
        Some(StoredPassword::Plain(format!("pw-{emoji_user}")))
    );

    let mut expected: Vec<String> =
        ["alice", "bob", "Zed", "ünï", emoji_user.as_str(), "ALICE"].iter().map(|u| (*u).to_owned()).collect();
    expected.sort(); // String order = code point order
    assert_eq!(expected, vec!["ALICE", "Zed", "alice", "bob", "ünï", emoji_user.as_str()]);
    assert_eq!(s.list_accounts(DOMAIN).await.expect("list"), expected);
    assert_eq!(s.count_accounts(DOMAIN).await.expect("count"), 6);
    assert_eq!(s.list_accounts(OTHER_DOMAIN).await.expect("list"), vec!["alice".to_owned()]);
    assert_eq!(s.count_accounts(OTHER_DOMAIN).await.expect("count"), 1);
    assert_eq!(s.count_accounts("empty.example").await.expect("count"), 0);
    assert!(s.list_accounts("empty.example").await.expect("list").is_empty());
}

async fn roster(s: &Storage) {
    assert!(s.get_roster(DOMAIN, "alice").await.expect("roster").is_empty());
    assert_eq!(s.get_item(DOMAIN, "alice", "bob@example.org").await.expect("item"), None);

    let mut bob = item("bob@example.org", Subscription::To, &["Work", "Friends", "Work"]);
    bob.name = Some("Bob".into());
    bob.ask_out = true;
    s.put_item(DOMAIN, "alice", &bob).await.expect("put bob");
    let got = s.get_item(DOMAIN, "alice", "bob@example.org").await.expect("get").expect("bob exists");
    assert_eq!(got.groups, vec!["Friends", "Work"], "deduplicated, sorted");
    assert_eq!(got.name.as_deref(), Some("Bob"));
    assert_eq!(got.subscription, Subscription::To);
    assert!(got.ask_out && !got.pending_in && !got.pre_approved);

    // Every subscription state and flag survives; contacts sort by code point.
    let mut unicode = item(&format!("{UNICODE}@example.org"), Subscription::Both, &[UNICODE, "Ünï"]);
    unicode.name = Some(UNICODE.into());
    let mut carol = item("carol@example.org", Subscription::From, &[]);
    carol.pending_in = true;
    let mut dave = item("dave@example.org", Subscription::None, &["x"]);
    dave.pre_approved = true;
    dave.pending_in = true;
    let eve = item("Eve@example.org", Subscription::Remove, &[]);
    for it in [&unicode, &carol, &dave, &eve] {
        s.put_item(DOMAIN, "alice", it).await.expect("put");
    }
    let mut bob_sorted = bob.clone();
    bob_sorted.groups = vec!["Friends".into(), "Work".into()];
    let mut unicode_sorted = unicode.clone();
    unicode_sorted.groups.sort();
    let mut expected = vec![bob_sorted, carol.clone(), dave.clone(), eve.clone(), unicode_sorted.clone()];
    expected.sort_by(|a, b| a.contact.cmp(&b.contact));
    assert_eq!(expected[0].contact, "Eve@example.org");
    assert_eq!(s.get_roster(DOMAIN, "alice").await.expect("roster"), expected);
    assert_eq!(s.get_item(DOMAIN, "alice", &unicode.contact).await.expect("get"), Some(unicode_sorted));
    // Exact match on the contact.
    assert_eq!(s.get_item(DOMAIN, "alice", "BOB@example.org").await.expect("get"), None);

    // Upsert: every field and the whole group set are replaced.
    let mut bob2 = item("bob@example.org", Subscription::Both, &["Family"]);
    bob2.pre_approved = true;
    s.put_item(DOMAIN, "alice", &bob2).await.expect("replace bob");
    assert_eq!(s.get_item(DOMAIN, "alice", "bob@example.org").await.expect("get"), Some(bob2.clone()));
    assert_eq!(s.get_roster(DOMAIN, "alice").await.expect("roster").len(), 5);

    // Rosters are per user.
    s.put_item(DOMAIN, "bob", &item("alice@example.org", Subscription::Both, &["A"])).await.expect("put");
    assert_eq!(s.get_roster(DOMAIN, "bob").await.expect("roster").len(), 1);
    assert!(s.get_roster(OTHER_DOMAIN, "alice").await.expect("roster").is_empty());

    // Removal takes the groups along: a re-added item starts without any.
    assert!(s.remove_item(DOMAIN, "alice", "bob@example.org").await.expect("remove"));
    assert!(!s.remove_item(DOMAIN, "alice", "bob@example.org").await.expect("remove again"));
    assert_eq!(s.get_item(DOMAIN, "alice", "bob@example.org").await.expect("get"), None);
    let bare = item("bob@example.org", Subscription::None, &[]);
    s.put_item(DOMAIN, "alice", &bare).await.expect("re-add");
    assert_eq!(s.get_item(DOMAIN, "alice", "bob@example.org").await.expect("get"), Some(bare));
    assert_eq!(s.get_roster(DOMAIN, "bob").await.expect("roster").len(), 1);
}

/// Claims and deletes every stored message of `user`, as one delivery would.
async fn take(s: &Storage, user: &str) -> Vec<meerkat_storage::OfflineMessage> {
    let msgs = s.claim_offline(DOMAIN, user, "take", 1, i64::MAX, 10_000).await.expect("claim");
    if let (Some(first), Some(last)) = (msgs.first(), msgs.last()) {
        let n = s.delete_offline(DOMAIN, user, "take", first.id, last.id).await.expect("delete");
        assert_eq!(n, u64::try_from(msgs.len()).expect("small"));
    }
    msgs
}

async fn offline(s: &Storage) {
    assert_eq!(s.count_offline(DOMAIN, "alice").await.expect("count"), 0);
    assert!(take(s, "alice").await.is_empty());

    let long = long_text(64 * 1024);
    let bodies = [
        format!("<message><body>{UNICODE}</body></message>"),
        "<message><body>second</body></message>".to_owned(),
        long.clone(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let stamp = 1_700_000_000_000_000 + i64::try_from(i).expect("small");
        assert!(s.store_offline(DOMAIN, "alice", "bob@example.org/phone", body, stamp, 3).await.expect("store"));
    }
    assert!(
        !s.store_offline(DOMAIN, "alice", "bob@example.org/phone", "<m/>", 0, 3).await.expect("store over quota"),
        "quota full"
    );
    assert!(!s.store_offline(DOMAIN, "carol", "x@y", "<m/>", 0, 0).await.expect("store with zero quota"));
    assert_eq!(s.count_offline(DOMAIN, "alice").await.expect("count"), 3);
    assert_eq!(s.count_offline(DOMAIN, "carol").await.expect("count"), 0);

    // Someone else's queue is untouched by alice's take.
    assert!(s.store_offline(DOMAIN, "bob", "alice@example.org", "<m>for bob</m>", 5, 10).await.expect("store"));

    let taken = take(s, "alice").await;
    assert_eq!(taken.len(), 3);
    for (i, (m, body)) in taken.iter().zip(&bodies).enumerate() {
        assert_eq!(&m.stanza, body, "stanza {i} round-trips");
        assert_eq!(m.from, "bob@example.org/phone");
        assert_eq!(m.stamp_micros, 1_700_000_000_000_000 + i64::try_from(i).expect("small"));
    }
    assert_eq!(taken[2].stanza.len(), 64 * 1024);
    assert!(taken.windows(2).all(|w| w[0].id < w[1].id), "store order");
    assert_eq!(s.count_offline(DOMAIN, "alice").await.expect("count"), 0);
    assert!(take(s, "alice").await.is_empty());
    // After a delivery the quota is free again.
    assert!(s.store_offline(DOMAIN, "alice", "c@d", "<m>again</m>", 9, 3).await.expect("store"));
    assert_eq!(s.count_offline(DOMAIN, "alice").await.expect("count"), 1);
    assert_eq!(s.count_offline(DOMAIN, "bob").await.expect("count"), 1);
}

async fn concurrent_offline(s: &Storage) {
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.store_offline(DOMAIN, "busy", "x@y", &format!("<m>{i}</m>"), i, 1000).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.expect("join").expect("concurrent store"));
    }
    let taken = take(s, "busy").await;
    assert_eq!(taken.len(), 12);
    assert!(taken.windows(2).all(|w| w[0].id < w[1].id));
    let mut stamps: Vec<i64> = taken.iter().map(|m| m.stamp_micros).collect();
    stamps.sort_unstable();
    assert_eq!(stamps, (0..12).collect::<Vec<i64>>());
}

/// Delivery is at least once: claimed messages stay stored until deleted, two
/// deliveries never claim the same message, and a claim ends when released,
/// when it runs out, or with its node.
async fn offline_claims(s: &Storage) {
    let user = "claims";
    for i in 0..5 {
        assert!(s.store_offline(DOMAIN, user, "x@y", &format!("<m>{i}</m>"), i, 100).await.expect("store"));
    }
    let now = 1_000;
    let first = s.claim_offline(DOMAIN, user, "1:a:1", now, now + 100, 3).await.expect("claim");
    assert_eq!(first.iter().map(|m| m.stamp_micros).collect::<Vec<_>>(), [0, 1, 2], "oldest first, up to the limit");
    // A second delivery gets only what the first did not claim.
    let second = s.claim_offline(DOMAIN, user, "2:b:1", now, now + 100, 100).await.expect("claim");
    assert_eq!(second.iter().map(|m| m.stamp_micros).collect::<Vec<_>>(), [3, 4]);
    assert!(s.claim_offline(DOMAIN, user, "3:c:1", now, now + 100, 100).await.expect("claim").is_empty());
    assert_eq!(s.count_offline(DOMAIN, user).await.expect("count"), 5, "claimed messages stay stored");

    // Only the claim's own messages are deleted, and only in the range given.
    assert_eq!(s.delete_offline(DOMAIN, user, "2:b:1", first[0].id, first[2].id).await.expect("delete"), 0);
    assert_eq!(s.delete_offline(DOMAIN, user, "1:a:1", first[0].id, first[1].id).await.expect("delete"), 2);
    assert_eq!(s.count_offline(DOMAIN, user).await.expect("count"), 3);

    // A released claim is taken by the next delivery, with what is still claimable.
    assert_eq!(s.release_offline(DOMAIN, user, "1:a:1").await.expect("release"), 1);
    let third = s.claim_offline(DOMAIN, user, "3:c:2", now, now + 100, 100).await.expect("claim");
    assert_eq!(third.iter().map(|m| m.stamp_micros).collect::<Vec<_>>(), [2]);

    // A claim past its time is free again; a claim's earlier messages stay its own.
    let later = now + 101;
    let taken_over = s.claim_offline(DOMAIN, user, "4:d:1", later, later + 100, 100).await.expect("claim");
    assert_eq!(taken_over.iter().map(|m| m.stamp_micros).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(s.delete_offline(DOMAIN, user, "2:b:1", second[0].id, second[1].id).await.expect("delete"), 0);

    // A node starting again ends its earlier claims, and only its own.
    assert!(s.store_offline(DOMAIN, user, "x@y", "<m>5</m>", 5, 100).await.expect("store"));
    let fifth = s.claim_offline(DOMAIN, user, "40:e:1", later, later + 100, 100).await.expect("claim");
    assert_eq!(fifth.len(), 1);
    assert_eq!(s.release_offline_claims("4:").await.expect("release"), 3);
    assert!(s.release_offline_claims("4%").await.is_err(), "a pattern is not a prefix");
    let rest = s.claim_offline(DOMAIN, user, "5:f:1", later, later + 100, 100).await.expect("claim");
    assert_eq!(rest.iter().map(|m| m.stamp_micros).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(s.delete_offline(DOMAIN, user, "5:f:1", rest[0].id, rest[2].id).await.expect("delete"), 3);
    assert_eq!(s.release_offline(DOMAIN, user, "40:e:1").await.expect("release"), 1);
    assert_eq!(take(s, user).await.len(), 1);
    assert_eq!(s.count_offline(DOMAIN, user).await.expect("count"), 0);

    // Concurrent deliveries of one user's messages never share one.
    for i in 0..40 {
        assert!(s.store_offline(DOMAIN, user, "x@y", &format!("<m>{i}</m>"), i, 100).await.expect("store"));
    }
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let claim = format!("9:{i}:{}", got.len());
                    match s.claim_offline(DOMAIN, user, &claim, now, now + 100, 3).await {
                        Ok(m) if m.is_empty() => return got,
                        Ok(m) => got.extend(m.into_iter().map(|m| m.id)),
                        // A deadlock between two claims (InnoDB) is retryable.
                        Err(e) if e.is_retryable() => {}
                        Err(e) => panic!("claim: {e:?}"),
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a message was claimed twice");
    assert_eq!(n, 40, "every message was claimed");
    assert_eq!(s.release_offline_claims("9:").await.expect("release"), 40);
    assert_eq!(take(s, user).await.len(), 40);
}

/// The first value stored under a name stays, whoever asks later or at once.
async fn secrets(s: &Storage) {
    let first = s.shared_secret("salt key", &[1u8; 32]).await.expect("create");
    assert_eq!(first, [1u8; 32]);
    assert_eq!(s.shared_secret("salt key", &[2u8; 32]).await.expect("read"), [1u8; 32], "kept, not replaced");
    assert_eq!(s.shared_secret("other", &[0u8, 255, 7]).await.expect("other name"), [0u8, 255, 7]);
    assert!(s.shared_secret("empty", &[]).await.is_err());
    assert!(s.shared_secret("huge", &[0u8; 1025]).await.is_err());
    // Nodes starting together agree on one value.
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.shared_secret("together", &[i; 32]).await.expect("concurrent") })
        })
        .collect();
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.expect("join"));
    }
    assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
}

async fn xml_data(s: &Storage) {
    assert_eq!(s.get_vcard(DOMAIN, "alice").await.expect("vcard"), None);
    let vcard = format!("<vCard xmlns='vcard-temp'><FN>{UNICODE}</FN></vCard>");
    s.set_vcard(DOMAIN, "alice", &vcard).await.expect("set");
    assert_eq!(s.get_vcard(DOMAIN, "alice").await.expect("vcard"), Some(vcard));
    let big = format!("<vCard xmlns='vcard-temp'><PHOTO><BINVAL>{}</BINVAL></PHOTO></vCard>", long_text(64 * 1024));
    s.set_vcard(DOMAIN, "alice", &big).await.expect("overwrite");
    assert_eq!(s.get_vcard(DOMAIN, "alice").await.expect("vcard"), Some(big));
    assert_eq!(s.get_vcard(DOMAIN, "bob").await.expect("vcard"), None);
    s.set_vcard(DOMAIN, "bob", "<vCard xmlns='vcard-temp'/>").await.expect("set");

    let ns1 = "storage:bookmarks";
    let ns2 = "storage:rosternotes";
    assert_eq!(s.get_private(DOMAIN, "alice", ns1).await.expect("get"), None);
    let x1 = format!("<storage xmlns='{ns1}'><conference name='{UNICODE}'/></storage>");
    let x2 = format!("<storage xmlns='{ns2}'/>");
    s.set_private(DOMAIN, "alice", ns1, &x1).await.expect("set");
    s.set_private(DOMAIN, "alice", ns2, &x2).await.expect("set");
    assert_eq!(s.get_private(DOMAIN, "alice", ns1).await.expect("get"), Some(x1));
    assert_eq!(s.get_private(DOMAIN, "alice", ns2).await.expect("get"), Some(x2.clone()));
    let x1b = format!("<storage xmlns='{ns1}'>{}</storage>", long_text(64 * 1024));
    s.set_private(DOMAIN, "alice", ns1, &x1b).await.expect("overwrite");
    assert_eq!(s.get_private(DOMAIN, "alice", ns1).await.expect("get"), Some(x1b));
    assert_eq!(s.get_private(DOMAIN, "alice", ns2).await.expect("get"), Some(x2));
    assert_eq!(s.get_private(DOMAIN, "alice", "STORAGE:BOOKMARKS").await.expect("get"), None);
    assert_eq!(s.get_private(DOMAIN, "bob", ns1).await.expect("get"), None);
    s.set_private(DOMAIN, "bob", ns1, "<storage xmlns='storage:bookmarks'/>").await.expect("set");
    let x2 = format!("<storage xmlns='{ns2}'/>");
    let x1b_len =
        ns1.len() as u64 + s.get_private(DOMAIN, "alice", ns1).await.expect("get").map_or(0, |x| x.len() as u64);
    assert_eq!(s.private_size(DOMAIN, "alice", ns1).await.expect("size"), (ns2.len() + x2.len()) as u64);
    assert_eq!(s.private_size(DOMAIN, "alice", ns2).await.expect("size"), x1b_len);
    assert_eq!(s.private_size(DOMAIN, "alice", "other").await.expect("size"), x1b_len + (ns2.len() + x2.len()) as u64);
    assert_eq!(s.private_size(DOMAIN, "carol", ns1).await.expect("size"), 0);
}

async fn blocklist(s: &Storage) {
    assert!(s.get_blocklist(DOMAIN, "alice").await.expect("get").is_empty());
    let unicode = format!("{UNICODE}@example.org");
    let items: Vec<String> =
        ["romeo@montague.lit", "example.net", "iago@shakespeare.lit/evil", "Romeo@montague.lit", unicode.as_str()]
            .iter()
            .map(|j| (*j).to_owned())
            .collect();
    s.block(DOMAIN, "alice", &items).await.expect("block");
    // Blocking again (and a duplicate within one call) keeps one row each.
    s.block(DOMAIN, "alice", &["example.net".to_owned(), "x@y".to_owned(), "x@y".to_owned()]).await.expect("block");
    let mut expected = items.clone();
    expected.push("x@y".to_owned());
    expected.sort();
    assert_eq!(expected[0], "Romeo@montague.lit", "code point order");
    assert_eq!(s.get_blocklist(DOMAIN, "alice").await.expect("get"), expected);
    s.block(DOMAIN, "alice", &[]).await.expect("block nothing");

    // Blocklists are per user.
    s.block(DOMAIN, "bob", &["alice@example.org".to_owned()]).await.expect("block");
    assert!(s.get_blocklist(OTHER_DOMAIN, "alice").await.expect("get").is_empty());

    // Exact match on unblock; unknown JIDs are ignored.
    s.unblock(DOMAIN, "alice", &["romeo@montague.lit".to_owned(), "EXAMPLE.NET".to_owned(), "nobody@x".to_owned()])
        .await
        .expect("unblock");
    expected.retain(|j| j != "romeo@montague.lit");
    assert_eq!(s.get_blocklist(DOMAIN, "alice").await.expect("get"), expected);

    s.unblock_all(DOMAIN, "alice").await.expect("unblock all");
    assert!(s.get_blocklist(DOMAIN, "alice").await.expect("get").is_empty());
    s.unblock_all(DOMAIN, "alice").await.expect("unblock all of nothing");
    assert_eq!(s.get_blocklist(DOMAIN, "bob").await.expect("get"), vec!["alice@example.org".to_owned()]);
    // Left for the account removal test.
    s.block(DOMAIN, "alice", &["eve@example.org".to_owned()]).await.expect("block");
}

const ARCHIVE_SIZE: usize = 1000;
const ARCHIVE_BASE: i64 = 1_700_000_000_000_000;

/// Message `i` of alice's archive. Timestamps are not in insert order and every one
/// is shared by two messages (`i` and `i + 500`), so only (timestamp, insert order)
/// orders them; ids are unrelated to that order.
fn archived(i: usize) -> ArchivedMessage {
    let n = i64::try_from(i).expect("small");
    let (with_jid, with_resource) = match i % 4 {
        0 => ("bob@example.org", Some("phone")),
        1 => ("bob@example.org", Some("laptop")),
        2 => ("bob@example.org", None),
        _ => ("carol@example.org", None),
    };
    ArchivedMessage {
        domain: DOMAIN.to_owned(),
        user: "alice".to_owned(),
        id: format!("{:04}-{i}", (i * 389) % 1000),
        stamp_micros: ARCHIVE_BASE + (n * 7) % 500,
        with_jid: with_jid.to_owned(),
        with_resource: with_resource.map(str::to_owned),
        direction: if i.is_multiple_of(3) { ArchiveDirection::Outgoing } else { ArchiveDirection::Incoming },
        stanza: if i == 7 {
            long_text(64 * 1024)
        } else {
            format!("<message type='chat'><body>{UNICODE} #{i}</body></message>")
        },
    }
}

/// Alice's archive in chronological order: by timestamp, ties in insert order.
fn archive_in_order() -> Vec<ArchivedMessage> {
    let mut all: Vec<ArchivedMessage> = (0..ARCHIVE_SIZE).map(archived).collect();
    all.sort_by_key(|m| m.stamp_micros); // stable: ties stay in insert order
    all
}

async fn page(s: &Storage, q: &ArchiveQuery) -> ArchivePage {
    s.query_archive(DOMAIN, "alice", q).await.expect("query archive").expect("known cursors")
}

fn ids(msgs: &[ArchivedMessage]) -> Vec<&str> {
    msgs.iter().map(|m| m.id.as_str()).collect()
}

async fn archive(s: &Storage) {
    let empty = page(s, &ArchiveQuery { max: 50, ..Default::default() }).await;
    assert_eq!(empty, ArchivePage { messages: vec![], first_index: None, count: 0, complete: true });

    // Ten batches of 100; bob's archive gets a message with one of alice's ids.
    let all: Vec<ArchivedMessage> = (0..ARCHIVE_SIZE).map(archived).collect();
    for batch in all.chunks(100) {
        s.store_archive(batch).await.expect("store batch");
    }
    let mut bobs = archived(0);
    bobs.user = "bob".into();
    bobs.with_jid = "alice@example.org".into();
    s.store_archive(std::slice::from_ref(&bobs)).await.expect("same id in another archive");
    // A duplicate id in one archive fails the whole batch.
    let mut fresh = archived(0);
    fresh.id = "fresh".into();
    match s.store_archive(&[fresh, archived(5)]).await {
        Err(StorageError::Conflict(_)) => {}
        other => panic!("duplicate archive id: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        s.query_archive(DOMAIN, "alice", &ArchiveQuery { after: Some("fresh".into()), ..Default::default() })
            .await
            .expect("query"),
        None,
        "nothing of the failed batch was stored"
    );

    let expected = archive_in_order();
    assert_eq!(expected[0].id, archived(0).id);
    assert_eq!(expected[1].id, archived(500).id, "equal timestamps keep insert order");

    // Forward: 10 pages of 100, each after the last id of the one before.
    let mut after = None;
    let mut forward = Vec::new();
    for k in 0..10 {
        let p = page(s, &ArchiveQuery { after: after.clone(), max: 100, ..Default::default() }).await;
        assert_eq!(ids(&p.messages), ids(&expected[k * 100..(k + 1) * 100]), "forward page {k}");
        assert_eq!(p.first_index, Some(u64::try_from(k * 100).expect("small")));
        assert_eq!(p.count, 1000);
        assert_eq!(p.complete, k == 9, "forward page {k}");
        after = p.last_id().map(str::to_owned);
        forward.extend(p.messages);
    }
    assert_eq!(forward, expected, "every field round-trips");
    let past_end = page(s, &ArchiveQuery { after, max: 100, ..Default::default() }).await;
    assert_eq!(past_end, ArchivePage { messages: vec![], first_index: None, count: 1000, complete: true });

    // Backward: the last page, then each page before the first id of the one after it.
    let mut before = None;
    for k in (0..10).rev() {
        let p = page(s, &ArchiveQuery { before: before.clone(), from_end: true, max: 100, ..Default::default() }).await;
        assert_eq!(ids(&p.messages), ids(&expected[k * 100..(k + 1) * 100]), "backward page {k}");
        assert_eq!(p.first_index, Some(u64::try_from(k * 100).expect("small")));
        assert_eq!(p.count, 1000);
        assert_eq!(p.complete, k == 0, "backward page {k}");
        before = p.first_id().map(str::to_owned);
    }

    // The default page size of a caller and the whole archive at once.
    let p = page(s, &ArchiveQuery { max: 50, ..Default::default() }).await;
    assert_eq!(ids(&p.messages), ids(&expected[..50]));
    let p = page(s, &ArchiveQuery { max: 5000, ..Default::default() }).await;
    assert!(p.complete && p.messages.len() == 1000);
    // max = 0 only counts.
    let p = page(s, &ArchiveQuery { max: 0, ..Default::default() }).await;
    assert_eq!(p, ArchivePage { messages: vec![], first_index: None, count: 1000, complete: false });

    // Between two cursors (both exclusive).
    let q = ArchiveQuery {
        after: Some(expected[100].id.clone()),
        before: Some(expected[200].id.clone()),
        max: 250,
        ..Default::default()
    };
    let p = page(s, &q).await;
    assert_eq!(ids(&p.messages), ids(&expected[101..200]));
    assert_eq!(p.first_index, Some(101));
    assert!(p.complete);
    let p = page(s, &ArchiveQuery { from_end: true, max: 10, ..q }).await;
    assert_eq!(ids(&p.messages), ids(&expected[190..200]));
    assert!(!p.complete);

    // `with`: a bare JID matches every resource; a full JID only that resource.
    let bob: Vec<ArchivedMessage> = expected.iter().filter(|m| m.with_jid == "bob@example.org").cloned().collect();
    assert_eq!(bob.len(), 750);
    let q = ArchiveQuery { with_jid: Some("bob@example.org".into()), max: 100, ..Default::default() };
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let p = page(s, &ArchiveQuery { after: after.clone(), ..q.clone() }).await;
        assert_eq!(p.count, 750);
        assert_eq!(p.first_index, Some(u64::try_from(got.len()).expect("small")));
        after = p.last_id().map(str::to_owned);
        got.extend(p.messages);
        if p.complete {
            break;
        }
    }
    assert_eq!(got, bob);
    let phone: Vec<&str> =
        expected.iter().filter(|m| m.with_resource.as_deref() == Some("phone")).map(|m| m.id.as_str()).collect();
    let q = ArchiveQuery {
        with_jid: Some("bob@example.org".into()),
        with_resource: Some("phone".into()),
        max: 1000,
        ..Default::default()
    };
    let p = page(s, &q).await;
    assert_eq!(ids(&p.messages), phone);
    assert_eq!(p.count, 250);
    let p = page(s, &ArchiveQuery { with_jid: Some("BOB@example.org".into()), max: 10, ..Default::default() }).await;
    assert_eq!(p.count, 0, "JIDs compare exactly");
    let carol = ArchiveQuery { with_jid: Some("carol@example.org".into()), max: 1000, ..Default::default() };
    assert_eq!(page(s, &carol).await.count, 250);

    // `start` and `end` are inclusive timestamps.
    let (start, end) = (expected[300].stamp_micros, expected[600].stamp_micros);
    let window: Vec<&str> =
        expected.iter().filter(|m| m.stamp_micros >= start && m.stamp_micros <= end).map(|m| m.id.as_str()).collect();
    assert!(window.len() >= 301);
    let q = ArchiveQuery { start_micros: Some(start), end_micros: Some(end), max: 1000, ..Default::default() };
    let p = page(s, &q).await;
    assert_eq!(ids(&p.messages), window);
    assert_eq!(p.count, u64::try_from(window.len()).expect("small"));
    let q = ArchiveQuery { start_micros: Some(start), max: 1000, ..Default::default() };
    let p = page(s, &q).await;
    assert_eq!(
        ids(&p.messages),
        ids(&expected[expected.iter().position(|m| m.stamp_micros >= start).expect("some")..])
    );
    let q = ArchiveQuery { end_micros: Some(end), max: 1000, ..Default::default() };
    assert_eq!(page(s, &q).await.messages.last().map(|m| m.stamp_micros), Some(end));
    // Filters combine, and a cursor outside the filtered set still positions the page.
    let q = ArchiveQuery {
        with_jid: Some("carol@example.org".into()),
        start_micros: Some(start),
        end_micros: Some(end),
        after: Some(expected[450].id.clone()),
        max: 1000,
        ..Default::default()
    };
    let want: Vec<&str> = expected[451..]
        .iter()
        .filter(|m| m.with_jid == "carol@example.org" && m.stamp_micros <= end)
        .map(|m| m.id.as_str())
        .collect();
    let p = page(s, &q).await;
    assert_eq!(ids(&p.messages), want);
    let q = ArchiveQuery { start_micros: Some(end), end_micros: Some(start), max: 10, ..Default::default() };
    assert_eq!(page(s, &q).await, ArchivePage { messages: vec![], first_index: None, count: 0, complete: true });

    // Unknown cursors, and ids of another archive, are not found.
    for q in [
        ArchiveQuery { after: Some("nope".into()), max: 10, ..Default::default() },
        ArchiveQuery { before: Some("nope".into()), from_end: true, max: 10, ..Default::default() },
    ] {
        assert_eq!(s.query_archive(DOMAIN, "alice", &q).await.expect("query"), None);
    }
    let q = ArchiveQuery { after: Some(expected[3].id.clone()), max: 10, ..Default::default() };
    assert_eq!(s.query_archive(DOMAIN, "carol", &q).await.expect("query"), None);
    // Archives are per user.
    let p = s.query_archive(DOMAIN, "bob", &ArchiveQuery { max: 10, ..Default::default() }).await.expect("query");
    assert_eq!(p.map(|p| p.messages), Some(vec![bobs]));
    let p = s.query_archive(OTHER_DOMAIN, "alice", &ArchiveQuery { max: 10, ..Default::default() }).await;
    assert_eq!(p.expect("query").map(|p| p.count), Some(0));
}

/// Runs after the other parts: alice and bob own roster items, offline messages, a
/// vCard, private XML, an archive and a blocklist by now.
fn fast_token(token: &str, expires_at: i64) -> FastToken {
    FastToken { token: token.into(), expires_at, count: 0, mechanism: "HT-SHA-256-NONE".into() }
}

async fn fast_tokens(s: &Storage) {
    let agent = "d4565fa7-4d72-4749-b3d3-740edbf87770";
    assert_eq!(s.fast_tokens(DOMAIN, "alice", agent).await.expect("none"), FastTokens::default());
    // The first token is the one in use at once.
    s.set_new_fast_token(DOMAIN, "alice", agent, &fast_token("t1", 1_000)).await.expect("set");
    let t = s.fast_tokens(DOMAIN, "alice", agent).await.expect("get");
    assert_eq!((t.current, t.new), (Some(fast_token("t1", 1_000)), None));
    assert!(!s.use_fast_token(DOMAIN, "alice", agent, FastSlot::New, "t1", 0).await.expect("no next token"));
    assert!(!s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "wrong", 0).await.expect("use"));
    // Used again without a count: fine, as often as the client likes.
    assert!(s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "t1", 0).await.expect("reuse"));
    assert!(s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "t1", 0).await.expect("reuse"));
    // With a count: each must be above the last; a replayed one is refused.
    assert!(s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "t1", 5).await.expect("count"));
    assert!(!s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "t1", 5).await.expect("replay"));
    assert!(!s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "t1", 4).await.expect("older"));
    assert!(s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "t1", 6).await.expect("next"));
    // Concurrent logins with the same count: exactly one wins.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.use_fast_token(DOMAIN, "alice", agent, FastSlot::Current, "t1", 7).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.expect("join").expect("use"));
    }
    assert_eq!(won, 1);
    assert_eq!(s.fast_tokens(DOMAIN, "alice", agent).await.expect("get").current.map(|t| t.count), Some(7));
    // Rotation: a next token next to the current one; the current one still works.
    s.set_new_fast_token(DOMAIN, "alice", agent, &fast_token("t2", 2_000)).await.expect("rotate");
    let t = s.fast_tokens(DOMAIN, "alice", agent).await.expect("get");
    assert_eq!(t.current.map(|t| t.token), Some("t1".into()));
    assert_eq!(t.new, Some(fast_token("t2", 2_000)));
    // Used once, the next token becomes the one in use.
    assert!(s.use_fast_token(DOMAIN, "alice", agent, FastSlot::New, "t2", 0).await.expect("use next"));
    let t = s.fast_tokens(DOMAIN, "alice", agent).await.expect("get");
    assert_eq!((t.current, t.new), (Some(fast_token("t2", 2_000)), None));
    // Other agents and users have their own.
    s.set_new_fast_token(DOMAIN, "alice", "other agent", &fast_token("t3", 3_000)).await.expect("set");
    s.set_new_fast_token(DOMAIN, "bob", agent, &fast_token("t4", 4_000)).await.expect("set");
    assert!(!s.use_fast_token(DOMAIN, "bob", agent, FastSlot::New, "t2", 0).await.expect("not bob's"));
    s.remove_fast_tokens(DOMAIN, "alice", "other agent").await.expect("invalidate");
    assert_eq!(s.fast_tokens(DOMAIN, "alice", "other agent").await.expect("gone"), FastTokens::default());
    assert!(s.fast_tokens(DOMAIN, "alice", agent).await.expect("kept").current.is_some());
}

fn inbox_msg(remote: &str, id: &str, stamp: i64, incoming: bool) -> InboxMessage {
    InboxMessage {
        remote_jid: remote.to_owned(),
        msg_id: id.into(),
        content: format!("<message id='{id}'><body>{UNICODE}</body></message>").into(),
        stamp_micros: stamp,
        incoming,
    }
}

async fn inbox_page(s: &Storage, q: InboxQuery) -> Vec<String> {
    s.inbox_query(DOMAIN, "alice", &q).await.expect("inbox query").into_iter().map(|e| e.remote_jid).collect()
}

async fn inbox(s: &Storage) {
    let bob = "bob@example.org";
    // Received: one more unread each; sent: none unread.
    let e = s.inbox_message(DOMAIN, "alice", &inbox_msg(bob, "m1", 1_000, true)).await.expect("in");
    assert_eq!((e.unread_count, e.box_name.as_str(), e.muted_until), (1, "inbox", 0));
    let e = s.inbox_message(DOMAIN, "alice", &inbox_msg(bob, "m2", 2_000, true)).await.expect("in");
    assert_eq!((e.unread_count, e.msg_id.as_str(), e.stamp_micros), (2, "m2", 2_000));
    assert!(e.content.contains(UNICODE));
    // A marker for an older message does nothing; for the last one, all read.
    assert!(!s.inbox_mark_read(DOMAIN, "alice", bob, "m1").await.expect("mark"));
    assert_eq!(s.inbox_entry(DOMAIN, "alice", bob).await.expect("get").map(|e| e.unread_count), Some(2));
    assert!(s.inbox_mark_read(DOMAIN, "alice", bob, "m2").await.expect("mark"));
    assert_eq!(s.inbox_entry(DOMAIN, "alice", bob).await.expect("get").map(|e| e.unread_count), Some(0));
    s.inbox_message(DOMAIN, "alice", &inbox_msg(bob, "m3", 3_000, true)).await.expect("in");
    let e = s.inbox_message(DOMAIN, "alice", &inbox_msg(bob, "m4", 4_000, false)).await.expect("out");
    assert_eq!((e.unread_count, e.msg_id.as_str()), (0, "m4"));
    assert_eq!(s.inbox_entry(DOMAIN, "alice", "nobody@example.org").await.expect("get"), None);
    // An older message written late counts, but the last message stays.
    let e = s.inbox_message(DOMAIN, "alice", &inbox_msg(bob, "late", 3_500, true)).await.expect("late");
    assert_eq!((e.unread_count, e.msg_id.as_str(), e.stamp_micros), (1, "m4", 4_000));
    assert!(s.inbox_mark_read(DOMAIN, "alice", bob, "m4").await.expect("mark"));

    // Conversation actions.
    let carol = "carol@example.org";
    s.inbox_message(DOMAIN, "alice", &inbox_msg(carol, "c1", 5_000, true)).await.expect("in");
    let change = InboxChange { box_name: Some("archive".into()), muted_until: Some(9_000), read: Some(true) };
    let e = s.inbox_change(DOMAIN, "alice", carol, &change).await.expect("change").expect("entry");
    assert_eq!((e.box_name.as_str(), e.muted_until, e.unread_count), ("archive", 9_000, 0));
    let unread = InboxChange { read: Some(false), ..Default::default() };
    let e = s.inbox_change(DOMAIN, "alice", carol, &unread).await.expect("change").expect("entry");
    assert_eq!((e.box_name.as_str(), e.muted_until, e.unread_count), ("archive", 9_000, 1));
    // `read = false` with something unread leaves the count.
    let e = s.inbox_change(DOMAIN, "alice", carol, &unread).await.expect("change").expect("entry");
    assert_eq!(e.unread_count, 1);
    assert_eq!(s.inbox_change(DOMAIN, "alice", "nobody@example.org", &unread).await.expect("change"), None);
    // A new message brings an archived conversation back to the inbox.
    let e = s.inbox_message(DOMAIN, "alice", &inbox_msg(carol, "c2", 6_000, true)).await.expect("in");
    assert_eq!((e.box_name.as_str(), e.unread_count, e.muted_until), ("inbox", 2, 9_000));
    let custom = InboxChange { box_name: Some("work".into()), ..Default::default() };
    s.inbox_change(DOMAIN, "alice", carol, &custom).await.expect("change");
    let e = s.inbox_message(DOMAIN, "alice", &inbox_msg(carol, "c3", 7_000, true)).await.expect("in");
    assert_eq!((e.box_name.as_str(), e.unread_count), ("work", 3), "a custom box keeps its conversations");

    assert_eq!(
        s.inbox_totals(DOMAIN, "alice").await.expect("totals"),
        InboxTotals { unread_messages: 3, active_conversations: 1 }
    );
    assert_eq!(s.inbox_totals(DOMAIN, "nobody").await.expect("totals"), InboxTotals::default());

    // Paging: 30 more conversations, one every 10 µs from 10_000, plus two
    // at the same time, which the remote JID orders.
    for i in 0..30 {
        let remote = format!("u{i:02}@example.org");
        s.inbox_message(DOMAIN, "alice", &inbox_msg(&remote, "x", 10_000 + 10 * i, i % 2 == 0)).await.expect("in");
    }
    for remote in ["tie-b@example.org", "tie-a@example.org"] {
        s.inbox_message(DOMAIN, "alice", &inbox_msg(remote, "t", 20_000, true)).await.expect("in");
    }
    let all = InboxQuery { max: 100, ..Default::default() };
    let names = inbox_page(s, all.clone()).await;
    assert_eq!(names.len(), 34);
    assert_eq!(&names[..4], ["tie-b@example.org", "tie-a@example.org", "u29@example.org", "u28@example.org"]);
    assert_eq!(&names[32..], [carol, bob]);
    // Walk forward through every page of 5, newest first, and backwards again.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .inbox_query(DOMAIN, "alice", &InboxQuery { max: 5, after: after.clone(), ..Default::default() })
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some((last.stamp_micros, last.remote_jid.clone()));
        walked.extend(page.into_iter().map(|e| e.remote_jid));
    }
    assert_eq!(walked, names);
    let before = s.inbox_entry(DOMAIN, "alice", "u10@example.org").await.expect("get").expect("entry");
    let page =
        inbox_page(s, InboxQuery { max: 3, before: Some((before.stamp_micros, before.remote_jid)), ..all.clone() })
            .await;
    assert_eq!(page, ["u13@example.org", "u12@example.org", "u11@example.org"]);
    // Ascending, from the oldest, and the page right before a position.
    let asc = InboxQuery { ascending: true, max: 3, ..Default::default() };
    assert_eq!(inbox_page(s, asc.clone()).await, [bob, carol, "u00@example.org"]);
    let at = s.inbox_entry(DOMAIN, "alice", "u05@example.org").await.expect("get").expect("entry");
    let page = inbox_page(s, InboxQuery { before: Some((at.stamp_micros, at.remote_jid)), ..asc.clone() }).await;
    assert_eq!(page, ["u02@example.org", "u03@example.org", "u04@example.org"]);
    // Time range, inclusive; unread only; a box.
    let range = InboxQuery { start_micros: Some(10_000), end_micros: Some(10_020), ..all.clone() };
    assert_eq!(inbox_page(s, range).await, ["u02@example.org", "u01@example.org", "u00@example.org"]);
    let unread = inbox_page(s, InboxQuery { hidden_read: true, ..all.clone() }).await;
    assert_eq!(unread.len(), 15 + 2 + 1, "even u's, the ties and carol: {unread:?}");
    assert!(!unread.contains(&bob.to_owned()));
    let work = InboxQuery { boxes: InboxBoxes::Only("work".into()), ..all.clone() };
    assert_eq!(inbox_page(s, work).await, [carol]);

    // The bin: out of the default view, in `all`, emptied on demand or by age.
    let bin = InboxChange { box_name: Some("bin".into()), ..Default::default() };
    for remote in [bob, "u00@example.org", "u01@example.org"] {
        s.inbox_change(DOMAIN, "alice", remote, &bin).await.expect("to bin");
    }
    assert_eq!(inbox_page(s, all.clone()).await.len(), 31);
    assert_eq!(inbox_page(s, InboxQuery { boxes: InboxBoxes::All, ..all.clone() }).await.len(), 34);
    let in_bin = InboxQuery { boxes: InboxBoxes::Only("bin".into()), ..all.clone() };
    assert_eq!(inbox_page(s, in_bin.clone()).await, ["u01@example.org", "u00@example.org", bob]);
    assert_eq!(s.inbox_clean_bins(10_000).await.expect("clean"), 1, "only bob's is older");
    assert_eq!(s.inbox_empty_bin(DOMAIN, "alice").await.expect("empty"), 2);
    assert!(inbox_page(s, in_bin).await.is_empty());
    // Other accounts' inboxes are their own.
    s.inbox_message(DOMAIN, "bob", &inbox_msg("alice@example.org", "b1", 1, true)).await.expect("bob");
    assert_eq!(s.inbox_totals(DOMAIN, "bob").await.expect("totals").unread_messages, 1);

    // An update sent twice (its first owner died having written it) counts once.
    let dave = "dave@example.org";
    assert!(s.inbox_write_once(DOMAIN, "zoe", &inbox_msg(dave, "d1", 5, true), "update-1").await.expect("once"));
    assert!(!s.inbox_write_once(DOMAIN, "zoe", &inbox_msg(dave, "d1", 5, true), "update-1").await.expect("twice"));
    assert!(s.inbox_write_once(DOMAIN, "zoe", &inbox_msg(dave, "d2", 6, true), "update-2").await.expect("next"));
    let e = s.inbox_entry(DOMAIN, "zoe", dave).await.expect("get").expect("entry");
    assert_eq!((e.unread_count, e.msg_id.as_str()), (2, "d2"));
    // Forgotten ids (older than the bound given) could be written again.
    assert_eq!(s.inbox_forget_updates(0).await.expect("forget none"), 0);
    assert_eq!(s.inbox_forget_updates(i64::MAX).await.expect("forget"), 2);
    assert!(s.inbox_write_once(DOMAIN, "zoe", &inbox_msg(dave, "d2", 6, true), "update-2").await.expect("again"));

    // Coalesced updates, several conversations in one transaction.
    let (erin, fay, gil) = ("erin@example.org", "fay@example.org", "gil@example.org");
    let last = |id: &str, stamp: i64| {
        Some(InboxLast { msg_id: id.into(), content: format!("<message id='{id}'/>").into(), stamp_micros: stamp })
    };
    let delta = |remote: &str| InboxDelta {
        domain: DOMAIN.into(),
        user: "zoe".into(),
        remote_jid: remote.into(),
        ..Default::default()
    };
    let entry = |remote: &'static str| async move {
        s.inbox_entry(DOMAIN, "zoe", remote).await.expect("get").map(|e| (e.unread_count, e.msg_id))
    };
    s.inbox_apply(&[InboxDelta { last: last("e3", 30), add: 3, ..delta(erin) }]).await.expect("apply");
    assert_eq!(entry(erin).await, Some((3, "e3".into())));
    s.inbox_apply(&[
        // A marker for an older message does nothing, one for the last sets 0; then one more.
        InboxDelta { marks: vec!["e1".into(), "e3".into()], last: last("e4", 40), add: 1, ..delta(erin) },
        InboxDelta { last: last("f1", 10), reset: true, add: 2, ..delta(fay) },
        // Markers alone make no entry.
        InboxDelta { marks: vec!["g1".into()], ..delta(gil) },
    ])
    .await
    .expect("apply");
    assert_eq!(entry(erin).await, Some((1, "e4".into())));
    assert_eq!(entry(fay).await, Some((2, "f1".into())));
    assert_eq!(entry(gil).await, None);
    // The account wrote last: nothing unread; an older last message does not replace the newer.
    s.inbox_apply(&[InboxDelta { last: last("e0", 5), reset: true, ..delta(erin) }]).await.expect("apply");
    assert_eq!(entry(erin).await, Some((0, "e4".into())));
    s.inbox_apply(&[]).await.expect("nothing to apply");

    // A batch large enough for the statements of 32 and 8 rows, with both
    // kinds of update, markers, and one conversation twice: every update
    // lands as if applied one after the other.
    let many: Vec<String> = (0..45).map(|i| format!("m{i:02}@example.org")).collect();
    let mut batch: Vec<InboxDelta> = many
        .iter()
        .enumerate()
        .map(|(i, remote)| InboxDelta {
            last: last(&format!("x{i}"), 100 + i as i64),
            reset: i % 3 == 0,
            add: i as i64 % 5,
            ..delta(remote)
        })
        .collect();
    // m01 again: a marker for its first message (written just before), then one more.
    batch.push(InboxDelta { marks: vec!["x1".into()], last: last("y1", 500), add: 2, ..delta(&many[1]) });
    s.inbox_apply(&batch).await.expect("apply many");
    for (i, remote) in many.iter().enumerate() {
        let got = s.inbox_entry(DOMAIN, "zoe", remote).await.expect("get").map(|e| (e.unread_count, e.msg_id));
        let want = if i == 1 { (2, "y1".to_owned()) } else { (i as i64 % 5, format!("x{i}")) };
        assert_eq!(got, Some(want), "{remote}");
    }
    // The same conversations again, counting on top of what is stored.
    let again: Vec<InboxDelta> =
        many.iter().map(|remote| InboxDelta { last: last("z", 900), add: 1, ..delta(remote) }).collect();
    s.inbox_apply(&again).await.expect("apply again");
    let e = s.inbox_entry(DOMAIN, "zoe", &many[44]).await.expect("get").expect("entry");
    assert_eq!((e.unread_count, e.msg_id.as_str(), e.stamp_micros), (44 % 5 + 1, "z", 900));
}

fn push_sub(jid: &str, node: &str, resource: &str, at: i64) -> PushSubscription {
    PushSubscription {
        pubsub_jid: jid.to_owned(),
        node: node.to_owned(),
        resource: resource.to_owned(),
        form: format!("<x xmlns='jabber:x:data'><field var='secret'><value>{UNICODE}</value></field></x>"),
        created_micros: at,
    }
}

async fn push(s: &Storage) {
    assert!(s.push_subscriptions(DOMAIN, "alice").await.expect("none").is_empty());
    let long_node = "n".repeat(1000);
    let subs = [
        push_sub("push.example.net", "phone", "a", 1),
        push_sub("push.example.net", &long_node, "b", 2),
        push_sub("other.example.net", "phone", "a", 3),
    ];
    for sub in &subs {
        s.enable_push(DOMAIN, "alice", sub).await.expect("enable");
    }
    assert_eq!(s.push_subscriptions(DOMAIN, "alice").await.expect("list"), subs);
    // Enabling the same (app server, node) again replaces it.
    let again =
        PushSubscription { resource: "c".into(), form: String::new(), ..push_sub("push.example.net", "phone", "c", 4) };
    s.enable_push(DOMAIN, "alice", &again).await.expect("again");
    let list = s.push_subscriptions(DOMAIN, "alice").await.expect("list");
    assert_eq!(list.len(), 3);
    assert_eq!(list.last(), Some(&again));
    // One node, then every node of an app server.
    assert_eq!(s.disable_push(DOMAIN, "alice", "push.example.net", Some("phone")).await.expect("disable"), 1);
    assert_eq!(s.disable_push(DOMAIN, "alice", "push.example.net", Some("phone")).await.expect("disable"), 0);
    s.enable_push(DOMAIN, "alice", &again).await.expect("again");
    assert_eq!(s.disable_push(DOMAIN, "alice", "push.example.net", None).await.expect("disable all"), 2);
    assert_eq!(s.push_subscriptions(DOMAIN, "alice").await.expect("list"), [subs[2].clone()]);
    assert!(s.push_subscriptions(DOMAIN, "bob").await.expect("bob").is_empty());
}

fn ps_item(id: &str, payload: &str) -> PubsubItem {
    PubsubItem { id: id.to_owned(), publisher: "alice@example.org/r".into(), payload: payload.to_owned(), seq: 0 }
}

async fn pubsub(s: &Storage) {
    const SVC: &str = "pubsub.example.org";
    let node = |name: &str, at: i64| PubsubNode {
        service: SVC.into(),
        name: name.into(),
        owner: "alice@example.org".into(),
        config: format!("{{\"title\":\"{UNICODE}\"}}"),
        created_micros: at,
    };
    assert_eq!(s.pubsub_node(SVC, "news").await.expect("none"), None);
    s.pubsub_create_node(&node("news", 1)).await.expect("create");
    let long = "n".repeat(1000);
    s.pubsub_create_node(&node(&long, 2)).await.expect("create a long name");
    assert!(matches!(s.pubsub_create_node(&node("news", 3)).await, Err(StorageError::Conflict(_))));
    assert_eq!(s.pubsub_node(SVC, "news").await.expect("get"), Some(node("news", 1)));
    let names: Vec<String> = s.pubsub_nodes(SVC).await.expect("list").into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["news".to_owned(), long.clone()]);
    assert!(s.pubsub_nodes("other.example.org").await.expect("other").is_empty());
    // The creator is an owner.
    assert_eq!(
        s.pubsub_affiliations(SVC, "news").await.expect("affs"),
        [("alice@example.org".to_owned(), "owner".to_owned())]
    );
    assert!(s.pubsub_configure(SVC, "news", "{}").await.expect("configure"));
    assert!(!s.pubsub_configure(SVC, "nothing", "{}").await.expect("configure"));
    assert_eq!(s.pubsub_node(SVC, "news").await.expect("get").map(|n| n.config).as_deref(), Some("{}"));

    // Items: republishing an id replaces it and makes it the latest; max_items trims the oldest.
    let big = long_text(100_000);
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let (seq, removed) =
            s.pubsub_publish(SVC, "news", &ps_item(id, &format!("<p>{i}</p>")), None).await.expect("publish");
        assert_eq!(seq, i as i64 + 1);
        assert!(removed.is_empty());
    }
    let ids = |items: Vec<PubsubItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(ids(s.pubsub_items(SVC, "news", None).await.expect("items")), ["a", "b", "c"]);
    s.pubsub_publish(SVC, "news", &ps_item("a", &big), None).await.expect("republish");
    assert_eq!(ids(s.pubsub_items(SVC, "news", None).await.expect("items")), ["b", "c", "a"]);
    assert_eq!(ids(s.pubsub_items(SVC, "news", Some(2)).await.expect("last 2")), ["c", "a"]);
    let got = s.pubsub_items_by_id(SVC, "news", &["a".into(), "zzz".into(), "b".into()]).await.expect("by id");
    assert_eq!(got.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(got[0].payload, big);
    assert_eq!(got[0].publisher, "alice@example.org/r");
    let (_, removed) = s.pubsub_publish(SVC, "news", &ps_item("d", "<p/>"), Some(2)).await.expect("trim");
    assert_eq!(removed, ["c", "b"]);
    assert_eq!(ids(s.pubsub_items(SVC, "news", None).await.expect("items")), ["a", "d"]);
    assert!(s.pubsub_retract(SVC, "news", "a").await.expect("retract"));
    assert!(!s.pubsub_retract(SVC, "news", "a").await.expect("retract again"));
    s.pubsub_publish(SVC, &long, &ps_item(UNICODE, UNICODE), None).await.expect("unicode item");
    assert_eq!(ids(s.pubsub_items(SVC, &long, None).await.expect("items")), [UNICODE]);
    assert_eq!(s.pubsub_purge(SVC, "news").await.expect("purge"), 1);
    assert!(s.pubsub_items(SVC, "news", None).await.expect("items").is_empty());

    // Affiliations and subscriptions.
    s.pubsub_set_affiliation(SVC, "news", "bob@example.org", Some("publisher")).await.expect("aff");
    s.pubsub_set_affiliation(SVC, "news", "bob@example.org", Some("member")).await.expect("aff again");
    s.pubsub_set_affiliation(SVC, &long, "bob@example.org", Some("outcast")).await.expect("aff");
    assert_eq!(s.pubsub_affiliations(SVC, "news").await.expect("affs").len(), 2);
    assert_eq!(
        s.pubsub_user_affiliations(SVC, "bob@example.org").await.expect("bob's"),
        [("news".to_owned(), "member".to_owned()), (long.clone(), "outcast".to_owned())]
    );
    s.pubsub_set_affiliation(SVC, "news", "bob@example.org", None).await.expect("none");
    assert_eq!(s.pubsub_affiliations(SVC, "news").await.expect("affs").len(), 1);
    let sub = |id: &str, jid: &str, at: i64| PubsubSubscription {
        subid: id.into(),
        jid: jid.into(),
        state: "subscribed".into(),
        created_micros: at,
    };
    s.pubsub_subscribe(SVC, "news", &sub("s1", "bob@example.org", 1)).await.expect("sub");
    s.pubsub_subscribe(SVC, "news", &sub("s2", "bob@example.org/phone", 2)).await.expect("sub");
    s.pubsub_subscribe(SVC, "news", &sub("s3", "bob@example.org", 3)).await.expect("sub");
    s.pubsub_subscribe(SVC, &long, &sub("s4", "bob@example.org", 4)).await.expect("sub");
    let pending = PubsubSubscription { state: "pending".into(), ..sub("s1", "bob@example.org", 1) };
    s.pubsub_subscribe(SVC, "news", &pending).await.expect("state");
    let subs = s.pubsub_subscriptions(SVC, "news").await.expect("subs");
    assert_eq!(subs, [pending.clone(), sub("s2", "bob@example.org/phone", 2), sub("s3", "bob@example.org", 3)]);
    let bobs = s.pubsub_user_subscriptions(SVC, "bob@example.org").await.expect("bob's");
    assert_eq!(
        bobs.iter().map(|(n, s)| (n.len(), s.subid.as_str())).collect::<Vec<_>>(),
        [(4, "s1"), (4, "s3"), (1000, "s4")]
    );
    assert_eq!(s.pubsub_unsubscribe(SVC, "news", "bob@example.org", Some("s3")).await.expect("one"), 1);
    assert_eq!(s.pubsub_unsubscribe(SVC, "news", "bob@example.org", None).await.expect("all"), 1);
    assert_eq!(s.pubsub_subscriptions(SVC, "news").await.expect("subs").len(), 1);

    // Deleting a node deletes what is in it, and nothing of the other.
    s.pubsub_publish(SVC, "news", &ps_item("x", "<p/>"), None).await.expect("publish");
    assert!(s.pubsub_delete_node(SVC, "news").await.expect("delete"));
    assert!(!s.pubsub_delete_node(SVC, "news").await.expect("delete again"));
    assert_eq!(s.pubsub_node(SVC, "news").await.expect("gone"), None);
    assert!(s.pubsub_items(SVC, "news", None).await.expect("items").is_empty());
    assert!(s.pubsub_affiliations(SVC, "news").await.expect("affs").is_empty());
    assert!(s.pubsub_subscriptions(SVC, "news").await.expect("subs").is_empty());
    s.pubsub_create_node(&node("news", 5)).await.expect("a node of the same name again");
    assert!(s.pubsub_items(SVC, "news", None).await.expect("fresh").is_empty());
    assert_eq!(s.pubsub_items(SVC, &long, None).await.expect("other node").len(), 1);

    // Alice's PEP node, which goes with her account.
    let pep = PubsubNode { service: "alice@example.org".into(), ..node("urn:xmpp:avatar:metadata", 6) };
    s.pubsub_create_node(&pep).await.expect("pep");
    s.pubsub_publish(&pep.service, &pep.name, &ps_item("current", "<metadata/>"), Some(1)).await.expect("publish");
}

async fn remove_account_cascades(s: &Storage) {
    assert!(!s.get_roster(DOMAIN, "alice").await.expect("roster").is_empty());
    assert!(s.count_offline(DOMAIN, "alice").await.expect("count") > 0);
    let everything = ArchiveQuery { max: 10, ..Default::default() };
    assert_eq!(s.query_archive(DOMAIN, "alice", &everything).await.expect("archive").map(|p| p.count), Some(1000));
    assert!(!s.get_blocklist(DOMAIN, "alice").await.expect("blocklist").is_empty());
    assert!(s.inbox_totals(DOMAIN, "alice").await.expect("inbox").unread_messages > 0);
    assert!(!s.push_subscriptions(DOMAIN, "alice").await.expect("push").is_empty());
    assert_eq!(s.pubsub_nodes("alice@example.org").await.expect("pep").len(), 1);

    assert!(s.remove_account(DOMAIN, "alice").await.expect("remove"));
    assert!(s.pubsub_nodes("alice@example.org").await.expect("pep").is_empty());
    assert!(s.pubsub_items("alice@example.org", "urn:xmpp:avatar:metadata", None).await.expect("items").is_empty());
    // Other services' nodes stay.
    assert_eq!(s.pubsub_nodes("pubsub.example.org").await.expect("service").len(), 2);
    assert_eq!(s.get_password(DOMAIN, "alice").await.expect("get"), None);
    assert!(s.get_roster(DOMAIN, "alice").await.expect("roster").is_empty());
    assert_eq!(s.get_item(DOMAIN, "alice", "carol@example.org").await.expect("item"), None);
    assert_eq!(s.count_offline(DOMAIN, "alice").await.expect("count"), 0);
    assert_eq!(s.get_vcard(DOMAIN, "alice").await.expect("vcard"), None);
    assert_eq!(s.get_private(DOMAIN, "alice", "storage:bookmarks").await.expect("private"), None);
    assert_eq!(s.get_private(DOMAIN, "alice", "storage:rosternotes").await.expect("private"), None);
    assert_eq!(s.query_archive(DOMAIN, "alice", &everything).await.expect("archive").map(|p| p.count), Some(0));
    assert!(s.get_blocklist(DOMAIN, "alice").await.expect("blocklist").is_empty());
    assert!(s
        .inbox_query(DOMAIN, "alice", &InboxQuery { max: 10, ..Default::default() })
        .await
        .expect("inbox")
        .is_empty());
    assert_eq!(
        s.fast_tokens(DOMAIN, "alice", "d4565fa7-4d72-4749-b3d3-740edbf87770").await.expect("fast"),
        FastTokens::default()
    );
    assert!(!s.remove_account(DOMAIN, "alice").await.expect("remove again"));
    // A re-created account starts empty…
    s.create_account(DOMAIN, "alice", &StoredPassword::Plain("new".into())).await.expect("re-create");
    assert!(s.get_roster(DOMAIN, "alice").await.expect("roster").is_empty());

    // …and nobody else lost anything.
    assert!(s.get_password(DOMAIN, "bob").await.expect("get").is_some());
    assert!(s.get_password(OTHER_DOMAIN, "alice").await.expect("get").is_some());
    assert_eq!(s.get_roster(DOMAIN, "bob").await.expect("roster").len(), 1);
    assert_eq!(s.count_offline(DOMAIN, "bob").await.expect("count"), 1);
    assert!(s.get_vcard(DOMAIN, "bob").await.expect("vcard").is_some());
    assert!(s.get_private(DOMAIN, "bob", "storage:bookmarks").await.expect("private").is_some());
    assert_eq!(s.query_archive(DOMAIN, "bob", &everything).await.expect("archive").map(|p| p.count), Some(1));
    assert_eq!(s.get_blocklist(DOMAIN, "bob").await.expect("blocklist"), vec!["alice@example.org".to_owned()]);
    assert_eq!(s.inbox_totals(DOMAIN, "bob").await.expect("inbox").unread_messages, 1);
    assert_eq!(s.count_accounts(DOMAIN).await.expect("count"), 6);
}

/// The whole suite, on a freshly migrated, empty database.
async fn test_suite(s: &Storage) {
    s.ping().await.expect("ping");
    accounts(s).await;
    roster(s).await;
    offline(s).await;
    concurrent_offline(s).await;
    offline_claims(s).await;
    secrets(s).await;
    xml_data(s).await;
    archive(s).await;
    blocklist(s).await;
    fast_tokens(s).await;
    inbox(s).await;
    push(s).await;
    pubsub(s).await;
    remove_account_cascades(s).await;
    s.ping().await.expect("ping");
}

/// Runs the suite in its own task so that a failure still lets the caller clean up.
async fn run_suite_catching(s: &Storage) -> Result<(), tokio::task::JoinError> {
    let s2 = s.clone();
    tokio::spawn(async move { test_suite(&s2).await }).await
}

fn resume(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test suite task failed: {e}"),
        }
    }
}

/// `Preferred` connects whether or not the server offers TLS (the local PostgreSQL
/// does, MariaDB doesn't); `Required` insists on a certificate that verifies, which
/// neither test server has, and must fail rather than fall back to plain text.
async fn tls_modes(url: String) {
    let mut cfg = config(&url);
    cfg.tls = DbTls::Preferred;
    let s = Storage::connect(&cfg).await.expect("connect with TLS preferred");
    s.ping().await.expect("ping");
    assert_eq!(s.count_accounts(DOMAIN).await.expect("count"), 6);
    s.close().await;

    cfg.tls = DbTls::Required { ca_file: None };
    cfg.connect_timeout = Duration::from_secs(3);
    match Storage::connect(&cfg).await {
        Err(e) => assert!(!e.is_retryable(), "a TLS failure is fatal: {e:?}"),
        Ok(_) => panic!("connected without a verified TLS certificate"),
    }
}

/// What MariaDB stores: utf8mb4_bin tables, and 4-byte characters as real UTF-8 (not
/// mojibake that only this driver would read back).
async fn mysql_stored_bytes(admin: &sqlx::MySqlPool, db: &str) {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME <> '_sqlx_migrations'",
    )
    .bind(db)
    .fetch_all(admin)
    .await
    .expect("information_schema");
    assert_eq!(rows.len(), 17);
    for r in &rows {
        let collation: String = r.try_get("TABLE_COLLATION").expect("collation");
        assert_eq!(collation, "utf8mb4_bin");
    }
    let hex: String = sqlx::query(AssertSqlSafe(format!(
        "SELECT HEX(username) AS h FROM `{db}`.accounts \
         WHERE domain = 'example.org' AND username LIKE '%-user'"
    )))
    .fetch_one(admin)
    .await
    .expect("emoji user")
    .try_get("h")
    .expect("hex");
    let expected: String = format!("{UNICODE}-user").bytes().map(|b| format!("{b:02X}")).collect();
    assert_eq!(hex, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub dir").join("meerkat.db");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let url = format!("sqlite://{}", path.display());
    let s = Storage::connect(&config(&url)).await.expect("open sqlite file");
    assert_eq!(s.backend_name(), "sqlite");
    assert!(path.exists(), "database file created");
    test_suite(&s).await;
    s.close().await;

    // Reopening runs the (already applied) migrations again and keeps the data.
    let s = Storage::connect(&config(&format!("sqlite:{}", path.display()))).await.expect("reopen sqlite file");
    assert_eq!(s.count_accounts(DOMAIN).await.expect("count"), 6);
    assert_eq!(
        s.get_private(DOMAIN, "bob", "storage:bookmarks").await.expect("private"),
        Some("<storage xmlns='storage:bookmarks'/>".to_owned())
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory() {
    let s = Storage::connect(&config("sqlite::memory:")).await.expect("open in-memory sqlite");
    assert_eq!(s.backend_name(), "sqlite");
    test_suite(&s).await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let admin_url =
        std::env::var("MEERKAT_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL unreachable at {admin_url} (set MEERKAT_TEST_PG_URL): {e}"));
    let db = unique_db_name();
    admin.execute(AssertSqlSafe(format!("CREATE DATABASE \"{db}\""))).await.expect("create test database");

    // Also exercises the `postgresql:` scheme alias.
    let url = with_database(&admin_url, &db).replacen("postgres:", "postgresql:", 1);
    let result = match Storage::connect(&config(&url)).await {
        Ok(s) => {
            assert_eq!(s.backend_name(), "postgres");
            let mut r = run_suite_catching(&s).await;
            s.close().await;
            if r.is_ok() {
                r = tokio::spawn(tls_modes(with_database(&admin_url, &db))).await;
            }
            Ok(r)
        }
        Err(e) => Err(e),
    };
    admin
        .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")))
        .await
        .expect("drop test database");
    admin.close().await;
    resume(result.expect("connect to the test database"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql() {
    let admin_url =
        std::env::var("MEERKAT_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let admin = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("MySQL/MariaDB unreachable at {admin_url} (set MEERKAT_TEST_MYSQL_URL): {e}"));
    let db = unique_db_name();
    admin
        .execute(AssertSqlSafe(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")))
        .await
        .expect("create test database");

    // Also exercises the `mariadb:` scheme alias.
    let url = with_database(&admin_url, &db).replacen("mysql:", "mariadb:", 1);
    let result = match Storage::connect(&config(&url)).await {
        Ok(s) => {
            assert_eq!(s.backend_name(), "mysql");
            let mut r = run_suite_catching(&s).await;
            s.close().await;
            if r.is_ok() {
                let admin = admin.clone();
                let db = db.clone();
                r = tokio::spawn(async move { mysql_stored_bytes(&admin, &db).await }).await;
            }
            if r.is_ok() {
                r = tokio::spawn(tls_modes(url.clone())).await;
            }
            Ok(r)
        }
        Err(e) => Err(e),
    };
    admin.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db}`"))).await.expect("drop test database");
    admin.close().await;
    resume(result.expect("connect to the test database"));
}

#[tokio::test]
async fn unreachable_database_is_retryable() {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let mut cfg = config("postgres://postgres@127.0.0.1:1/nothing");
    cfg.connect_timeout = Duration::from_secs(1);
    match Storage::connect(&cfg).await {
        Err(e) => assert!(e.is_retryable(), "connection refused should be retryable: {e:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

#[tokio::test]
async fn bad_configuration_is_fatal() {
    for url in ["ftp://example.org/db", "no scheme at all"] {
        match Storage::connect(&config(url)).await {
            Err(e @ StorageError::Config(_)) => assert!(!e.is_retryable()),
            other => panic!("{url}: expected Config error, got {other:?}"),
        }
    }
}

#[test]
fn with_database_rewrites_the_path() {
    assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
    assert_eq!(
        with_database("mysql://root@127.0.0.1:3306/test?ssl-mode=DISABLED", "x"),
        "mysql://root@127.0.0.1:3306/x?ssl-mode=DISABLED"
    );
    assert_eq!(with_database("mysql://root@h", "x"), "mysql://root@h/x");
}
