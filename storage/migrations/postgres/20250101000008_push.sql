-- XEP-0357 push notifications: the app servers (a JID and a node there) an
-- account's clients enabled, with the publish-options form to send along
-- (serialized XML, '' when none) and the resource that enabled it.
-- `sub_key` is the hex SHA-256 of the app server's JID and node (as in the
-- MySQL schema, whose key size is limited).

CREATE TABLE push_subscriptions (
    domain          TEXT COLLATE "C" NOT NULL,
    username        TEXT COLLATE "C" NOT NULL,
    sub_key         TEXT COLLATE "C" NOT NULL,
    pubsub_jid      TEXT NOT NULL,
    node            TEXT NOT NULL,
    resource        TEXT NOT NULL,
    form            TEXT NOT NULL,
    created_micros  BIGINT NOT NULL,
    PRIMARY KEY (domain, username, sub_key)
);
