// The inventory demo's backend. It plays the part of a real application server:
//
// - it changes stock every INTERVAL_MS through `inventory.adjust_stock`, which updates the row
//   and writes the outbox message in one transaction (Tidings streams the message from the WAL);
// - it answers `GET /api/products`, the snapshot the page loads first and reloads whenever
//   Tidings says continuity was lost;
// - `GET /api/writer` and `POST /api/writer {"running": bool, "interval_ms": n}` show and change
//   the writer, so the page (and the browser test) can pause and resume it.
//
// Environment: DATABASE_URL (required), PORT (default 0: any free port), INTERVAL_MS (700).
import http from 'node:http';
import pg from 'pg';

const url = process.env.DATABASE_URL;
if (!url) {
  console.error('writer: DATABASE_URL is not set; run the demo with examples/inventory/run');
  process.exit(2);
}
const interval = Number(process.env.INTERVAL_MS ?? 700);
if (!Number.isInteger(interval) || interval < 10) {
  console.error(`writer: INTERVAL_MS must be an integer of at least 10, not ${process.env.INTERVAL_MS}`);
  process.exit(2);
}

const pool = new pg.Pool({ connectionString: url, max: 4 });
pool.on('error', (e) => console.error(`writer: database connection lost: ${e.message}`));

const writer = { running: true, interval_ms: interval, changes: 0, last_error: null };
let timer;

async function step() {
  try {
    const { rows } = await pool.query('SELECT id FROM inventory.products ORDER BY random() LIMIT 1');
    if (rows.length) {
      // Sales are more frequent than deliveries, and deliveries bigger.
      const delta = Math.random() < 0.75 ? -1 - Math.floor(Math.random() * 3) : 5 + Math.floor(Math.random() * 20);
      await pool.query('SELECT * FROM inventory.adjust_stock($1, $2)', [rows[0].id, delta]);
      writer.changes++;
      writer.last_error = null;
    }
  } catch (e) {
    if (writer.last_error !== e.message) console.error(`writer: could not change stock: ${e.message}`);
    writer.last_error = e.message;
  }
  schedule();
}

function schedule() {
  clearTimeout(timer);
  if (writer.running) timer = setTimeout(step, writer.interval_ms);
}

function send(res, status, body) {
  res.writeHead(status, {
    'content-type': 'application/json',
    // The page is served by Tidings, on another origin.
    'access-control-allow-origin': '*',
    'access-control-allow-methods': 'GET, POST',
    'access-control-allow-headers': 'content-type',
    'cache-control': 'no-store',
  });
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 10_000) throw new Error('body too large');
  }
  return text ? JSON.parse(text) : {};
}

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  try {
    if (req.method === 'OPTIONS') return send(res, 204, null);
    if (path === '/api/products' && req.method === 'GET') {
      const { rows } = await pool.query('SELECT * FROM inventory.products ORDER BY id');
      return send(res, 200, { products: rows.map((r) => ({ ...r, price: Number(r.price) })) });
    }
    if (path === '/api/writer' && req.method === 'GET') return send(res, 200, writer);
    if (path === '/api/writer' && req.method === 'POST') {
      const body = await readJson(req);
      if (body.running !== undefined && typeof body.running !== 'boolean')
        return send(res, 400, { error: '`running` must be true or false' });
      if (body.interval_ms !== undefined && !(Number.isInteger(body.interval_ms) && body.interval_ms >= 10))
        return send(res, 400, { error: '`interval_ms` must be an integer of at least 10' });
      if (body.running !== undefined) writer.running = body.running;
      if (body.interval_ms !== undefined) writer.interval_ms = body.interval_ms;
      schedule();
      return send(res, 200, writer);
    }
    send(res, 404, { error: `no route ${req.method} ${path}; try GET /api/products or /api/writer` });
  } catch (e) {
    send(res, e instanceof SyntaxError ? 400 : 500, { error: e.message });
  }
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  // The run script reads this line for the API's address.
  console.log(`writer: listening on http://127.0.0.1:${server.address().port}/api, changing stock every ${writer.interval_ms} ms`);
  schedule();
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    clearTimeout(timer);
    server.close();
    pool.end().finally(() => process.exit(0));
  });
}
