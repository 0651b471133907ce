// Time to first render of a dashboard page in headless Chromium, and of each view after a click:
//   node bench-page.mjs URL
// Prints one JSON line: {"firstRenderMs": ..., "loadedMs": ..., "views": {"curves": ms, ...}}.
import { chromium } from 'playwright-core';

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.RTUNE_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1400, height: 900 } })).newPage();
  page.setDefaultTimeout(600000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const t0 = Date.now();
  await page.goto(url, { waitUntil: 'commit' });
  await page.waitForSelector('body[data-ready="1"]');
  const loadedMs = Date.now() - t0;
  const firstRenderMs = await page.evaluate(() => window.rtuneFirstRenderMs);
  const views = {};
  for (const v of ['curves', 'best', 'parallel', 'slice', 'importance', 'decisions', 'timeline', 'trials']) {
    // A page from an older rtune may lack a view: measured side by side, it is left out.
    if (!(await page.$(`#tabs button[data-view="${v}"]`))) continue;
    const renders = await page.evaluate(() => Number(document.body.dataset.renders));
    const s = Date.now();
    await page.click(`#tabs button[data-view="${v}"]`);
    await page.waitForFunction((n) => Number(document.body.dataset.renders) > n && !window.rtuneRenderPending, renders);
    views[v] = Date.now() - s;
  }
  console.log(JSON.stringify({ loadedMs, firstRenderMs, views, errors }));
} finally {
  await browser.close();
}
