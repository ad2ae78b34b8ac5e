-- XEP-0357 push notifications, MySQL / MariaDB flavour: the app servers (a
-- JID and a node there) an account's clients enabled, with the
-- publish-options form to send along (serialized XML, '' when none) and the
-- resource that enabled it. `sub_key` is the hex SHA-256 of the app server's
-- JID and node, so that the key fits InnoDB's 3072 bytes.

CREATE TABLE push_subscriptions (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    sub_key         CHAR(64)     NOT NULL,
    pubsub_jid      TEXT         NOT NULL,
    node            TEXT         NOT NULL,
    resource        TEXT         NOT NULL,
    form            MEDIUMTEXT   NOT NULL,
    created_micros  BIGINT       NOT NULL,
    PRIMARY KEY (domain, username, sub_key)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
