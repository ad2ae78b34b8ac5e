-- XEP-0060 publish-subscribe and XEP-0163 PEP. A node belongs to a service:
-- a PubSub service domain (pubsub.example.org) or, for PEP, an account's
-- bare JID. Keys are hex SHA-256 digests of what they key (node_key: the
-- service and node name; service_key: the service; item_key: the item id;
-- jid_key: the JID), so that keys stay small whatever the names are.
-- A node's configuration is opaque here (JSON written by mod_pubsub).

CREATE TABLE pubsub_nodes (
    node_key        CHAR(64) NOT NULL,
    service_key     CHAR(64) NOT NULL,
    service         TEXT NOT NULL,
    name            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    config          MEDIUMTEXT NOT NULL,
    created_micros  BIGINT NOT NULL,
    PRIMARY KEY (node_key)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX pubsub_nodes_service ON pubsub_nodes (service_key);

-- Published items; seq orders them (the last published is the highest).
CREATE TABLE pubsub_items (
    node_key        CHAR(64) NOT NULL,
    item_key        CHAR(64) NOT NULL,
    item_id         TEXT NOT NULL,
    publisher       TEXT NOT NULL,
    payload         MEDIUMTEXT NOT NULL,
    seq             BIGINT NOT NULL,
    PRIMARY KEY (node_key, item_key)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX pubsub_items_seq ON pubsub_items (node_key, seq);

-- Affiliations other than none (owner, publisher, publish-only, member, outcast).
CREATE TABLE pubsub_affiliations (
    node_key        CHAR(64) NOT NULL,
    jid_key         CHAR(64) NOT NULL,
    jid             TEXT NOT NULL,
    affiliation     VARCHAR(16) NOT NULL,
    PRIMARY KEY (node_key, jid_key)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Subscriptions, each with its id; a JID may hold several.
CREATE TABLE pubsub_subscriptions (
    node_key        CHAR(64) NOT NULL,
    subid           VARCHAR(64) NOT NULL,
    jid_key         CHAR(64) NOT NULL,
    jid             TEXT NOT NULL,
    state           VARCHAR(16) NOT NULL,
    created_micros  BIGINT NOT NULL,
    PRIMARY KEY (node_key, subid)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX pubsub_subscriptions_jid ON pubsub_subscriptions (jid_key);
