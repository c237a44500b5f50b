// The inventory page: a Mirror of the channel `inventory:products`, kept in step with Postgres by
// Tidings. First load and every continuity loss reload the snapshot from the app's API; every
// change after that arrives as a message, once, in order.
import { Mirror, TidingsClient } from './tidings.js';

const $ = (id) => document.getElementById(id);
const config = await (await fetch('config.json', { cache: 'no-store' })).json();

// What the page has seen, for people (the table and the list) and for the browser test.
const demo = (window.inventory = {
  changes: [], // {epoch, serial, id, stock}, in the order they were applied
  syncs: [], // {reason, epoch, serial}
  state: 'initialized',
  transport: null,
  position: null,
  products: () => [...mirror.documents.values()].sort((a, b) => a.id - b.id),
});

// The channel's namespace is public: no credentials needed to read it.
const client = new TidingsClient({ url: location.origin });
client.on('state', ({ state, transport, retryIn }) => {
  demo.state = state;
  demo.transport = transport ?? demo.transport;
  const badge = $('state');
  badge.dataset.state = state;
  badge.textContent = retryIn && state !== 'connected' ? `${state} (retry in ${(retryIn / 1000).toFixed(1)} s)` : state;
  $('transport').textContent = demo.transport ?? '–';
});

const mirror = new Mirror(client, config.channel, {
  // The snapshot, read after Tidings said where the channel stands: changes apply by key, so
  // replaying ones the snapshot already holds converges to the same state.
  sync: async ({ reason, epoch, serial }) => {
    const res = await fetch(`${config.api}/products`, { cache: 'no-store' });
    if (!res.ok) throw new Error(`the products API answered ${res.status}`);
    const { products } = await res.json();
    demo.syncs.push({ reason, epoch, serial });
    return { documents: products, position: { epoch, serial } };
  },
  keyOf: (p) => ({ id: p.id }),
});

const rows = new Map(); // id -> {tr, stock}

function render(p, flash) {
  let row = rows.get(p.id);
  if (!row) {
    const tr = document.createElement('tr');
    tr.dataset.id = p.id;
    tr.innerHTML = '<td class="num"></td><td></td><td class="num"></td><td class="num stock"></td><td class="bar"><span></span></td>';
    row = { tr, stock: p.stock };
    rows.set(p.id, row);
    const body = $('products').tBodies[0];
    const after = [...body.rows].find((r) => Number(r.dataset.id) > p.id);
    body.insertBefore(tr, after ?? null);
  }
  const cells = row.tr.cells;
  cells[0].textContent = p.id;
  cells[1].textContent = p.name;
  cells[2].textContent = Number(p.price).toFixed(2);
  cells[3].textContent = p.stock;
  cells[4].firstChild.style.width = `${Math.min(100, p.stock / 2)}%`;
  row.tr.classList.toggle('low', p.stock < 5);
  row.stock = p.stock;
  if (flash) {
    row.tr.classList.remove('flash');
    void row.tr.offsetWidth; // restart the animation
    row.tr.classList.add('flash');
  }
}

function renderAll() {
  const ids = new Set();
  for (const p of demo.products()) {
    ids.add(p.id);
    render(p, false);
  }
  for (const [id, row] of rows) if (!ids.has(id)) (row.tr.remove(), rows.delete(id));
}

function showPosition() {
  demo.position = mirror.position;
  $('serial').textContent = mirror.position ? mirror.position.serial : '–';
  $('count').textContent = demo.changes.length;
}

mirror.on('synced', ({ reason, position }) => {
  renderAll();
  showPosition();
  const note = $('message');
  note.hidden = reason === 'initial';
  if (reason !== 'initial') note.textContent = `Reloaded the products (${reason.replace('_', ' ')}): messages were missed, so the page started again from a fresh snapshot at serial ${position.serial}.`;
});

mirror.on('change', ({ key, document: p, serial }) => {
  const before = rows.get(key.id)?.stock;
  demo.changes.push({ epoch: mirror.position.epoch, serial, id: key.id, stock: p?.stock });
  if (p) render(p, true);
  else rows.get(key.id)?.tr.remove();
  showPosition();
  const li = document.createElement('li');
  li.value = serial;
  const delta = p && before !== undefined ? p.stock - before : 0;
  li.innerHTML = `<span></span> → <b></b> <span class="${delta >= 0 ? 'up' : 'down'}"></span>`;
  li.children[0].textContent = p ? p.name : `#${key.id} removed`;
  li.children[1].textContent = p ? p.stock : '';
  li.children[2].textContent = delta ? `(${delta > 0 ? '+' : ''}${delta})` : '';
  const list = $('changes');
  list.prepend(li);
  while (list.children.length > 50) list.lastChild.remove();
});

mirror.on('error', (e) => {
  const note = $('message');
  note.hidden = false;
  note.textContent = `Could not load the products (${e.message}); retrying.`;
});

// The writer's pause button.
const button = $('writer');
function showWriter(w) {
  button.disabled = false;
  button.dataset.running = w.running;
  button.textContent = w.running ? `Pause (every ${w.interval_ms} ms)` : 'Resume';
}
button.addEventListener('click', async () => {
  const res = await fetch(`${config.api}/writer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ running: button.dataset.running !== 'true' }),
  });
  if (res.ok) showWriter(await res.json());
});
fetch(`${config.api}/writer`).then(async (r) => r.ok && showWriter(await r.json()), () => {});

await mirror.ready;
document.body.dataset.ready = 'true';
