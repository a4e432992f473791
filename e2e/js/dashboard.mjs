// Opens the Meridian dashboard in headless Chromium, logs in through its login form, and
// checks that it shows the expected number of users and updates, then saves a screenshot.
//
// Usage: MERIDIAN_DASHBOARD_PASSWORD=<password> node dashboard.mjs --url URL --email EMAIL
//            --users N --updates N --screenshot FILE [--timeout-secs S] [--chromium PATH]
//
// --email and the password (from the environment, which other users cannot read, unlike the
// command line) are of an admin or analyst. The script first submits a wrong password and
// checks that the page shows an error and stays logged out, then logs in. It checks that the
// page keeps its tokens out of cookies and web storage. --timeout-secs (default 60) bounds
// each wait while the page shows no change.
//
// Prints `login error MESSAGE` with the error the page showed for the wrong password, and
// `ready` on stdout once the page is subscribed, so the caller can start sending data. Once the counts are reached it prints `rows JSON`, the user list as the page shows
// it (name, last report, positions), and `screenshot FILE` when done. Exits 1 with a message on stderr on any failure:
// a wait that runs out, a counter that overshoots, a script error in the page, or a request
// to a host other than the dashboard's.

import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

// Maximum wait for the page, in multiples of --timeout-secs.
const MAX_WAIT_TIMEOUTS = 5;

const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// A failed check, reported on stderr without a stack trace.
class CheckFailed extends Error {}

function fail(message) {
  throw new CheckFailed(message);
}

function readOptions() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      email: { type: "string" },
      users: { type: "string" },
      updates: { type: "string" },
      screenshot: { type: "string" },
      "timeout-secs": { type: "string", default: "60" },
      chromium: { type: "string", default: "/usr/bin/chromium" },
    },
  });
  for (const name of ["url", "email", "users", "updates", "screenshot"]) {
    if (values[name] === undefined) {
      fail(`--${name} is missing`);
    }
  }
  const password = process.env.MERIDIAN_DASHBOARD_PASSWORD;
  if (!password) {
    fail("MERIDIAN_DASHBOARD_PASSWORD is missing: set it to the password of --email");
  }
  const count = (name) => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < 0) {
      fail(`--${name} must be a whole number, got ${JSON.stringify(values[name])}`);
    }
    return value;
  };
  return {
    url: new URL(values.url),
    email: values.email,
    password,
    users: count("users"),
    updates: count("updates"),
    screenshot: values.screenshot,
    timeoutMs: count("timeout-secs") * 1000,
    chromium: values.chromium,
  };
}

// Reads the counters and the connection state that the page shows.
async function readPage(page) {
  return page.evaluate(() => {
    const number = (id) => Number(document.getElementById(id).textContent.replace(/,/g, ""));
    return {
      users: number("user-count"),
      updates: number("update-count"),
      connection: document.getElementById("connection-state").dataset.state,
      connectionText: document.getElementById("connection-text").textContent,
    };
  });
}

// Reads the rows of the user list once every listed user has a name, which the page loads
// with a request of its own for users first seen in an update.
async function readUserList(page, timeoutMs) {
  await page
    .waitForFunction(() => document.querySelector("#user-list tr[data-name-pending]") === null, null, {
      timeout: timeoutMs,
      polling: 200,
    })
    .catch(() => fail(`the user list still lacks names after ${timeoutMs / 1000} s`));
  return page.$$eval("#user-list tr", (rows) =>
    rows.map((row) => ({
      name: row.querySelector(".name").textContent.trim(),
      last_report: row.querySelector(".time").textContent.trim(),
      positions: Number(row.querySelector(".positions").textContent.replace(/,/g, "")),
    })),
  );
}

// Submits the login form with `email` and `password`.
async function submitLogin(page, email, password) {
  await page.fill("#login-email", email);
  await page.fill("#login-password", password);
  await page.click("#login-submit");
}

// Submits a wrong password and returns the error the page shows; fails when the page shows
// none within `timeoutMs` or leaves the logged-out state.
async function rejectWrongPassword(page, email, timeoutMs) {
  await submitLogin(page, email, `wrong-${Date.now()}`);
  const error = page.locator("#login-error");
  await error
    .waitFor({ state: "visible", timeout: timeoutMs })
    .catch(() => fail(`the page showed no login error within ${timeoutMs / 1000} s`));
  const message = (await error.textContent()).trim();
  const shown = await readPage(page);
  if (message === "" || shown.connection !== "logged-out") {
    fail(`after a wrong password the page shows ${JSON.stringify({ message, ...shown })}`);
  }
  return message;
}

// Fails when the page keeps anything in cookies, localStorage or sessionStorage, where a
// token would outlive the page or be readable by other pages of the origin.
async function checkNoStoredTokens(page, context) {
  const stored = await page.evaluate(() => ({
    localStorage: Object.keys(window.localStorage),
    sessionStorage: Object.keys(window.sessionStorage),
  }));
  const cookies = await context.cookies();
  if (stored.localStorage.length + stored.sessionStorage.length + cookies.length > 0) {
    fail(`the page stored ${JSON.stringify({ ...stored, cookies: cookies.map((c) => c.name) })}`);
  }
}

// Polls the page until `done(shown)` holds. Fails when `overshot(shown)` holds, when what
// the page shows stays the same for `timeoutMs`, or after `MAX_WAIT_TIMEOUTS` times that in
// all, so a slow but steady import does not fail while a stalled one does.
async function waitForPage(page, what, timeoutMs, done, overshot = () => false) {
  const started = Date.now();
  let shown = await readPage(page);
  let changedAt = started;
  while (!done(shown)) {
    if (overshot(shown)) {
      fail(`${what}: the page went past it and shows ${JSON.stringify(shown)}`);
    }
    const now = Date.now();
    if (now - changedAt > timeoutMs) {
      fail(`${what}: nothing changed for ${timeoutMs / 1000} s; the page shows ${JSON.stringify(shown)}`);
    }
    if (now - started > MAX_WAIT_TIMEOUTS * timeoutMs) {
      fail(`${what} within ${(MAX_WAIT_TIMEOUTS * timeoutMs) / 1000} s; the page shows ${JSON.stringify(shown)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    const next = await readPage(page);
    if (JSON.stringify(next) !== JSON.stringify(shown)) {
      changedAt = Date.now();
    }
    shown = next;
  }
  return shown;
}

async function main() {
  const options = readOptions();
  const problems = [];
  const userDataDir = mkdtempSync(join(tmpdir(), "meridian-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: options.chromium,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1280, height: 800 },
      timeout: options.timeoutMs,
    });
  } catch (error) {
    rmSync(userDataDir, { recursive: true, force: true });
    fail(`could not start ${options.chromium}: ${error.message}`);
  }

  try {
    await context.route("**/*", (route) => {
      const requested = new URL(route.request().url());
      if (requested.hostname !== options.url.hostname) {
        problems.push(`the page requested ${requested.href}`);
        return route.abort();
      }
      return route.continue();
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("pageerror", (error) => problems.push(`script error in the page: ${error.message}`));
    page.on("console", (message) => {
      // Chromium logs the 401 of the deliberately wrong login as a failed resource.
      const wrongLogin = message.location().url.endsWith("/v1/auth/login");
      if (message.type() === "error" && !wrongLogin) {
        problems.push(`console error in the page: ${message.text()}`);
      }
    });

    const response = await page.goto(options.url.href, { timeout: options.timeoutMs });
    if (!response || !response.ok()) {
      fail(`GET ${options.url.href} returned ${response ? response.status() : "no response"}`);
    }
    await page
      .locator("#login-form")
      .waitFor({ state: "visible", timeout: options.timeoutMs })
      .catch(() => fail("the page shows no login form"));
    const loginError = await rejectWrongPassword(page, options.email, options.timeoutMs);
    console.log(`login error ${loginError}`);
    await submitLogin(page, options.email, options.password);
    await waitForPage(page, "the page did not subscribe", options.timeoutMs, (shown) => {
      return shown.connection === "live";
    });
    await checkNoStoredTokens(page, context);
    console.log("ready");

    const shown = await waitForPage(
      page,
      `the page did not reach ${options.users} users and ${options.updates} updates`,
      options.timeoutMs,
      (shown) => shown.users === options.users && shown.updates === options.updates,
      (shown) => shown.users > options.users || shown.updates > options.updates,
    );
    const rows = await readUserList(page, options.timeoutMs);
    if (problems.length > 0) {
      fail(problems.join("; "));
    }

    // Let the highlight of the last updates fade before the picture is taken.
    await page.waitForTimeout(2000);
    mkdirSync(dirname(options.screenshot), { recursive: true });
    await page.screenshot({ path: options.screenshot, timeout: options.timeoutMs });
    console.log(`shown ${JSON.stringify(shown)}`);
    console.log(`rows ${JSON.stringify(rows)}`);
    console.log(`screenshot ${options.screenshot}`);
  } finally {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  const detail = error instanceof CheckFailed ? error.message : error.stack || String(error);
  console.error(`dashboard check failed: ${detail}`);
  process.exitCode = 1;
});
