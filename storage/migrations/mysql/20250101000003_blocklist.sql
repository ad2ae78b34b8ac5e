-- XEP-0191 blocklists, MySQL / MariaDB flavour: the JIDs each user blocks, one row
-- per JID. `jid` is the item as the server made it canonical (a domain, a bare JID
-- or a full JID). Like the other key columns it is VARCHAR(255), so the key stays
-- within InnoDB's 3072-byte limit; the server refuses longer items.

CREATE TABLE blocklist_items (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    jid             VARCHAR(255) NOT NULL,
    PRIMARY KEY (domain, username, jid)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
