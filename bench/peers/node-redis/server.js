// The do-it-yourself stack most tutorials build, as a benchmark peer of Tidings: a Node.js
// WebSocket server (`ws`) that fans out Redis pub/sub (`ioredis`).
//
// Written the straightforward way such tutorials do: one Redis connection in subscriber mode,
// one Redis SUBSCRIBE per channel (made when its first socket subscribes, dropped when its last
// leaves), and for each Redis message a loop over that channel's sockets. No history, no resume,
// no per-socket queue limit: what `ws` buffers, it buffers.
//
// Protocol (text frames, JSON from the client):
//   client -> {"subscribe": "CHANNEL"}      server -> {"subscribed": "CHANNEL"} once Redis has
//                                            confirmed the subscription
//   client -> {"unsubscribe": "CHANNEL"}    server -> {"unsubscribed": "CHANNEL"}
//   server -> the text of each message PUBLISHed to a subscribed channel, as it is
//   server -> {"error": "..."} for a frame it cannot use
// Publishers PUBLISH to Redis directly.
//
// Environment: PORT (default 8080), HOST (default 127.0.0.1), REDIS_URL (default
// redis://127.0.0.1:6379).

"use strict";

const Redis = require("ioredis");
const { WebSocketServer, WebSocket } = require("ws");

const port = Number(process.env.PORT || 8080);
const host = process.env.HOST || "127.0.0.1";
const subscriber = new Redis(process.env.REDIS_URL || "redis://127.0.0.1:6379");

// channel -> { sockets: Set<WebSocket>, ready: Promise } (ready once Redis confirmed SUBSCRIBE)
const channels = new Map();

subscriber.on("message", (channel, message) => {
  const entry = channels.get(channel);
  if (!entry) return;
  for (const ws of entry.sockets) {
    if (ws.readyState === WebSocket.OPEN) ws.send(message);
  }
});
subscriber.on("error", (err) => console.error("redis:", err.message));

function join(channel, ws) {
  let entry = channels.get(channel);
  if (!entry) {
    entry = { sockets: new Set(), ready: subscriber.subscribe(channel) };
    channels.set(channel, entry);
    // A refused SUBSCRIBE is not cached: the next subscriber to the channel tries again.
    const failed = entry;
    entry.ready.catch(() => {
      if (channels.get(channel) === failed) channels.delete(channel);
    });
  }
  entry.sockets.add(ws);
  return entry.ready;
}

function leave(channel, ws) {
  const entry = channels.get(channel);
  if (!entry) return;
  entry.sockets.delete(ws);
  if (entry.sockets.size === 0) {
    channels.delete(channel);
    subscriber.unsubscribe(channel).catch(() => {});
  }
}

const wss = new WebSocketServer({ host, port });

wss.on("connection", (ws) => {
  const mine = new Set();
  ws.on("message", async (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      ws.send(JSON.stringify({ error: "frames must be JSON" }));
      return;
    }
    if (typeof msg.subscribe === "string") {
      const channel = msg.subscribe;
      mine.add(channel);
      try {
        await join(channel, ws);
        ws.send(JSON.stringify({ subscribed: channel }));
      } catch (err) {
        ws.send(JSON.stringify({ error: `subscribe ${channel}: ${err.message}` }));
      }
    } else if (typeof msg.unsubscribe === "string") {
      mine.delete(msg.unsubscribe);
      leave(msg.unsubscribe, ws);
      ws.send(JSON.stringify({ unsubscribed: msg.unsubscribe }));
    } else {
      ws.send(JSON.stringify({ error: "expected subscribe or unsubscribe" }));
    }
  });
  ws.on("close", () => {
    for (const channel of mine) leave(channel, ws);
  });
  ws.on("error", () => {});
});

wss.on("listening", () => console.log(`node-redis peer listening on ws://${host}:${port}`));

function shutdown() {
  wss.close();
  for (const ws of wss.clients) ws.terminate();
  subscriber.disconnect();
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
