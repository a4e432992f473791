// A Socket.IO subscriber that end-to-end tests drive: the stock socket.io-client with its
// default options, controlled through standard input and reporting on standard output, one
// JSON object per line.
//
// Usage: MERIDIAN_ACCESS_TOKEN=<token> node subscriber.mjs '<config>'
//   config: { "url": "http://127.0.0.1:8091", "subscriptions": [ { "topic": ... }, ... ] }
//   The access token goes in the Socket.IO handshake as `auth: { token }`. It comes from the
//   environment rather than the command line, which other users can read.
//
// Output lines:
//   { "type": "connected", "url": ... }
//   { "type": "subscribed", "index": i, "reply": <the server's acknowledgement> }
//   { "type": "update", "index": i, "update": <the update> }
//   { "type": "reset", "index": i, "message": <the reset event> }
//   { "type": "disconnected", "reason": ... }
//   { "type": "connect_error", "url": ..., "message": ... }
//   { "type": "error", "message": ... }
// Input lines:
//   { "cmd": "switch", "url": "http://127.0.0.1:8092" }  drop the connection and resume on url
//   { "cmd": "token", "token": "..." }  use this access token from the next handshake on
//   { "cmd": "exit" }
//
// On every connection, including the automatic reconnections of socket.io-client, each
// subscription is made again with `after` set to the last position it received, as a real
// client resumes.

import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2] ?? "{}");
if (!config.url || !Array.isArray(config.subscriptions)) {
  console.error('usage: node subscriber.mjs \'{"url": ..., "subscriptions": [...]}\'');
  process.exit(2);
}

function report(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

// Per subscription: the last position seen (from the acknowledgement, then each update).
const last = config.subscriptions.map((request) => request.after ?? null);
// Server subscription id to subscription index, for the current connection only.
let indexOf = new Map();
let socket = null;
// The access token of the next handshake. socket.io-client calls the `auth` function on
// every connection attempt, so reconnections use the latest token.
let token = process.env.MERIDIAN_ACCESS_TOKEN ?? "";

function connect(url) {
  indexOf = new Map();
  const current = io(url, { auth: (send) => send({ token }) });
  socket = current;
  current.on("connect", () => {
    if (current !== socket) return;
    indexOf = new Map();
    report({ type: "connected", url });
    config.subscriptions.forEach((request, index) => {
      const payload = { ...request };
      if (last[index] !== null) payload.after = last[index];
      current.emit("subscribe", payload, (reply) => {
        if (current !== socket) return;
        if (reply?.ok) {
          indexOf.set(reply.subscription, index);
          if (last[index] === null) last[index] = reply.position;
        }
        report({ type: "subscribed", index, reply });
      });
    });
  });
  current.on("update", (update) => {
    if (current !== socket) return;
    const index = indexOf.get(update.subscription);
    if (index === undefined) {
      report({ type: "error", message: `update of unknown subscription ${update.subscription}` });
      return;
    }
    last[index] = update.position;
    report({ type: "update", index, update });
  });
  current.on("reset", (message) => {
    report({ type: "reset", index: indexOf.get(message.subscription), message });
  });
  current.on("disconnect", (reason) => report({ type: "disconnected", url, reason }));
  current.on("connect_error", (error) => report({ type: "connect_error", url, message: error.message }));
}

const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    report({ type: "error", message: `not JSON: ${line}` });
    return;
  }
  if (command.cmd === "switch") {
    const previous = socket;
    socket = null;
    previous?.disconnect();
    connect(command.url);
  } else if (command.cmd === "token" && typeof command.token === "string") {
    token = command.token;
  } else if (command.cmd === "exit") {
    socket?.disconnect();
    process.exit(0);
  } else {
    report({ type: "error", message: `unknown command ${line}` });
  }
});
commands.on("close", () => {
  socket?.disconnect();
  process.exit(0);
});

connect(config.url);
