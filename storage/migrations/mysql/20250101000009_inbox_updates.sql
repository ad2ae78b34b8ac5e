-- Ids of inbox updates written, MySQL / MariaDB flavour, for updates a node
-- may send twice: one sent again to a conversation's new owner after its
-- first owner went away, having written it or not. An update whose id is here
-- is not written again. Ids older than a day are forgotten with the bin
-- cleaning.

CREATE TABLE inbox_updates (
    update_id       VARCHAR(64) NOT NULL,
    stamp_micros    BIGINT      NOT NULL,
    PRIMARY KEY (update_id),
    KEY inbox_updates_stamp (stamp_micros)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
