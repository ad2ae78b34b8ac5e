-- Inbox (MongooseIM's erlang-solutions.com:xmpp:inbox:0): one row per
-- conversation of an account, keyed by the other party's bare JID. It holds
-- the conversation's last message (its id attribute and the stanza as sent),
-- when it came (µs since the epoch), how many messages the account has not
-- read, its box ('inbox', 'archive', 'bin' or a configured box) and until
-- when it is muted (µs since the epoch; 0 when it is not).

CREATE TABLE inbox_entries (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    remote_jid      TEXT COLLATE "C" NOT NULL,
    msg_id          TEXT COLLATE "C" NOT NULL,
    content         TEXT NOT NULL,
    stamp_micros    BIGINT NOT NULL,
    unread_count    BIGINT NOT NULL,
    box_name        TEXT COLLATE "C" NOT NULL,
    muted_until     BIGINT NOT NULL,
    PRIMARY KEY (domain, username, remote_jid)
);
CREATE INDEX inbox_entries_order ON inbox_entries (domain, username, stamp_micros, remote_jid);
CREATE INDEX inbox_entries_box ON inbox_entries (box_name, stamp_micros);
