// Opens a dashboard page (or an `rtune report` file) in headless Chromium and checks it the way a
// person would look at it. Run by crates/rtune-cli/tests/dashboard_browser.rs, which compares the
// numbers printed here with `rtune best --json`.
//
//   node check-page.mjs --url URL --shots DIR --prefix NAME [--expect-new-result] [--wait-finished]
//
// Prints one JSON line: {"count": N, "best": V, "bestTrial": "...", "views": [...], "timelineBars":
// {"3": [run, ...], ...}, "errors": [...]}.
// Exits 1 when the page logged errors or a check failed (with the reason on stderr).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
const opt = (name) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };
const flag = (name) => args.includes(name);
const url = opt('--url');
const shots = opt('--shots');
const prefix = opt('--prefix') || 'page';
const timeout = Number(opt('--timeout-ms') || 120000);
const executablePath = process.env.RTUNE_CHROMIUM || '/usr/bin/chromium';
const VIEWS = ['trials', 'curves', 'best', 'parallel', 'importance', 'decisions', 'timeline', 'lineage'];

function fail(message) {
  console.error('check-page: ' + message);
  process.exitCode = 1;
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const errors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => { if (m.type() === 'error') errors.push('console: ' + m.text()); });
  page.on('pageerror', (e) => errors.push('page error: ' + e.message));
  page.on('requestfailed', (r) => {
    // The server-sent-events stream is cut when the browser closes; anything else is an error.
    if (!r.url().includes('/api/events/')) errors.push('request failed: ' + r.url());
  });
  await page.goto(url);
  await page.waitForSelector('body[data-ready="1"]');
  // A marker that a reload would remove: new results must arrive without one.
  await page.evaluate(() => { window.rtuneNoReload = true; });
  const firstRenderMs = await page.evaluate(() => window.rtuneFirstRenderMs);

  if (flag('--expect-new-result')) {
    const before = await page.evaluate(() => Number(document.body.dataset.points));
    await page.waitForFunction((n) => Number(document.body.dataset.points) > n, before);
    const after = await page.evaluate(() => Number(document.body.dataset.points));
    console.error(`check-page: results shown went from ${before} to ${after} without a reload`);
  }
  if (flag('--wait-finished')) {
    await page.waitForFunction(() => document.getElementById('exp-status').textContent === 'finished');
    // The last update may still be drawing.
    await page.waitForFunction(() => !window.rtuneRenderPending);
  }
  if (shots) mkdirSync(shots, { recursive: true });
  const views = [];
  for (const v of VIEWS) {
    const renders = await page.evaluate(() => Number(document.body.dataset.renders));
    await page.click(`#tabs button[data-view="${v}"]`);
    await page.waitForFunction((n) => Number(document.body.dataset.renders) > n && !window.rtuneRenderPending, renders);
    const visible = await page.isVisible(`#view-${v}`);
    if (!visible) fail(`view ${v} is not shown after clicking its tab`);
    const drawn = await page.evaluate((name) => {
      const s = document.getElementById('view-' + name);
      return s.querySelectorAll('canvas, svg, tr, .bar-row, .empty').length;
    }, v);
    if (drawn === 0) fail(`view ${v} shows nothing`);
    views.push({ view: v, elements: drawn });
    if (shots) await page.screenshot({ path: join(shots, `${prefix}-${v}.png`), fullPage: false });
  }
  const noReload = await page.evaluate(() => window.rtuneNoReload === true);
  if (!noReload) fail('the page was reloaded');
  const summary = await page.evaluate(() => ({
    count: Number(document.getElementById('trial-count').dataset.value),
    best: document.getElementById('best-value').dataset.value === undefined ? null : Number(document.getElementById('best-value').dataset.value),
    bestTrial: document.getElementById('best-trial').dataset.trial || null,
    status: document.getElementById('exp-status').textContent,
    points: Number(document.body.dataset.points),
    // The resource timeline's bars (one per run) by trial id, and the runs they name.
    timelineBars: Array.from(document.querySelectorAll('#timeline rect[data-trial]')).reduce((m, r) => {
      const id = r.dataset.trial;
      (m[id] = m[id] || []).push(r.dataset.run === undefined ? null : Number(r.dataset.run));
      return m;
    }, {}),
  }));
  for (const e of errors) fail(e);
  console.log(JSON.stringify({ ...summary, firstRenderMs, views, errors }));
} catch (e) {
  fail(String(e && e.stack ? e.stack : e));
  for (const e2 of errors) fail(e2);
} finally {
  await browser.close();
}
