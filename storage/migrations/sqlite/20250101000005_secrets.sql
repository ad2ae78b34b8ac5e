-- Secrets the server keeps for itself, shared by every node on this database
-- (such as the key fake SCRAM salts are derived from). Written once, when
-- the first node finds none; never changed afterwards.

CREATE TABLE server_secrets (
    name            TEXT    NOT NULL PRIMARY KEY,
    value           BLOB    NOT NULL
);
