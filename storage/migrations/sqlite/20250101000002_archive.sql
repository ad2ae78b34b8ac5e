-- XEP-0313 user message archives.
--
-- One row per message per archive: a message between two local users is stored
-- twice, once in each user's archive. `archive_id` is the id clients see (the
-- XEP-0359 stanza-id), unique within an archive. `seq` is AUTOINCREMENT, so it is
-- never reused and grows in insert order: (stamp_micros, seq) is a total, stable
-- order for paging even when timestamps are equal. `with_jid` is the peer's bare
-- JID, `with_resource` its resource or '' (resources are never empty), and
-- `direction` is 'in' or 'out', seen from the archive's owner.

CREATE TABLE archive_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    archive_id      TEXT    NOT NULL,
    stamp_micros    INTEGER NOT NULL,
    with_jid        TEXT    NOT NULL,
    with_resource   TEXT    NOT NULL,
    direction       TEXT    NOT NULL,
    stanza          TEXT    NOT NULL
);
CREATE UNIQUE INDEX archive_messages_id ON archive_messages (domain, username, archive_id);
CREATE INDEX archive_messages_order ON archive_messages (domain, username, stamp_micros, seq);
CREATE INDEX archive_messages_with ON archive_messages (domain, username, with_jid, stamp_micros, seq);
