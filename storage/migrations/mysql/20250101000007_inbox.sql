-- Inbox (MongooseIM's erlang-solutions.com:xmpp:inbox:0), MySQL / MariaDB
-- flavour: one row per conversation of an account, keyed by the other
-- party's bare JID. It holds the conversation's last message (its id
-- attribute and the stanza as sent), when it came (µs since the epoch), how
-- many messages the account has not read, its box ('inbox', 'archive', 'bin'
-- or a configured box) and until when it is muted (µs since the epoch; 0
-- when it is not).
--
-- The order index stops at stamp_micros to stay within InnoDB's 3072-byte key
-- limit; InnoDB appends the primary key (which ends with remote_jid) to it.

CREATE TABLE inbox_entries (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    remote_jid      VARCHAR(255) NOT NULL,
    msg_id          VARCHAR(255) NOT NULL,
    content         MEDIUMTEXT   NOT NULL,
    stamp_micros    BIGINT       NOT NULL,
    unread_count    BIGINT       NOT NULL,
    box_name        VARCHAR(64)  NOT NULL,
    muted_until     BIGINT       NOT NULL,
    PRIMARY KEY (domain, username, remote_jid),
    KEY inbox_entries_order (domain, username, stamp_micros),
    KEY inbox_entries_box (box_name, stamp_micros)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
