// The receiving side of the live-update latency benchmark (meridian-live-bench latency): one
// stock socket.io-client socket with one subscription, which prints each update's identity
// and the wall-clock time it arrived, one JSON object per line on standard output.
//
// Usage: MERIDIAN_ACCESS_TOKEN=<token> node bench-receiver.mjs '<config>'
//   config: { "url": "http://127.0.0.1:8091", "subscription": { "topic": "area", ... } }
//   The access token goes in the Socket.IO handshake as `auth: { token }`. It comes from the
//   environment rather than the command line, which other users can read.
//
// Output lines:
//   { "type": "subscribed", "reply": <the server's acknowledgement> }
//   { "type": "update", "position": n, "user_id": "...", "sequence": n, "received_ms": t }
//   { "type": "disconnected", "reason": ... }
//   { "type": "connect_error", "message": ... }
// The process exits when standard input closes or receives the line "exit".
//
// received_ms is milliseconds since the Unix epoch with a fractional part, taken as
// performance.timeOrigin + performance.now() when the client hands the update to this
// handler. The benchmark compares it with the Rust side's SystemTime on the same machine.
// The socket does not reconnect: a dropped connection ends the measurement, and the
// benchmark reports it.

import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2] ?? "{}");
if (!config.url || typeof config.subscription !== "object") {
  console.error('usage: node bench-receiver.mjs \'{"url": ..., "subscription": {...}}\'');
  process.exit(2);
}

function report(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

const socket = io(config.url, {
  reconnection: false,
  auth: { token: process.env.MERIDIAN_ACCESS_TOKEN ?? "" },
});

socket.on("connect", () => {
  socket.emit("subscribe", config.subscription, (reply) => report({ type: "subscribed", reply }));
});
socket.on("update", (update) => {
  const received = performance.timeOrigin + performance.now();
  report({
    type: "update",
    position: update.position,
    user_id: update.user_id,
    sequence: update.sequence,
    received_ms: received,
  });
});
socket.on("disconnect", (reason) => report({ type: "disconnected", reason }));
socket.on("connect_error", (error) => report({ type: "connect_error", message: error.message }));

function stop() {
  socket.disconnect();
  process.exit(0);
}

const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (line.trim() === "exit") stop();
});
commands.on("close", stop);
