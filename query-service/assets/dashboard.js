// Live map of Meridian. Logs in at the command service and loads the latest location of
// every user from the query service. Then it subscribes to location updates of the whole
// world over Socket.IO after the snapshot's position, and draws each user's latest position
// with a short trail. The tokens live in this script's memory only, so reloading the page
// logs out.
(() => {
  "use strict";

  const WORLD_BBOX = [-180, -90, 180, 90];
  // Positions kept per user for the trail, the latest included.
  const TRAIL_LENGTH = 8;
  // Share of the data's extent added on each side of the map.
  const MARGIN_FRACTION = 0.08;
  // Smallest extent shown, in degrees, so that a single user is not drawn at infinite zoom.
  const MIN_SPAN_DEGREES = 0.01;
  // A dot updated within this time is drawn larger.
  const HIGHLIGHT_MS = 1500;
  // Rows of the user list; the rest are counted but not listed.
  const MAX_LISTED_USERS = 200;
  // Concurrent GET /v1/users/{id} requests for the names of users first seen in an update.
  const NAME_REQUESTS = 4;
  const SNAPSHOT_RETRY_MS = [1000, 2000, 5000, 10000, 30000];
  // The access token is refreshed this long before it expires.
  const REFRESH_BEFORE_EXPIRY_MS = 60 * 1000;
  // Earliest refresh after a login or refresh, for tokens that live less than a minute.
  const MIN_REFRESH_DELAY_MS = 5 * 1000;
  // Wait before retrying a refresh that could not reach the command service.
  const REFRESH_RETRY_MS = 10 * 1000;
  // Wait before reconnecting after the server rejected a connection for a passing reason
  // (rate limit, internal error) when its message gives no number of seconds.
  const RETRY_MS = 5 * 1000;

  const elements = {
    canvas: document.getElementById("map"),
    connection: document.getElementById("connection-state"),
    connectionText: document.getElementById("connection-text"),
    userCount: document.getElementById("user-count"),
    updateCount: document.getElementById("update-count"),
    lastPosition: document.getElementById("last-position"),
    userList: document.getElementById("user-list"),
    userListNote: document.getElementById("user-list-note"),
    login: document.getElementById("login"),
    loginForm: document.getElementById("login-form"),
    loginEmail: document.getElementById("login-email"),
    loginPassword: document.getElementById("login-password"),
    loginSubmit: document.getElementById("login-submit"),
    loginError: document.getElementById("login-error"),
    liveView: document.getElementById("live-view"),
    account: document.getElementById("account"),
    accountText: document.getElementById("account-text"),
    logoutButton: document.getElementById("logout-button"),
  };

  const state = {
    // user_id -> { name, latitude, longitude, recordedAt, sequence, trail, updatedAt }
    users: new Map(),
    updates: 0,
    // Position to pass as `after` when subscribing: the snapshot's, then that of the last
    // update received (not the highest, because updates of different users may arrive out
    // of position order).
    resumeAfter: 0,
    subscription: null,
    loadingSnapshot: false,
    nameQueue: [],
    namesRequested: new Set(),
    namesInFlight: 0,
    renderQueued: false,
  };

  // The logged-in account: { accessToken, refreshToken, expiresAt (ms since the epoch),
  // userId, role }, or null. Never written to storage, cookies or the console.
  let session = null;
  let refreshTimer = null;
  // The refresh in progress, shared by every caller that needs a fresh token meanwhile.
  let refreshing = null;

  const commandUrl = document
    .querySelector('meta[name="meridian-command-url"]')
    .getAttribute("content");
  const socketPort = document
    .querySelector('meta[name="meridian-socket-port"]')
    .getAttribute("content");
  // The `auth` callback runs on every connection attempt, so reconnections send the
  // current access token rather than the one of the first connection.
  const socket = io(`http://${location.hostname}:${socketPort}`, {
    autoConnect: false,
    auth: (send) => send({ token: session ? session.accessToken : "" }),
  });

  // ---- connection state -------------------------------------------------------------

  function showConnection(name, text) {
    elements.connection.dataset.state = name;
    elements.connectionText.textContent = text;
  }

  // ---- session --------------------------------------------------------------------

  // Error of a request to the command service, with the HTTP status (0 when it could not
  // be reached) and the message to show.
  class CommandError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Sends `body` as JSON to `path` of the command service and returns the parsed response.
  async function postToCommand(path, body) {
    let response;
    try {
      response = await fetch(`${commandUrl}${path}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
    } catch (error) {
      throw new CommandError(0, `The command service at ${commandUrl} cannot be reached.`);
    }
    if (response.status === 204) {
      return null;
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      // A page cannot read Retry-After from another origin unless the server exposes it,
      // so the message, which names the seconds of a 429, is shown instead.
      const message = answer && answer.message ? answer.message : `${path} returned ${response.status}`;
      throw new CommandError(response.status, asSentence(message));
    }
    return answer;
  }

  // Returns `text` with a capital first letter and a final full stop, for display.
  function asSentence(text) {
    const capitalized = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(capitalized) ? capitalized : `${capitalized}.`;
  }

  function startSession(answer) {
    session = {
      accessToken: answer.access_token,
      refreshToken: answer.refresh_token,
      expiresAt: Date.now() + answer.expires_in * 1000,
      userId: answer.user_id,
      role: answer.role,
    };
    scheduleRefresh();
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    const delay = Math.max(session.expiresAt - Date.now() - REFRESH_BEFORE_EXPIRY_MS, MIN_REFRESH_DELAY_MS);
    refreshTimer = setTimeout(() => {
      refreshSession().catch(() => {});
    }, delay);
  }

  // Exchanges the refresh token for new tokens. Each refresh token works once, so
  // concurrent callers share one request. Ends the session when the command service
  // rejects the refresh token, and retries later when it cannot be reached.
  function refreshSession() {
    if (!session) {
      return Promise.reject(new Error("logged out"));
    }
    if (!refreshing) {
      refreshing = (async () => {
        const current = session;
        try {
          const answer = await postToCommand("/v1/auth/refresh", { refresh_token: current.refreshToken });
          if (session === current) {
            startSession(answer);
          }
        } catch (error) {
          if (error.status === 0 && Date.now() < current.expiresAt) {
            clearTimeout(refreshTimer);
            refreshTimer = setTimeout(() => {
              refreshSession().catch(() => {});
            }, REFRESH_RETRY_MS);
          } else if (session === current) {
            endSession("Your session has ended; log in again.");
          }
          throw error;
        } finally {
          refreshing = null;
        }
      })();
    }
    return refreshing;
  }

  async function logIn(email, password) {
    const answer = await postToCommand("/v1/auth/login", { email, password });
    if (answer.role !== "admin" && answer.role !== "analyst") {
      // Give the refresh token back, since this page cannot use it.
      postToCommand("/v1/auth/logout", { refresh_token: answer.refresh_token }).catch(() => {});
      throw new CommandError(403, "This account has the role user; the live map needs an admin or analyst account.");
    }
    startSession(answer);
  }

  // Forgets the tokens, stops the live view and shows the login form with `message`.
  function endSession(message) {
    const ended = session;
    session = null;
    clearTimeout(refreshTimer);
    socket.disconnect();
    if (ended) {
      postToCommand("/v1/auth/logout", { refresh_token: ended.refreshToken }).catch(() => {});
    }
    state.users = new Map();
    state.updates = 0;
    state.resumeAfter = 0;
    state.subscription = null;
    state.nameQueue = [];
    state.namesRequested = new Set();
    elements.account.hidden = true;
    elements.liveView.hidden = true;
    elements.login.hidden = false;
    showLoginError(message);
    showConnection("logged-out", "Logged out");
  }

  function showLoginError(message) {
    elements.loginError.textContent = message || "";
    elements.loginError.hidden = !message;
  }

  // Fetches `path` of this service with the access token. A 401 `token_expired` refreshes
  // the token and tries once more.
  async function fetchWithToken(path) {
    for (let attempt = 0; ; attempt += 1) {
      if (!session) {
        throw new Error("logged out");
      }
      const response = await fetch(path, {
        headers: { Accept: "application/json", Authorization: `Bearer ${session.accessToken}` },
      });
      if (response.status !== 401 || attempt > 0) {
        return response;
      }
      const body = await response.json().catch(() => ({}));
      if (body.error !== "token_expired") {
        endSession("Your session is no longer valid; log in again.");
        throw new Error(`GET ${path} returned 401 ${body.error}`);
      }
      await refreshSession();
    }
  }

  // ---- snapshot -------------------------------------------------------------------

  async function fetchSnapshot() {
    const response = await fetchWithToken("/v1/locations/latest");
    if (!response.ok) {
      throw new Error(`GET /v1/locations/latest returned ${response.status}`);
    }
    return response.json();
  }

  // Replaces every user with the snapshot, retrying with growing delays while it fails.
  // Returns false when the session ended meanwhile.
  async function loadSnapshot() {
    state.loadingSnapshot = true;
    for (let attempt = 0; ; attempt += 1) {
      if (!session) {
        state.loadingSnapshot = false;
        return false;
      }
      try {
        const snapshot = await fetchSnapshot();
        applySnapshot(snapshot);
        state.loadingSnapshot = false;
        return true;
      } catch (error) {
        if (!session) {
          continue;
        }
        const delay = SNAPSHOT_RETRY_MS[Math.min(attempt, SNAPSHOT_RETRY_MS.length - 1)];
        console.warn("loading the snapshot failed", error.message);
        showConnection("error", `Snapshot failed, retrying in ${delay / 1000} s`);
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  function applySnapshot(snapshot) {
    const previous = state.users;
    state.users = new Map();
    for (const item of snapshot.locations) {
      const user = previous.get(item.user_id) || { trail: [], updatedAt: 0 };
      user.name = item.name;
      user.latitude = item.latitude;
      user.longitude = item.longitude;
      user.recordedAt = item.recorded_at;
      user.sequence = Math.max(user.sequence || 0, item.sequence);
      addTrailPoint(user, item.longitude, item.latitude);
      state.users.set(item.user_id, user);
    }
    state.resumeAfter = snapshot.position;
    showPosition(snapshot.position);
    scheduleRender();
  }

  // ---- subscription ---------------------------------------------------------------

  function subscribe() {
    const request = { topic: "area", bbox: WORLD_BBOX, after: state.resumeAfter };
    socket.emit("subscribe", request, (reply) => {
      if (!reply || !reply.ok) {
        const message = reply && reply.error ? reply.error.message : "no reply";
        console.error("subscribe was rejected", reply);
        showConnection("error", `Subscription rejected: ${message}`);
        return;
      }
      state.subscription = reply.subscription;
      showConnection("live", "Live");
    });
  }

  // The page holds at most one subscription at a time, so every update belongs to it, even
  // one that arrives before the reply to `subscribe`.
  function applyUpdate(update) {
    state.updates += 1;
    state.resumeAfter = update.position;
    showPosition(update.position);
    if (update.kind !== "location") {
      scheduleRender();
      return;
    }

    let user = state.users.get(update.user_id);
    if (!user) {
      user = { name: null, trail: [], updatedAt: 0 };
      state.users.set(update.user_id, user);
      // Analysts read no personal data, so only admins see names.
      if (session && session.role === "admin") {
        requestName(update.user_id);
      }
    }
    // Every LocationRecorded event takes the next sequence of the user's track, so the
    // highest sequence seen is the number of positions recorded.
    user.sequence = Math.max(user.sequence || 0, update.sequence);
    // A report recorded earlier than the one shown arrives late; it counts but does not
    // move the dot back.
    if (!user.recordedAt || Date.parse(update.data.recorded_at) >= Date.parse(user.recordedAt)) {
      user.latitude = update.data.latitude;
      user.longitude = update.data.longitude;
      user.recordedAt = update.data.recorded_at;
      user.updatedAt = performance.now();
      addTrailPoint(user, update.data.longitude, update.data.latitude);
    }
    scheduleRender();
  }

  // Ends the current subscription, reloads the snapshot and subscribes after its position.
  async function resetFromSnapshot(reason) {
    console.warn("subscription reset by the server:", reason);
    state.subscription = null;
    showConnection("connecting", "Reloading");
    if ((await loadSnapshot()) && socket.connected) {
      subscribe();
    }
  }

  function addTrailPoint(user, longitude, latitude) {
    const last = user.trail[user.trail.length - 1];
    if (last && last.longitude === longitude && last.latitude === latitude) {
      return;
    }
    user.trail.push({ longitude, latitude });
    if (user.trail.length > TRAIL_LENGTH) {
      user.trail.shift();
    }
  }

  // ---- names of users first seen in an update ------------------------------------

  function requestName(userId) {
    if (state.namesRequested.has(userId)) {
      return;
    }
    state.namesRequested.add(userId);
    state.nameQueue.push(userId);
    drainNameRequests();
  }

  function drainNameRequests() {
    while (state.namesInFlight < NAME_REQUESTS && state.nameQueue.length > 0) {
      const userId = state.nameQueue.shift();
      state.namesInFlight += 1;
      fetchName(userId)
        .catch((error) => console.warn(`loading the name of user ${userId} failed`, error))
        .finally(() => {
          state.namesInFlight -= 1;
          drainNameRequests();
        });
    }
  }

  async function fetchName(userId) {
    const response = await fetchWithToken(`/v1/users/${encodeURIComponent(userId)}`);
    if (!response.ok) {
      throw new Error(`GET /v1/users/${userId} returned ${response.status}`);
    }
    const body = await response.json();
    const user = state.users.get(userId);
    if (user) {
      user.name = body.name;
      scheduleRender();
    }
  }

  // ---- drawing --------------------------------------------------------------------

  function scheduleRender() {
    if (!state.renderQueued) {
      state.renderQueued = true;
      requestAnimationFrame(render);
    }
  }

  function render() {
    state.renderQueued = false;
    elements.userCount.textContent = state.users.size.toLocaleString("en-US");
    elements.updateCount.textContent = state.updates.toLocaleString("en-US");
    drawMap();
    renderUserList();
    // Keep drawing while a highlight fades out.
    const now = performance.now();
    for (const user of state.users.values()) {
      if (now - user.updatedAt < HIGHLIGHT_MS) {
        scheduleRender();
        break;
      }
    }
  }

  function showPosition(position) {
    elements.lastPosition.textContent = position.toLocaleString("en-US");
  }

  // Returns [minLon, minLat, maxLon, maxLat] around every user plus a margin, or the world
  // when there is no user.
  function dataExtent() {
    if (state.users.size === 0) {
      return WORLD_BBOX.slice();
    }
    let [minLon, minLat, maxLon, maxLat] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const user of state.users.values()) {
      for (const point of user.trail) {
        minLon = Math.min(minLon, point.longitude);
        maxLon = Math.max(maxLon, point.longitude);
        minLat = Math.min(minLat, point.latitude);
        maxLat = Math.max(maxLat, point.latitude);
      }
    }
    const lonMargin = Math.max((maxLon - minLon) * MARGIN_FRACTION, MIN_SPAN_DEGREES / 2);
    const latMargin = Math.max((maxLat - minLat) * MARGIN_FRACTION, MIN_SPAN_DEGREES / 2);
    return [minLon - lonMargin, minLat - latMargin, maxLon + lonMargin, maxLat + latMargin];
  }

  // Widens the extent along one axis so that a degree of longitude is cos(latitude) times
  // as wide as a degree of latitude, as on the ground near the map's centre.
  function fitAspect(extent, width, height) {
    let [minLon, minLat, maxLon, maxLat] = extent;
    const midLat = (minLat + maxLat) / 2;
    const lonScale = Math.max(Math.cos((midLat * Math.PI) / 180), 0.1);
    const groundWidth = (maxLon - minLon) * lonScale;
    const groundHeight = maxLat - minLat;
    if (groundWidth / groundHeight > width / height) {
      const grow = (groundWidth * (height / width) - groundHeight) / 2;
      minLat -= grow;
      maxLat += grow;
    } else {
      const grow = (groundHeight * (width / height)) / lonScale - (maxLon - minLon);
      minLon -= grow / 2;
      maxLon += grow / 2;
    }
    return [minLon, minLat, maxLon, maxLat];
  }

  // Returns a step of 1, 2 or 5 times a power of ten that splits `span` into about `count`.
  function tickStep(span, count) {
    const raw = span / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const fraction = raw / magnitude;
    if (fraction < 1.5) return magnitude;
    if (fraction < 3.5) return 2 * magnitude;
    if (fraction < 7.5) return 5 * magnitude;
    return 10 * magnitude;
  }

  function formatDegrees(value, decimals, positive, negative) {
    const rounded = Number(value.toFixed(decimals));
    if (rounded === 0) {
      return `${(0).toFixed(decimals)}°`;
    }
    return `${Math.abs(rounded).toFixed(decimals)}°${rounded > 0 ? positive : negative}`;
  }

  function drawMap() {
    const canvas = elements.canvas;
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth;
    const cssHeight = canvas.clientHeight;
    if (cssWidth === 0 || cssHeight === 0) {
      return;
    }
    if (canvas.width !== Math.round(cssWidth * ratio) || canvas.height !== Math.round(cssHeight * ratio)) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, cssWidth, cssHeight);

    const plot = { left: 86, top: 16, right: cssWidth - 24, bottom: cssHeight - 44 };
    const plotWidth = plot.right - plot.left;
    const plotHeight = plot.bottom - plot.top;
    const [minLon, minLat, maxLon, maxLat] = fitAspect(dataExtent(), plotWidth, plotHeight);
    const x = (longitude) => plot.left + ((longitude - minLon) / (maxLon - minLon)) * plotWidth;
    const y = (latitude) => plot.bottom - ((latitude - minLat) / (maxLat - minLat)) * plotHeight;

    drawAxes(context, plot, [minLon, minLat, maxLon, maxLat], x, y);

    context.save();
    context.beginPath();
    context.rect(plot.left, plot.top, plotWidth, plotHeight);
    context.clip();
    const now = performance.now();
    for (const [userId, user] of state.users) {
      drawUser(context, user, colorOf(userId), now, x, y);
    }
    context.restore();

    if (state.users.size === 0) {
      context.fillStyle = "#4b5563";
      context.font = "15px system-ui, sans-serif";
      context.textAlign = "center";
      context.fillText("Waiting for locations", (plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
    }
    canvas.setAttribute("aria-label", mapDescription([minLon, minLat, maxLon, maxLat]));
  }

  function drawAxes(context, plot, extent, x, y) {
    const [minLon, minLat, maxLon, maxLat] = extent;
    context.fillStyle = "#fbfcfd";
    context.fillRect(plot.left, plot.top, plot.right - plot.left, plot.bottom - plot.top);
    context.font = "12px system-ui, sans-serif";
    context.lineWidth = 1;

    const lonStep = tickStep(maxLon - minLon, Math.max(2, Math.floor((plot.right - plot.left) / 110)));
    const lonDecimals = Math.max(0, -Math.floor(Math.log10(lonStep)));
    context.textAlign = "center";
    context.textBaseline = "top";
    for (let lon = Math.ceil(minLon / lonStep) * lonStep; lon <= maxLon; lon += lonStep) {
      const px = Math.round(x(lon)) + 0.5;
      context.strokeStyle = "#e3e7ec";
      context.beginPath();
      context.moveTo(px, plot.top);
      context.lineTo(px, plot.bottom);
      context.stroke();
      const label = formatDegrees(lon, lonDecimals, "E", "W");
      const halfWidth = context.measureText(label).width / 2;
      if (px - halfWidth >= 0 && px + halfWidth <= context.canvas.clientWidth) {
        context.fillStyle = "#374151";
        context.fillText(label, px, plot.bottom + 6);
      }
    }

    const latStep = tickStep(maxLat - minLat, Math.max(2, Math.floor((plot.bottom - plot.top) / 70)));
    const latDecimals = Math.max(0, -Math.floor(Math.log10(latStep)));
    context.textAlign = "right";
    context.textBaseline = "middle";
    for (let lat = Math.ceil(minLat / latStep) * latStep; lat <= maxLat; lat += latStep) {
      const py = Math.round(y(lat)) + 0.5;
      context.strokeStyle = "#e3e7ec";
      context.beginPath();
      context.moveTo(plot.left, py);
      context.lineTo(plot.right, py);
      context.stroke();
      context.fillStyle = "#374151";
      context.fillText(formatDegrees(lat, latDecimals, "N", "S"), plot.left - 8, py);
    }

    context.strokeStyle = "#9aa4b2";
    context.strokeRect(plot.left + 0.5, plot.top + 0.5, plot.right - plot.left - 1, plot.bottom - plot.top - 1);
    context.fillStyle = "#4b5563";
    context.textAlign = "center";
    context.textBaseline = "bottom";
    context.fillText("Longitude", (plot.left + plot.right) / 2, plot.bottom + 42);
    context.save();
    context.translate(12, (plot.top + plot.bottom) / 2);
    context.rotate(-Math.PI / 2);
    context.textBaseline = "middle";
    context.fillText("Latitude", 0, 0);
    context.restore();
  }

  function drawUser(context, user, color, now, x, y) {
    const trail = user.trail;
    for (let i = 1; i < trail.length; i += 1) {
      context.strokeStyle = color;
      context.globalAlpha = 0.15 + (0.7 * i) / trail.length;
      context.lineWidth = 2;
      context.beginPath();
      context.moveTo(x(trail[i - 1].longitude), y(trail[i - 1].latitude));
      context.lineTo(x(trail[i].longitude), y(trail[i].latitude));
      context.stroke();
    }
    context.globalAlpha = 1;

    const age = now - user.updatedAt;
    const highlight = age < HIGHLIGHT_MS ? 1 - age / HIGHLIGHT_MS : 0;
    const px = x(user.longitude);
    const py = y(user.latitude);
    if (highlight > 0) {
      context.fillStyle = color;
      context.globalAlpha = 0.25 * highlight;
      context.beginPath();
      context.arc(px, py, 5 + 9 * highlight, 0, 2 * Math.PI);
      context.fill();
      context.globalAlpha = 1;
    }
    context.fillStyle = color;
    context.strokeStyle = "#ffffff";
    context.lineWidth = 1.5;
    context.beginPath();
    context.arc(px, py, 4.5, 0, 2 * Math.PI);
    context.fill();
    context.stroke();
  }

  function mapDescription(extent) {
    const [minLon, minLat, maxLon, maxLat] = extent.map((value) => value.toFixed(3));
    if (state.users.size === 0) {
      return "Map of the latest user positions; no locations yet";
    }
    return `Map of the latest positions of ${state.users.size} users, longitude ${minLon} to ${maxLon}, latitude ${minLat} to ${maxLat}`;
  }

  // Returns a stable colour for a user, dark enough to read on white.
  function colorOf(userId) {
    let hash = 0;
    for (let i = 0; i < userId.length; i += 1) {
      hash = (hash * 31 + userId.charCodeAt(i)) >>> 0;
    }
    return `hsl(${hash % 360}, 70%, 38%)`;
  }

  // ---- user list ------------------------------------------------------------------

  function renderUserList() {
    const users = [...state.users.entries()].sort(([, a], [, b]) => compareRecent(a, b));
    const rows = users.slice(0, MAX_LISTED_USERS).map(([userId, user]) => userRow(userId, user));
    elements.userList.replaceChildren(...rows);
    elements.userListNote.textContent =
      users.length > MAX_LISTED_USERS
        ? `Most recent report first; showing ${MAX_LISTED_USERS} of ${users.length}.`
        : "Most recent report first.";
  }

  function compareRecent(a, b) {
    if (a.recordedAt === b.recordedAt) return 0;
    return a.recordedAt < b.recordedAt ? 1 : -1;
  }

  function userRow(userId, user) {
    const row = document.createElement("tr");
    row.dataset.userId = userId;
    if (!user.name && session && session.role === "admin") {
      row.dataset.namePending = "true";
    }
    const name = document.createElement("td");
    name.className = "name";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colorOf(userId);
    swatch.setAttribute("aria-hidden", "true");
    name.append(swatch, user.name || userId.slice(0, 8));
    name.title = userId;
    const recorded = document.createElement("td");
    recorded.className = "time";
    recorded.textContent = formatTime(user.recordedAt);
    const positions = document.createElement("td");
    positions.className = "number positions";
    positions.textContent = user.sequence.toLocaleString("en-US");
    row.append(name, recorded, positions);
    return row;
  }

  // Formats an RFC 3339 timestamp as `YYYY-MM-DD HH:MM:SS` in UTC.
  function formatTime(timestamp) {
    const date = new Date(timestamp);
    if (Number.isNaN(date.getTime())) {
      return timestamp;
    }
    return date.toISOString().slice(0, 19).replace("T", " ");
  }

  // ---- start ----------------------------------------------------------------------

  // Shows the live view for the current session, loads the snapshot and connects.
  async function startLiveView() {
    elements.login.hidden = true;
    elements.liveView.hidden = false;
    elements.account.hidden = false;
    elements.accountText.textContent = `Logged in as ${session.role}`;
    showConnection("connecting", "Loading");
    scheduleRender();
    if (await loadSnapshot()) {
      showConnection("connecting", "Connecting");
      socket.connect();
    }
  }

  elements.loginForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    showLoginError("");
    elements.loginSubmit.disabled = true;
    try {
      await logIn(elements.loginEmail.value.trim(), elements.loginPassword.value);
      elements.loginPassword.value = "";
      startLiveView();
    } catch (error) {
      showLoginError(error.message);
    } finally {
      elements.loginSubmit.disabled = false;
    }
  });
  elements.logoutButton.addEventListener("click", () => endSession(""));

  socket.on("connect", () => {
    // After a reset the snapshot reload subscribes once it has the new position.
    if (state.loadingSnapshot) {
      return;
    }
    showConnection("connecting", "Subscribing");
    subscribe();
  });
  socket.on("update", applyUpdate);
  socket.on("reset", (message) => {
    if (!state.loadingSnapshot) {
      resetFromSnapshot(message && message.reason);
    }
  });
  socket.on("disconnect", (reason) => {
    state.subscription = null;
    if (!session) {
      return;
    }
    showConnection("disconnected", "Reconnecting");
    // The client reconnects by itself, except when the server closed the connection, as
    // it does when the access token expires. The refresh a minute before expiry has
    // already replaced the token that the `auth` callback sends.
    if (reason === "io server disconnect") {
      socket.connect();
    }
  });
  socket.on("connect_error", (error) => {
    if (socket.active) {
      // The server could not be reached; the client keeps retrying by itself.
      console.warn("Socket.IO connection failed", error.message);
      showConnection("disconnected", "Server unreachable, retrying");
      return;
    }
    // The server rejected the handshake with the message `<code>: <sentence>`, and the
    // client does not retry by itself.
    const code = error.message.split(":", 1)[0];
    if (!session) {
      return;
    }
    if (code === "token_expired") {
      showConnection("connecting", "Refreshing the session");
      refreshSession().then(() => socket.connect(), () => {});
    } else if (code === "rate_limited" || code === "internal") {
      const seconds = Number((/retry after (\d+) s/.exec(error.message) || [])[1]);
      const delay = seconds > 0 ? seconds * 1000 : RETRY_MS;
      const problem = code === "rate_limited" ? "Too many requests" : "Server error";
      showConnection("error", `${problem}, retrying in ${Math.ceil(delay / 1000)} s`);
      setTimeout(() => {
        if (session) {
          socket.connect();
        }
      }, delay);
    } else {
      endSession(`The live updates rejected the session (${error.message}); log in again.`);
    }
  });
  window.addEventListener("resize", scheduleRender);
})();
