-- XEP-0484 FAST tokens, MySQL / MariaDB flavour: one row per (account, user
-- agent): the token in use and the next one (issued on request or rotation,
-- and promoted to current the first time the client logs in with it), each
-- with its expiry (Unix seconds), the highest count seen with it, and its
-- mechanism.

CREATE TABLE fast_tokens (
    domain          VARCHAR(255) NOT NULL,
    username        VARCHAR(255) NOT NULL,
    user_agent      VARCHAR(255) NOT NULL,
    current_token   VARCHAR(255),
    current_expire  BIGINT,
    current_count   BIGINT,
    current_mech    VARCHAR(64),
    new_token       VARCHAR(255),
    new_expire      BIGINT,
    new_count       BIGINT,
    new_mech        VARCHAR(64),
    PRIMARY KEY (domain, username, user_agent)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
