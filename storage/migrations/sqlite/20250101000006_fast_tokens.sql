-- XEP-0484 FAST tokens, one row per (account, user agent): the token in use
-- and the next one (issued on request or rotation, and promoted to current
-- the first time the client logs in with it), each with its expiry (Unix
-- seconds), the highest count seen with it, and its mechanism.

CREATE TABLE fast_tokens (
    domain          TEXT NOT NULL,
    username        TEXT NOT NULL,
    user_agent      TEXT NOT NULL,
    current_token   TEXT,
    current_expire  BIGINT,
    current_count   BIGINT,
    current_mech    TEXT,
    new_token       TEXT,
    new_expire      BIGINT,
    new_count       BIGINT,
    new_mech        TEXT,
    PRIMARY KEY (domain, username, user_agent)
);
