-- Meerkat storage schema, MySQL / MariaDB flavour.
--
-- All tables are utf8mb4 with the utf8mb4_bin collation: 4-byte characters (emoji)
-- survive, JIDs compare exactly (no case or accent folding) and ORDER BY sorts by code
-- point, like the other backends.
-- Key columns are VARCHAR(255): InnoDB (DYNAMIC row format) allows index keys up to
-- 3072 bytes, and 3 x 255 characters x 4 bytes = 3060 bytes.
-- Bulk XML columns are MEDIUMTEXT (16 MiB); TEXT would cap them at 64 KiB.
-- Timestamps are BIGINT microseconds since the Unix epoch.

CREATE TABLE accounts (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    password_kind   VARCHAR(16)  NOT NULL,
    password        TEXT         NOT NULL,
    created_micros  BIGINT       NOT NULL,
    PRIMARY KEY (domain, username)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE roster_items (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    contact         VARCHAR(255) NOT NULL,
    name            TEXT,
    subscription    VARCHAR(8)   NOT NULL,
    ask_out         BOOLEAN      NOT NULL DEFAULT FALSE,
    pending_in      BOOLEAN      NOT NULL DEFAULT FALSE,
    pre_approved    BOOLEAN      NOT NULL DEFAULT FALSE,
    PRIMARY KEY (domain, username, contact)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The group name cannot join the key (it would exceed 3072 bytes); the code
-- deduplicates groups before inserting them.
CREATE TABLE roster_groups (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    contact         VARCHAR(255) NOT NULL,
    group_name      TEXT         NOT NULL,
    PRIMARY KEY (id),
    KEY roster_groups_item (domain, username, contact)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE offline_messages (
    id              BIGINT       NOT NULL AUTO_INCREMENT,
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    sender          TEXT         NOT NULL,
    stanza          MEDIUMTEXT   NOT NULL,
    stamp_micros    BIGINT       NOT NULL,
    PRIMARY KEY (id),
    KEY offline_messages_owner (domain, username, id)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE vcards (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    xml             MEDIUMTEXT   NOT NULL,
    updated_micros  BIGINT       NOT NULL,
    PRIMARY KEY (domain, username)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE private_storage (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    namespace       VARCHAR(255) NOT NULL,
    xml             MEDIUMTEXT   NOT NULL,
    updated_micros  BIGINT       NOT NULL,
    PRIMARY KEY (domain, username, namespace)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
