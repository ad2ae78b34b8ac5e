-- XEP-0313 user message archives, MySQL / MariaDB flavour.
--
-- One row per message per archive: a message between two local users is stored
-- twice, once in each user's archive. `archive_id` is the id clients see (the
-- XEP-0359 stanza-id), unique within an archive. `seq` is AUTO_INCREMENT, so it
-- grows in insert order: (stamp_micros, seq) is a total, stable order for paging
-- even when timestamps are equal. `with_jid` is the peer's bare JID,
-- `with_resource` its resource or '' (resources are never empty), and
-- `direction` is 'in' or 'out', seen from the archive's owner.
--
-- Like the other key columns, `with_jid` is VARCHAR(255). The `with` index stops
-- at stamp_micros to stay within InnoDB's 3072-byte key limit
-- (3 x 255 x 4 + 8 = 3068 bytes); InnoDB appends the primary key (`seq`) to every
-- secondary index anyway, so it still orders by (stamp_micros, seq).

CREATE TABLE archive_messages (
    seq             BIGINT       NOT NULL AUTO_INCREMENT,
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    archive_id      VARCHAR(64)  NOT NULL,
    stamp_micros    BIGINT       NOT NULL,
    with_jid        VARCHAR(255) NOT NULL,
    with_resource   TEXT         NOT NULL,
    direction       VARCHAR(3)   NOT NULL,
    stanza          MEDIUMTEXT   NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY archive_messages_id (domain, username, archive_id),
    KEY archive_messages_order (domain, username, stamp_micros, seq),
    KEY archive_messages_with (domain, username, with_jid, stamp_micros)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
