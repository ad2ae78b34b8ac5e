-- Meerkat storage schema, PostgreSQL flavour.
--
-- Every JID / namespace column uses COLLATE "C": equality is exact and ORDER BY sorts
-- by byte (= code point) order, independent of the database's default locale.
-- Timestamps are BIGINT microseconds since the Unix epoch.

CREATE TABLE accounts (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    password_kind   VARCHAR(16)      NOT NULL,
    password        TEXT             NOT NULL,
    created_micros  BIGINT           NOT NULL,
    PRIMARY KEY (domain, username)
);

CREATE TABLE roster_items (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    contact         TEXT COLLATE "C" NOT NULL,
    name            TEXT,
    subscription    VARCHAR(8)       NOT NULL,
    ask_out         BOOLEAN          NOT NULL DEFAULT FALSE,
    pending_in      BOOLEAN          NOT NULL DEFAULT FALSE,
    pre_approved    BOOLEAN          NOT NULL DEFAULT FALSE,
    PRIMARY KEY (domain, username, contact)
);

CREATE TABLE roster_groups (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    contact         TEXT COLLATE "C" NOT NULL,
    group_name      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (domain, username, contact, group_name)
);

CREATE TABLE offline_messages (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    sender          TEXT             NOT NULL,
    stanza          TEXT             NOT NULL,
    stamp_micros    BIGINT           NOT NULL
);
CREATE INDEX offline_messages_owner ON offline_messages (domain, username, id);

CREATE TABLE vcards (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    xml             TEXT             NOT NULL,
    updated_micros  BIGINT           NOT NULL,
    PRIMARY KEY (domain, username)
);

CREATE TABLE private_storage (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    namespace       TEXT COLLATE "C" NOT NULL,
    xml             TEXT             NOT NULL,
    updated_micros  BIGINT           NOT NULL,
    PRIMARY KEY (domain, username, namespace)
);
