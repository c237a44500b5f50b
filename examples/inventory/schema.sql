-- The inventory demo's own data: a products table, and the one way the demo changes it.
-- Idempotent. Tidings' outbox (schema `tidings`) comes from `tidings migrate`.

CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE IF NOT EXISTS inventory.products (
    id          integer       PRIMARY KEY,
    name        text          NOT NULL,
    price       numeric(10,2) NOT NULL,
    stock       integer       NOT NULL CHECK (stock >= 0),
    updated_at  timestamptz   NOT NULL DEFAULT now()
);

INSERT INTO inventory.products (id, name, price, stock) VALUES
    (1,  'Espresso beans, 1 kg',      24.90, 40),
    (2,  'Oat milk, 1 l',              2.49, 120),
    (3,  'Ceramic cup',                9.00, 35),
    (4,  'Pour-over kettle',          54.00, 8),
    (5,  'Paper filters (100)',        4.50, 200),
    (6,  'Hand grinder',              79.00, 6),
    (7,  'Cold brew bottle',          19.50, 22),
    (8,  'Milk jug, 600 ml',          16.00, 18),
    (9,  'Descaler',                   7.90, 60),
    (10, 'Travel mug',                21.00, 30),
    (11, 'Digital scale',             32.00, 12),
    (12, 'Tamper',                    28.00, 9)
ON CONFLICT (id) DO NOTHING;

-- Change a product's stock by `delta` (never below zero) AND write the message that describes
-- the change to the outbox, in the same transaction: either both happen or neither does. The
-- message is a normalized change (`op`, `key`, `document`) that the JS SDK's Mirror applies.
-- Applications do the same with an UPDATE and an INSERT INTO tidings.outbox between BEGIN and
-- COMMIT; a function keeps the demo's writer and tests to one statement.
CREATE OR REPLACE FUNCTION inventory.adjust_stock(product integer, delta integer)
RETURNS SETOF inventory.products
LANGUAGE sql AS $$
    WITH changed AS (
        UPDATE inventory.products
           SET stock = greatest(0, stock + delta), updated_at = now()
         WHERE id = product
     RETURNING *
    ), message AS (
        INSERT INTO tidings.outbox (channel, name, data)
        SELECT 'inventory:products', 'product.updated',
               jsonb_build_object('op', 'update',
                                  'key', jsonb_build_object('id', c.id),
                                  'document', to_jsonb(c))
          FROM changed c
    )
    SELECT * FROM changed;
$$;
