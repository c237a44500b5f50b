-- Tidings outbox, version 1: the table applications insert messages into, in the same
-- transaction as the data they describe, and the publication the connector streams it from.
-- Idempotent: safe to run again on a database that already has it.

CREATE SCHEMA IF NOT EXISTS tidings;

CREATE TABLE IF NOT EXISTS tidings.outbox (
    id          bigserial   PRIMARY KEY,
    -- Channel to publish on, e.g. 'orders:42'. NULL or invalid names go to the dead letter.
    channel     text        NOT NULL,
    -- Event name, e.g. 'order.paid'.
    name        text,
    -- Payload.
    data        jsonb,
    -- Free-form headers (a JSON object).
    headers     jsonb,
    -- Idempotency id: a second row with the same message_id on the same channel (within the
    -- server's dedup window) is not published again; clients can match it to confirm an
    -- optimistic update.
    message_id  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tidings.outbox IS
    'Tidings transactional outbox: insert a row in the same transaction as your change; Tidings publishes it from the WAL and deletes it once durable.';

-- The connector streams inserts only: its own clean-up deletes (and any updates) stay out of
-- the replication stream.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'tidings_outbox') THEN
        CREATE PUBLICATION tidings_outbox FOR TABLE tidings.outbox WITH (publish = 'insert');
    END IF;
END
$$;
