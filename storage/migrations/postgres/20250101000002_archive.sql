-- XEP-0313 user message archives.
--
-- One row per message per archive: a message between two local users is stored
-- twice, once in each user's archive. `archive_id` is the id clients see (the
-- XEP-0359 stanza-id), unique within an archive. `seq` is an identity column
-- (never reused): (stamp_micros, seq) is a total, stable order for paging even
-- when timestamps are equal. `with_jid` is the peer's bare JID, `with_resource`
-- its resource or '' (resources are never empty), and `direction` is 'in' or
-- 'out', seen from the archive's owner.

CREATE TABLE archive_messages (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    archive_id      TEXT COLLATE "C" NOT NULL,
    stamp_micros    BIGINT           NOT NULL,
    with_jid        TEXT COLLATE "C" NOT NULL,
    with_resource   TEXT COLLATE "C" NOT NULL,
    direction       VARCHAR(3)       NOT NULL,
    stanza          TEXT             NOT NULL
);
CREATE UNIQUE INDEX archive_messages_id ON archive_messages (domain, username, archive_id);
CREATE INDEX archive_messages_order ON archive_messages (domain, username, stamp_micros, seq);
CREATE INDEX archive_messages_with ON archive_messages (domain, username, with_jid, stamp_micros, seq);
