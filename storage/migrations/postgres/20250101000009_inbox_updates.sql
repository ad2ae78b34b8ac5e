-- Ids of inbox updates written, for updates a node may send twice: one sent
-- again to a conversation's new owner after its first owner went away, having
-- written it or not. An update whose id is here is not written again. Ids
-- older than a day are forgotten with the bin cleaning.

CREATE TABLE inbox_updates (
    update_id       TEXT COLLATE "C" PRIMARY KEY,
    stamp_micros    BIGINT NOT NULL
);
CREATE INDEX inbox_updates_stamp ON inbox_updates (stamp_micros);
