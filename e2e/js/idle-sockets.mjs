// Opens many idle Socket.IO connections for the idle-socket benchmark (meridian-live-bench
// sockets). Each connection is a separate stock socket.io-client socket over the WebSocket
// transport, with one `user_locations` subscription of a random user id, so no update ever
// reaches it. The process is driven through standard input and reports on standard output,
// one JSON object per line.
//
// Usage: MERIDIAN_ACCESS_TOKEN=<token> node idle-sockets.mjs '<config>'
//   config: { "url": "http://127.0.0.1:8091", "parallel": 100, "timeout_ms": 20000 }
//     parallel    connections being opened at once (default 100)
//     timeout_ms  limit for one connection and its subscription acknowledgement
//                 (default 20000)
//   The access token, of an admin or analyst, goes in every handshake as `auth: { token }`.
//   It comes from the environment rather than the command line, which other users can read.
//
// Input lines:
//   { "cmd": "open", "count": n }  open n more connections
//   { "cmd": "close" }              disconnect every connection
//   { "cmd": "exit" }
// Output lines:
//   { "type": "opened", "open": n, "failed": f, "elapsed_ms": t, "first_error": ... }
//   { "type": "closed", "open": 0 }
//   { "type": "dropped", "open": n, "reason": ... }  an open connection closed on its own
//
// Sockets never reconnect, so a connection that fails or drops is counted, not retried.

import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2] ?? "{}");
if (!config.url) {
  console.error('usage: node idle-sockets.mjs \'{"url": ..., "parallel": 100, "timeout_ms": 20000}\'');
  process.exit(2);
}
const parallel = config.parallel ?? 100;
const timeoutMs = config.timeout_ms ?? 20000;

function report(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

const sockets = new Set();
let closing = false;

// Connects one socket and subscribes it. Resolves to null on success, else to the error text.
function openOne() {
  return new Promise((resolve) => {
    const socket = io(config.url, {
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      timeout: timeoutMs,
      auth: { token: process.env.MERIDIAN_ACCESS_TOKEN ?? "" },
    });
    let settled = false;
    const finish = (error) => {
      if (settled) return;
      settled = true;
      if (error === null) {
        sockets.add(socket);
      } else {
        socket.disconnect();
      }
      resolve(error);
    };
    socket.once("connect", () => {
      const request = { topic: "user_locations", user_id: randomUUID() };
      socket.timeout(timeoutMs).emit("subscribe", request, (timeout, reply) => {
        if (timeout) finish(`no subscribe acknowledgement within ${timeoutMs} ms`);
        else if (!reply?.ok) finish(`subscribe rejected: ${JSON.stringify(reply)}`);
        else finish(null);
      });
    });
    socket.once("connect_error", (error) => finish(`connect failed: ${error.message}`));
    socket.on("disconnect", (reason) => {
      if (!settled) {
        finish(`disconnected before subscribing: ${reason}`);
      } else if (sockets.delete(socket) && !closing) {
        report({ type: "dropped", open: sockets.size, reason });
      }
    });
  });
}

async function open(count) {
  const started = Date.now();
  let next = 0;
  let failed = 0;
  let firstError = null;
  async function worker() {
    while (next < count) {
      next += 1;
      const error = await openOne();
      if (error !== null) {
        failed += 1;
        firstError ??= error;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  report({
    type: "opened",
    open: sockets.size,
    failed,
    elapsed_ms: Date.now() - started,
    first_error: firstError,
  });
}

function closeAll() {
  closing = true;
  for (const socket of sockets) socket.disconnect();
  sockets.clear();
  closing = false;
  report({ type: "closed", open: 0 });
}

// Commands run one after another, so a close never overlaps an open.
let queue = Promise.resolve();
const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  let command;
  try {
    command = JSON.parse(line);
  } catch {
    report({ type: "error", message: `not JSON: ${line}` });
    return;
  }
  if (command.cmd === "open" && Number.isInteger(command.count) && command.count > 0) {
    queue = queue.then(() => open(command.count));
  } else if (command.cmd === "close") {
    queue = queue.then(closeAll);
  } else if (command.cmd === "exit") {
    queue = queue.then(() => {
      closeAll();
      process.exit(0);
    });
  } else {
    report({ type: "error", message: `unknown command: ${line}` });
  }
});
commands.on("close", () => {
  closeAll();
  process.exit(0);
});
