-- XEP-0191 blocklists: the JIDs each user blocks, one row per JID. `jid` is the
-- item as the server made it canonical (a domain, a bare JID or a full JID).

CREATE TABLE blocklist_items (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    jid             TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (domain, username, jid)
);
