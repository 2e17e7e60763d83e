// Real-browser helpers for the integration tests: Debian's Chromium driven by npm playwright-core
// (never a browser downloaded by playwright), the demo page's sign-in through the provider's HTML
// form, and tiny "other site" servers on loopback for cross-site attacker pages.

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

import { chromium } from 'playwright-core';

import {
  APP, IDP, ROOT, TLS_CERT, TLS_KEY,
} from '../../scripts/lib/paths.mjs';

/** Debian's chromium (installed by scripts/setup.sh). */
export const CHROMIUM_PATH = process.env.BFFGATE_CHROMIUM || '/usr/bin/chromium';

/** Flags: headless, no sandbox (root), nothing that phones home or starts background work. */
export const CHROMIUM_ARGS = Object.freeze([
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
]);

/** Where tests put screenshots (git-ignored). */
export const ARTIFACTS = path.join(ROOT, 'tests/artifacts');

/**
 * Launches Chromium. Playwright gives every launch a fresh temporary profile (--user-data-dir);
 * tests also use a new context (own cookie jar and storage) per scenario.
 */
export async function launchChromium() {
  if (!fs.existsSync(CHROMIUM_PATH)) {
    throw new Error(`${CHROMIUM_PATH} not found: run \`make setup\` (installs Debian's chromium)`);
  }
  return chromium.launch({
    executablePath: CHROMIUM_PATH, headless: true, args: [...CHROMIUM_ARGS], timeout: 30_000,
  });
}

/**
 * A new browser context for the app. The demo certificate is self-signed, so certificate errors
 * are ignored (the origin stays https://localhost:8443, a secure context: __Host- cookies work).
 */
export async function newAppContext(browser, o = {}) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, ...o });
  ctx.setDefaultTimeout(15_000);
  ctx.setDefaultNavigationTimeout(15_000);
  return ctx;
}

/** Waits until `selector`'s text matches `re`; returns the text. Shows the page's state on failure. */
export async function waitForText(page, selector, re, { timeout = 10_000 } = {}) {
  try {
    await page.locator(selector).filter({ hasText: re }).waitFor({ timeout });
  } catch (err) {
    let text;
    try {
      text = await page.locator(selector).textContent({ timeout: 1000 });
    } catch {
      text = '(element not found)';
    }
    throw new Error(`${selector} never matched ${re} on ${page.url()}; it shows: ${JSON.stringify(text)} (${err.message.split('\n')[0]})`);
  }
  return page.locator(selector).textContent();
}

/**
 * Signs in on the demo page as a person would: open /, press "Sign in", fill the provider's
 * form (fields login/password), submit; consent is granted by the demo provider. Ends on
 * https://localhost:8443/ with #status "Signed in as …".
 */
export async function signInThroughPage(page, user, password = user) {
  await page.goto(`${APP}/`);
  await waitForText(page, '#status', /Not signed in/);
  await Promise.all([
    page.waitForURL((u) => u.origin === IDP && u.pathname.startsWith('/interaction/')),
    page.click('#signin'),
  ]);
  await page.fill('#login', user);
  await page.fill('#password', password);
  await Promise.all([
    page.waitForURL(`${APP}/`),
    page.click('#submit'),
  ]);
  await waitForText(page, '#status', /Signed in as/);
}

/**
 * A tiny web server on 127.0.0.1 (ephemeral port) serving fixed HTML pages: an "other site"
 * for cross-site tests. `pages` maps a path to HTML (string) or to a function(req) -> string.
 * With `tls: true` it serves https with the demo certificate (name localhost), so its origin
 * https://localhost:<port> is same-SITE as the app but a different ORIGIN; without, its
 * origin http://127.0.0.1:<port> is cross-site (127.0.0.1 and localhost are different sites).
 * Every request is recorded in `requests` ({method, url, headers}).
 */
export async function startSite(pages, { tls = false } = {}) {
  const requests = [];
  const handler = (req, res) => {
    requests.push({ method: req.method, url: req.url, headers: req.headers });
    const u = new URL(req.url, 'http://x');
    const page = pages[u.pathname];
    req.resume();
    if (page === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    const html = typeof page === 'function' ? page(req) : page;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(html);
  };
  const server = tls
    ? https.createServer({
      cert: fs.readFileSync(TLS_CERT),
      key: fs.readFileSync(TLS_KEY),
    }, handler)
    : http.createServer(handler);
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const origin = tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`;
  return {
    origin,
    requests,
    close: () => new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
