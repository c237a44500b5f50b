-- Tidings, version 2: the channels each connector has published to. When a replication slot
-- loses changes Tidings had not read (dropped, invalidated, recreated) and the connector is set
-- to recover (`on_slot_lost = "recreate"`), these channels get a new epoch so clients resync
-- instead of resuming across the hole. The connector adds a channel before its first message
-- on it reaches the log. Idempotent: safe to run again.

CREATE SCHEMA IF NOT EXISTS tidings;

CREATE TABLE IF NOT EXISTS tidings.connector_channels (
    -- The connector's configured name (`[connectors.NAME]`).
    connector   text        NOT NULL,
    channel     text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector, channel)
);

COMMENT ON TABLE tidings.connector_channels IS
    'Channels each Tidings connector published to: they get a new epoch if the replication slot loses changes. Safe to delete rows of a retired connector.';
