-- Offline messages are delivered at least once: a delivery claims the rows it
-- reads (`claimed_by`, a name unique to that delivery, until `claimed_until`,
-- microseconds since the epoch) and deletes them once the session took them.
-- Unclaimed rows have both NULL; a claim past its time is free again.

ALTER TABLE offline_messages ADD COLUMN claimed_by TEXT;
ALTER TABLE offline_messages ADD COLUMN claimed_until INTEGER;
