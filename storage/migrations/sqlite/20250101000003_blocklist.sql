-- XEP-0191 blocklists: the JIDs each user blocks, one row per JID. `jid` is the
-- item as the server made it canonical (a domain, a bare JID or a full JID).

CREATE TABLE blocklist_items (
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    jid             TEXT    NOT NULL,
    PRIMARY KEY (domain, username, jid)
);
