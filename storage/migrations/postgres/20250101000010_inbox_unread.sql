-- The totals of an inbox (unread messages, conversations with something
-- unread) read only the conversations with something unread.

CREATE INDEX inbox_entries_unread ON inbox_entries (domain, username, unread_count, box_name) WHERE unread_count > 0;
