-- Meerkat storage schema, SQLite flavour.
--
-- JIDs and namespaces use SQLite's default BINARY collation (memcmp on UTF-8), so
-- lookups are exact and ORDER BY sorts by code point, like the other backends.
-- Timestamps are INTEGER microseconds since the Unix epoch.

CREATE TABLE accounts (
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    password_kind   TEXT    NOT NULL,
    password        TEXT    NOT NULL,
    created_micros  INTEGER NOT NULL,
    PRIMARY KEY (domain, username)
);

CREATE TABLE roster_items (
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    contact         TEXT    NOT NULL,
    name            TEXT,
    subscription    TEXT    NOT NULL,
    ask_out         INTEGER NOT NULL DEFAULT 0,
    pending_in      INTEGER NOT NULL DEFAULT 0,
    pre_approved    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (domain, username, contact)
);

CREATE TABLE roster_groups (
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    contact         TEXT    NOT NULL,
    group_name      TEXT    NOT NULL,
    PRIMARY KEY (domain, username, contact, group_name)
);

-- AUTOINCREMENT: ids are never reused, so they give the store order.
CREATE TABLE offline_messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    sender          TEXT    NOT NULL,
    stanza          TEXT    NOT NULL,
    stamp_micros    INTEGER NOT NULL
);
CREATE INDEX offline_messages_owner ON offline_messages (domain, username, id);

CREATE TABLE vcards (
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    xml             TEXT    NOT NULL,
    updated_micros  INTEGER NOT NULL,
    PRIMARY KEY (domain, username)
);

CREATE TABLE private_storage (
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    namespace       TEXT    NOT NULL,
    xml             TEXT    NOT NULL,
    updated_micros  INTEGER NOT NULL,
    PRIMARY KEY (domain, username, namespace)
);
