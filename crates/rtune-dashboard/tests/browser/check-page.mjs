// Opens a dashboard page (or an `rtune report` file) in headless Chromium and checks it the way a
// person would look at it. Run by crates/rtune-cli/tests/dashboard_browser.rs, which compares the
// numbers printed here with `rtune best --json`.
//
//   node check-page.mjs --url URL --shots DIR --prefix NAME [--expect-new-result] [--wait-finished]
//                       [--experiment N] [--interact]
//
// Prints one JSON line: {"count": N, "best": V, "bestTrial": "...", "views": [...], "timelineBars":
// {"3": [run, ...], ...}, "menu": [...], "badge": {...}, "parallel": {axes, brushes, lineMargin},
// "interact": {...}, "errors": [...]}.
// --experiment N picks the N-th experiment of the menu first. --curve-values reports the learning
// curves' points as drawn and how many superseded results are marked. --interact does what a person does
// with the plots, through the mouse and the controls, and reports what the page then showed (the
// Rust test compares it with the experiment's files): hovering a learning curve, pinning it,
// another reported key, the log scale, the full range, comparing two trials, brushing axes of the
// parallel coordinates, and the slice plot.
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
const VIEWS = ['trials', 'curves', 'best', 'parallel', 'slice', 'compare', 'importance', 'decisions', 'timeline', 'lineage'];

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
  const menu = await page.evaluate(() => Array.from(document.querySelectorAll('#experiment option')).map((o) => o.textContent));
  if (opt('--experiment')) {
    const renders = await page.evaluate(() => Number(document.body.dataset.renders));
    await page.selectOption('#experiment', opt('--experiment'));
    await page.waitForFunction((n) => Number(document.body.dataset.renders) > n && !window.rtuneRenderPending, renders);
  }
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
    // The resource timeline's lanes, in the order shown.
    timelineLanes: Array.from(document.querySelectorAll('#timeline text[data-lane]')).map((t) => t.dataset.lane),
  }));
  const badge = await page.evaluate(() => ({
    status: document.getElementById('exp-status').textContent,
    className: document.getElementById('exp-status').className,
    errors: document.getElementById('exp-errors').textContent,
    errorCount: Number(document.getElementById('exp-errors').dataset.count),
    silent: document.getElementById('exp-silent').textContent,
    silentRows: Array.from(document.querySelectorAll('#trials-table td.silent')).map((td) => td.textContent),
  }));
  await showView(page, 'parallel');
  const parallel = await page.evaluate(() => window.rtuneParallel());
  let curveValues = null;
  if (flag('--curve-values')) {
    await showView(page, 'curves');
    curveValues = await page.evaluate(() => window.rtuneCurveValues());
  }
  const interact = flag('--interact') ? await interactions(page) : null;
  for (const e of errors) fail(e);
  console.log(JSON.stringify({ ...summary, firstRenderMs, views, menu, badge, parallel, curveValues, interact, errors }));
} catch (e) {
  fail(String(e && e.stack ? e.stack : e));
  for (const e2 of errors) fail(e2);
} finally {
  await browser.close();
}

// Clicks a tab and waits until the page has drawn it.
async function showView(page, v) {
  const renders = await page.evaluate(() => Number(document.body.dataset.renders));
  await page.click(`#tabs button[data-view="${v}"]`);
  await page.waitForFunction((n) => Number(document.body.dataset.renders) > n && !window.rtuneRenderPending, renders);
}

// Runs `act` and waits until the page has drawn what it changed.
async function andRender(page, act) {
  const renders = await page.evaluate(() => Number(document.body.dataset.renders));
  await act();
  await page.waitForFunction((n) => Number(document.body.dataset.renders) > n && !window.rtuneRenderPending, renders);
}

async function interactions(page) {
  const out = {};
  const best = await page.evaluate(() => ({ id: Number(document.getElementById('best-trial').dataset.id), iteration: Number(document.getElementById('best-trial').dataset.iteration) }));
  out.best = best;

  // Learning curves: hover the best trial's best point, then click it (pins it).
  await showView(page, 'curves');
  out.curvesBefore = await page.evaluate(() => window.rtuneCurveState());
  const point = await page.evaluate(([id, it]) => window.rtuneCurvePoint(id, it), [best.id, best.iteration]);
  if (!point) throw new Error('the best trial\'s point is not on the learning curves');
  await page.mouse.move(point.x, point.y);
  await page.waitForSelector('#curve-tooltip', { state: 'visible' });
  out.hover = await page.evaluate(() => ({ text: document.getElementById('curve-tooltip').innerText, trial: Number(document.getElementById('curve-tooltip').dataset.trial), state: window.rtuneCurveState() }));
  out.hover.value = point.value;
  await page.mouse.click(point.x, point.y);
  await page.waitForFunction((id) => window.rtuneCurveState().pinned.includes(id), best.id);
  out.pinnedAfterClick = await page.evaluate(() => window.rtuneCurveState().pinned);
  out.legendPinned = await page.evaluate(() => Array.from(document.querySelectorAll('#curve-legend .legend-item.pinned')).map((e) => Number(e.dataset.trial)));
  await page.mouse.move(1, 1);

  // Another reported key: the first one that is not the metric.
  const keys = await page.evaluate(() => Array.from(document.querySelectorAll('#curve-key option')).map((o) => o.value));
  out.keys = keys;
  const other = keys.find((k) => k === 'distance') || keys[1];
  if (other) {
    await andRender(page, () => page.selectOption('#curve-key', other));
    out.otherKey = { key: other, state: await page.evaluate(() => window.rtuneCurveState()), point: await page.evaluate(([id, it]) => window.rtuneCurvePoint(id, it), [best.id, best.iteration]) };
    await andRender(page, () => page.selectOption('#curve-key', keys[0]));
  }
  // The log scale, on and off again.
  await andRender(page, () => page.click('#curve-log'));
  out.log = await page.evaluate(() => window.rtuneCurveState());
  await andRender(page, () => page.click('#curve-log'));
  // The whole range, on and off again.
  out.outside = await page.evaluate(() => Number(document.getElementById('curve-note').dataset.outside));
  await andRender(page, () => page.click('#curve-full'));
  out.fullRange = await page.evaluate(() => window.rtuneCurveState());
  await andRender(page, () => page.click('#curve-full'));
  out.robustRange = await page.evaluate(() => window.rtuneCurveState());

  // Compare: tick a second trial in the table (the first row that is not pinned).
  await showView(page, 'trials');
  const second = await page.evaluate((id) => Number(Array.from(document.querySelectorAll('#trials-table input.pin')).find((c) => Number(c.dataset.trial) !== id).dataset.trial), best.id);
  await andRender(page, () => page.click(`#trials-table input.pin[data-trial="${second}"]`));
  await showView(page, 'compare');
  out.compare = await page.evaluate(() => ({
    trials: Array.from(document.querySelectorAll('#compare-table thead th[data-trial]')).map((th) => Number(th.dataset.trial)),
    rows: Array.from(document.querySelectorAll('#compare-table tbody tr')).map((tr) => ({ row: tr.dataset.row, differs: tr.classList.contains('differs'), values: Array.from(tr.querySelectorAll('td')).map((td) => td.textContent) })),
    series: Number(document.getElementById('compare-chart').dataset.series || 0),
  }));

  // Parallel coordinates: the axes, the labels, and brushing.
  await showView(page, 'parallel');
  out.parallel = await page.evaluate(() => ({
    ...window.rtuneParallel(),
    ticks: Object.fromEntries(Array.from(document.querySelectorAll('#parallel-svg g.pc-axis')).map((g) => [g.dataset.axis, Array.from(g.querySelectorAll('text.pc-tick')).map((t) => t.textContent)])),
    names: Array.from(document.querySelectorAll('#parallel-svg text.pc-name')).map((t) => t.firstChild.textContent),
    clashes: window.rtuneLabelClashes(),
  }));
  const drag = async (axis, y0, y1) => {
    await andRender(page, async () => {
      await page.mouse.move(axis.x, y0);
      await page.mouse.down();
      await page.mouse.move(axis.x, (y0 + y1) / 2);
      await page.mouse.move(axis.x, y1);
      await page.mouse.up();
    });
  };
  // The trials table's count of matching trials (the table is drawn when shown).
  const tableCount = async () => {
    await showView(page, 'trials');
    const n = await page.evaluate(() => Number(document.getElementById('trials-note').dataset.count));
    await showView(page, 'parallel');
    return n;
  };
  const brushed = [];
  const categorical = out.parallel.axes.find((a) => a.kind === 'categorical');
  if (categorical) {
    const value = categorical.values[categorical.values.length - 1];
    const at = await page.evaluate(([id, v]) => window.rtuneAxisPoint(id, v), [categorical.id, value]);
    await drag(at, at.y - 8, at.y + 8);
    const state = await page.evaluate(() => window.rtuneParallel().brushes);
    const count = await tableCount();
    await showView(page, 'trials');
    const param = categorical.id.slice(2);
    const column = await page.evaluate((p) => {
      const ths = Array.from(document.querySelectorAll('#trials-table thead th'));
      const k = ths.findIndex((th) => th.dataset.key === 'p:' + p);
      return Array.from(document.querySelectorAll('#trials-table tbody tr')).map((tr) => tr.children[k].textContent);
    }, param);
    brushed.push({ axis: categorical.id, brush: state[categorical.id], count, column });
    await showView(page, 'parallel');
    // A click on the axis clears its brush.
    await andRender(page, async () => { await page.mouse.click(at.x, at.y + 20); });
    brushed.push({ axis: categorical.id, cleared: true, brushes: await page.evaluate(() => window.rtuneParallel().brushes), count: await tableCount() });
  }
  const numeric = out.parallel.axes.find((a) => a.kind === 'log') || out.parallel.axes.find((a) => a.kind === 'linear' && a.id !== 'objective');
  if (numeric) {
    const lo = await page.evaluate(([id, v]) => window.rtuneAxisPoint(id, v), [numeric.id, numeric.lo]);
    const hi = await page.evaluate(([id, v]) => window.rtuneAxisPoint(id, v), [numeric.id, numeric.hi]);
    await drag(lo, lo.y + (hi.y - lo.y) * 0.25, lo.y + (hi.y - lo.y) * 0.75);
    const state = await page.evaluate(() => window.rtuneParallel().brushes);
    brushed.push({ axis: numeric.id, brush: state[numeric.id], count: await tableCount(), inside: await page.evaluate(() => Number(document.getElementById('parallel-note').dataset.inside)) });
    if (shots) await page.screenshot({ path: join(shots, `${prefix}-parallel-brushed.png`), fullPage: false });
    await andRender(page, () => page.click('#parallel-note button'));
  }
  out.brushed = brushed;

  // The slice plot: one plot per parameter, a point per trial with a best value.
  await showView(page, 'slice');
  out.slice = await page.evaluate(() => Array.from(document.querySelectorAll('#slice-plots svg.slice')).map((s) => ({
    param: s.dataset.param, scale: s.dataset.scale, points: s.querySelectorAll('.slice-dot').length,
    ticks: Array.from(s.querySelectorAll('text.slice-tick')).map((t) => t.textContent),
  })));
  if (shots) {
    await showView(page, 'compare');
    await page.screenshot({ path: join(shots, `${prefix}-compare-pinned.png`), fullPage: false });
    await showView(page, 'curves');
    const p = await page.evaluate(([id, it]) => window.rtuneCurvePoint(id, it), [best.id, best.iteration]);
    if (p) { await page.mouse.move(p.x, p.y); await page.waitForSelector('#curve-tooltip', { state: 'visible' }); }
    await page.screenshot({ path: join(shots, `${prefix}-curves-hover.png`), fullPage: false });
  }
  return out;
}
