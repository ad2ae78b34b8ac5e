-- The totals of an inbox (unread messages, conversations with something
-- unread) read a range of this index: MySQL and MariaDB have no partial
-- indexes, so it holds every conversation.

CREATE INDEX inbox_entries_unread ON inbox_entries (domain, username, unread_count, box_name);
