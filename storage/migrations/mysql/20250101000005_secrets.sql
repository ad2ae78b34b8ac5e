-- Secrets the server keeps for itself, shared by every node on this database
-- (such as the key fake SCRAM salts are derived from). Written once, when
-- the first node finds none; never changed afterwards.

CREATE TABLE server_secrets (
    name            VARCHAR(255)   NOT NULL,
    value           VARBINARY(1024) NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
