// The rtune dashboard page. Data comes either from the server (`rtune dashboard`: one
// server-sent-events stream per experiment, a snapshot first, then changes) or inlined
// (`rtune report`). Plain JavaScript; charts by uPlot (vendored) and hand-drawn canvas/SVG.
// The plots follow the rules of the server-drawn ones (src/scale.rs, src/svg.rs): a default range
// that outliers do not squash, whole-number ticks for iterations, parameter axes from the search
// space (log only for log domains, categories for choices).
(function () {
  'use strict';
  const CONFIG = JSON.parse(document.getElementById('rtune-config').textContent);
  const STATIC = JSON.parse(document.getElementById('rtune-data').textContent);
  const $ = (id) => document.getElementById(id);
  const SVGNS = 'http://www.w3.org/2000/svg';

  let experiments = [];
  let current = 0;
  let source = null;
  let cur = null; // the current experiment's data
  let view = 'trials';
  const dirty = new Set();
  let renderTimer = null;
  let importanceAt = 0;
  let importanceTimer = null;
  let firstRender = true;
  const charts = {};
  const sort = { key: 'id', dir: 1 };
  // The Trials tab's filters, and the parallel coordinates' brushes (axis id -> range or set).
  const filter = { statuses: null, ranges: {}, cats: {}, brushes: {} };
  let selectedTrial = null;
  // Trials pinned on the learning curves or ticked in the table: highlighted, and compared.
  const pinned = new Set();
  let hovered = null;
  // The learning curves' options.
  const curveOpts = { key: null, log: false, fullRange: false };
  const MAX_ROWS = 1000;
  const ALL_VIEWS = ['trials', 'curves', 'best', 'parallel', 'slice', 'compare', 'importance', 'decisions', 'timeline', 'lineage'];

  // ---------- helpers
  function withToken(url) {
    return CONFIG.token ? url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(CONFIG.token) : url;
  }
  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return '';
    if (typeof x !== 'number') return String(x);
    if (x === 0) return '0';
    const a = Math.abs(x);
    if (a < 1e-3 || a >= 1e5) return x.toExponential(3).replace(/\.?0+e/, 'e').replace('e+', 'e');
    return String(Number(x.toPrecision(5)));
  }
  function fmtValue(v) {
    if (typeof v === 'number') return fmt(v);
    if (v === null || v === undefined) return '';
    return typeof v === 'string' ? v : JSON.stringify(v);
  }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // A trial's colour: hues a golden angle apart, and three lightnesses in turn, so that trials
  // whose hues come out close (0 and 8) still differ.
  function colour(id) {
    return 'hsl(' + ((id * 137.508) % 360).toFixed(1) + ',65%,' + [42, 30, 55][id % 3] + '%)';
  }
  // Viridis (u in 0..1, dark purple to yellow), the same samples as src/scale.rs.
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  function viridis(u) {
    u = Number.isFinite(u) ? Math.min(1, Math.max(0, u)) : 0;
    const x = u * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
    const a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return 'rgb(' + [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * f)).join(',') + ')';
  }
  function score(v) { return cur.header.mode === 'max' ? v : -v; }
  function trialName(id) { return 'trial_' + String(id).padStart(5, '0'); }
  function trialById(id) { return cur.trials.find((t) => t.id === id); }
  function shownWidth(node) { return Math.max(400, (node.clientWidth || document.body.clientWidth || 1000) - 10); }
  function paramsText(t) { return cur.header.parameters.map((p) => p + '=' + fmtValue(t.params[p])).join(', '); }
  function finiteNumber(x) { return typeof x === 'number' && Number.isFinite(x); }

  // ---------- scales (the rules of src/scale.rs)
  // 10th to 90th percentile widened by their distance on each side, never beyond the data.
  function robustRange(values) {
    let v = values.filter(Number.isFinite);
    if (!v.length) return null;
    // A sample is enough for percentiles of a million points.
    if (v.length > 100000) { const step = v.length / 100000; v = Array.from({ length: 100000 }, (_, i) => v[Math.floor(i * step)]); }
    v.sort((a, b) => a - b);
    const q = (p) => v[Math.floor((v.length - 1) * p)];
    const p10 = q(0.1), p90 = q(0.9);
    const spread = p90 > p10 ? p90 - p10 : Math.max(Math.abs(p90) * 0.1, 1e-12);
    let min = Infinity, max = -Infinity;
    for (const x of values) if (Number.isFinite(x)) { if (x < min) min = x; if (x > max) max = x; }
    return [Math.max(min, p10 - spread), Math.min(max, p90 + spread)];
  }
  function linearTicks(lo, hi, count, integer) {
    if (!(Number.isFinite(lo) && Number.isFinite(hi)) || hi <= lo) return Number.isFinite(lo) ? [lo] : [];
    const raw = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let k = Math.ceil(lo / step); k * step <= hi + step * 1e-9; k++) out.push(Math.abs(k * step) < step * 1e-9 ? 0 : Number((k * step).toPrecision(12)));
    return out;
  }
  function logTicks(lo, hi) {
    if (!(lo > 0 && hi >= lo && Number.isFinite(hi))) return [];
    const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    const ms = Math.log10(hi / lo) < 2 ? [1, 2, 5] : [1];
    const out = [];
    for (let e = a; e <= b; e++) for (const m of ms) { const t = Number((m * Math.pow(10, e)).toPrecision(12)); if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) out.push(t); }
    return out.length >= 2 ? out : (hi > lo ? [lo, hi] : [lo]);
  }
  const catKey = (v) => JSON.stringify(v);

  // The axis of a searched parameter: from its domain in the search space, widened to every value
  // seen; without a space, linear for numbers and categorical otherwise (nothing is guessed).
  function spaceOf(name) { return (cur.header.space || []).find((p) => p.name === name) || null; }
  function paramAxis(name, values) {
    const sp = spaceOf(name);
    const nums = values.filter(finiteNumber);
    const widen = (lo, hi) => { for (const x of nums) { if (x < lo) lo = x; if (x > hi) hi = x; } return [lo, hi]; };
    if (sp && sp.scale === 'categorical') {
      const vals = sp.values.slice();
      const keys = new Set(vals.map(catKey));
      for (const v of values) if (!keys.has(catKey(v))) { keys.add(catKey(v)); vals.push(v); }
      return categoricalAxis(vals);
    }
    if (sp) {
      const [lo, hi] = widen(sp.low, sp.high);
      if (sp.scale === 'log' && lo > 0) return numericAxis(lo, hi, 'log', sp.integer);
      return numericAxis(lo, hi, 'linear', sp.integer);
    }
    if (values.length && nums.length === values.length) {
      const [lo, hi] = widen(Infinity, -Infinity);
      return numericAxis(lo, hi, 'linear', nums.every(Number.isInteger));
    }
    const seen = new Map();
    for (const v of values) seen.set(catKey(v), v);
    return categoricalAxis(Array.from(seen.keys()).sort().map((k) => seen.get(k)));
  }
  function numericAxis(lo, hi, kind, integer) {
    const log = kind === 'log';
    const f = log ? Math.log : (x) => x;
    const a = f(lo), b = f(hi);
    return {
      kind, lo, hi, integer: !!integer,
      pos: (v) => (finiteNumber(v) && (!log || v > 0) ? (b > a ? (f(v) - a) / (b - a) : 0.5) : null),
      value: (u) => (log ? Math.exp(a + u * (b - a)) : a + u * (b - a)),
      ticks: () => (log ? logTicks(lo, hi) : linearTicks(lo, hi, 5, integer)).map((t) => [b > a ? (f(t) - a) / (b - a) : 0.5, fmt(t)]),
    };
  }
  function categoricalAxis(values) {
    const index = new Map(values.map((v, i) => [catKey(v), i]));
    const n = values.length;
    return {
      kind: 'categorical', values,
      pos: (v) => { const i = index.get(catKey(v)); return i === undefined ? null : (i + 0.5) / n; },
      ticks: () => values.map((v, i) => [(i + 0.5) / n, fmtValue(v)]),
    };
  }

  // ---------- data
  function curveColumn(c, key) {
    if (!c) return null;
    return key === cur.header.metric ? c.v : (c.m && c.m[key]) || null;
  }
  // The indices of a trial's results that count (Curve::counting in src/experiment.rs): where the
  // iterations go back (older files kept the lines a restart replaced), the later line replaces
  // the earlier ones from its iteration on.
  function counting(c) {
    const kept = [];
    for (let k = 0; k < c.it.length; k++) {
      while (kept.length && c.it[kept[kept.length - 1]] >= c.it[k]) kept.pop();
      kept.push(k);
    }
    return kept;
  }
  function appendCurve(c, p) {
    const n = c.it.length, total = n + p.it.length;
    for (const key of ['it', 'v', 'ts']) for (const x of p[key]) c[key].push(x);
    c.m = c.m || {};
    for (const [key, col] of Object.entries(p.m || {})) {
      if (!c.m[key]) c.m[key] = new Array(n).fill(null);
      for (const x of col) c.m[key].push(x);
    }
    for (const col of Object.values(c.m)) while (col.length < total) col.push(null);
    if (p.why && p.why.length) { c.why = c.why || []; while (c.why.length < n) c.why.push(''); for (const w of p.why) c.why.push(w); }
  }

  function load(snapshot, importance) {
    const toMap = (o) => { const m = new Map(); for (const [k, c] of Object.entries(o || {})) m.set(Number(k), c); return m; };
    cur = {
      header: snapshot.header,
      trials: snapshot.trials,
      curves: toMap(snapshot.curves),
      superseded: toMap(snapshot.superseded),
      decisions: snapshot.decisions,
      continueDecisions: snapshot.continue_decisions,
      events: snapshot.events,
      lineage: snapshot.lineage,
      problems: snapshot.problems,
      importance: importance === undefined ? null : importance,
      points: 0,
    };
    for (const c of cur.curves.values()) cur.points += c.it.length;
    filter.statuses = null;
    filter.ranges = {};
    filter.cats = {};
    filter.brushes = {};
    if (!curveOpts.key) curveOpts.key = cur.header.metric;
    buildFilters();
    for (const v of ALL_VIEWS) dirty.add(v);
    scheduleRender(true);
    if (CONFIG.live) fetchImportance();
  }

  function apply(u) {
    if (!cur) return;
    if (u.reset) { connect(current); return; }
    if (u.header) cur.header = u.header;
    if (u.trials) {
      cur.trials = u.trials;
      ['trials', 'parallel', 'slice', 'compare', 'timeline', 'curves'].forEach((v) => dirty.add(v));
      if (CONFIG.live && Date.now() - importanceAt > 10000) fetchImportance();
      else if (CONFIG.live && !importanceTimer) importanceTimer = setTimeout(fetchImportance, 10000);
    }
    let curvesChanged = false;
    if (u.points) {
      for (const [k, p] of Object.entries(u.points)) {
        const id = Number(k);
        cur.points += p.it.length;
        const c = cur.curves.get(id);
        if (!c) cur.curves.set(id, p); else appendCurve(c, p);
      }
      curvesChanged = true;
    }
    // A trial's result.json was rewritten (lines moved to superseded.json): its whole curve.
    if (u.curves) {
      for (const [k, c] of Object.entries(u.curves)) {
        const id = Number(k);
        const before = cur.curves.get(id);
        cur.points += c.it.length - (before ? before.it.length : 0);
        cur.curves.set(id, c);
      }
      curvesChanged = true;
    }
    if (u.superseded) { for (const [k, c] of Object.entries(u.superseded)) cur.superseded.set(Number(k), c); curvesChanged = true; }
    if (curvesChanged) ['curves', 'best', 'compare', 'trials'].forEach((v) => dirty.add(v));
    if (u.decisions) { for (const d of u.decisions) cur.decisions.push(d); dirty.add('decisions'); dirty.add('curves'); }
    if (u.continue_decisions) { cur.continueDecisions += u.continue_decisions; dirty.add('decisions'); }
    if (u.events) { for (const e of u.events) cur.events.push(e); dirty.add('timeline'); }
    if (u.lineage) { for (const l of u.lineage) cur.lineage.push(l); dirty.add('lineage'); }
    if (u.problems) { for (const p of u.problems) cur.problems.push(p); }
    scheduleRender(false);
  }

  function fetchImportance() {
    if (importanceTimer) { clearTimeout(importanceTimer); importanceTimer = null; }
    importanceAt = Date.now();
    const exp = current;
    fetch(withToken('/api/importance/' + exp)).then((r) => r.json()).then((j) => {
      if (exp !== current || !cur) return;
      cur.importance = j.importance;
      dirty.add('importance');
      scheduleRender(false);
    }).catch((e) => setLive('importance: ' + e));
  }

  function setLive(text) { $('live-status').textContent = text; }

  function connect(index) {
    if (source) source.close();
    current = index;
    setLive('connecting…');
    source = new EventSource(withToken('/api/events/' + index));
    source.addEventListener('snapshot', (ev) => { load(JSON.parse(ev.data)); setLive('live'); });
    source.addEventListener('update', (ev) => { apply(JSON.parse(ev.data)); setLive('live · updated ' + new Date().toLocaleTimeString()); });
    source.addEventListener('lagged', () => connect(index));
    source.onerror = () => setLive('disconnected; reconnecting…');
  }

  function start() {
    const select = $('experiment');
    select.addEventListener('change', () => selectExperiment(Number(select.value)));
    document.querySelectorAll('#tabs button').forEach((b) => b.addEventListener('click', () => show(b.dataset.view)));
    window.addEventListener('resize', () => { ['curves', 'best', 'parallel', 'slice', 'compare', 'timeline', 'lineage'].forEach((v) => dirty.add(v)); scheduleRender(false); });
    buildCurveControls();
    if (CONFIG.live) {
      fetch(withToken('/api/experiments')).then((r) => r.json()).then((list) => {
        experiments = list;
        fillSelect();
        connect(0);
      }).catch((e) => setLive('cannot load: ' + e));
    } else {
      experiments = STATIC.experiments.map((e, i) => ({ index: i, name: e.snapshot.header.name, dir: e.snapshot.header.dir, started_at: e.snapshot.header.started_at }));
      fillSelect();
      selectExperiment(0);
      setLive('report (not live)');
    }
    const hash = location.hash.replace('#', '');
    if (hash) show(hash);
  }

  // The experiment menu: experiments of the same name are told apart by their directory (the
  // part that differs) and start time.
  function experimentLabels(list) {
    const count = new Map();
    for (const e of list) count.set(e.name, (count.get(e.name) || 0) + 1);
    return list.map((e) => {
      if (count.get(e.name) < 2 || !e.dir) return e.name;
      const parts = e.dir.split('/').filter(Boolean);
      const where = parts.length > 1 ? parts.slice(-2).join('/') : e.dir;
      const pad = (n) => String(n).padStart(2, '0');
      const d = new Date(e.started_at * 1000);
      const when = e.started_at ? ', ' + d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + pad(d.getHours()) + ':' + pad(d.getMinutes()) : '';
      return e.name + ' (' + where + when + ')';
    });
  }
  function fillSelect() {
    const select = $('experiment');
    select.textContent = '';
    const labels = experimentLabels(experiments);
    experiments.forEach((e, i) => select.append(el('option', { value: e.index, text: labels[i], title: e.dir || '' })));
    select.style.display = experiments.length > 1 ? '' : 'none';
  }

  function selectExperiment(i) {
    selectedTrial = null;
    pinned.clear();
    hovered = null;
    curveOpts.key = null;
    if (CONFIG.live) connect(i);
    else { current = i; load(STATIC.experiments[i].snapshot, STATIC.experiments[i].importance); }
  }

  function show(name) {
    if (!document.getElementById('view-' + name)) return;
    view = name;
    document.querySelectorAll('#tabs button').forEach((b) => b.classList.toggle('active', b.dataset.view === name));
    document.querySelectorAll('.view').forEach((s) => s.classList.toggle('active', s.id === 'view-' + name));
    history.replaceState(null, '', '#' + name);
    dirty.add(name);
    scheduleRender(true);
  }

  function scheduleRender(now) {
    window.rtuneRenderPending = true;
    if (renderTimer) return;
    renderTimer = setTimeout(() => { renderTimer = null; render(); }, now ? 0 : 200);
  }

  const RENDERERS = {
    trials: renderTrials, curves: renderCurves, best: renderBest, parallel: renderParallel, slice: renderSlice,
    compare: renderCompare, importance: renderImportance, decisions: renderDecisions, timeline: renderTimeline, lineage: renderLineage,
  };

  function render() {
    if (!cur) return;
    renderSummary();
    if (dirty.has(view)) {
      dirty.delete(view);
      try { RENDERERS[view](); } catch (e) { showProblem('cannot draw ' + view + ': ' + e); throw e; }
    }
    $('problems').textContent = cur.problems.length ? 'Lines that could not be read:\n' + cur.problems.slice(-10).join('\n') : '';
    if (firstRender) {
      firstRender = false;
      window.rtuneFirstRenderMs = performance.now();
      document.body.dataset.ready = '1';
    }
    document.body.dataset.points = String(cur.points);
    document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
    window.rtuneRenderPending = renderTimer !== null;
  }
  function showProblem(text) { $('problems').textContent = text; }

  // Re-draw views that show pins after a pin changed.
  function pinsChanged() {
    ['trials', 'compare', 'slice'].forEach((v) => dirty.add(v));
    if (charts.curves) { drawCurveOverlay(); renderCurveLegend(); } else dirty.add('curves');
    scheduleRender(true);
  }
  function togglePin(id) {
    if (pinned.has(id)) pinned.delete(id); else pinned.add(id);
    pinsChanged();
  }

  // ---------- summary
  function bestTrial() {
    let best = null;
    for (const t of cur.trials) {
      if (!t.best) continue;
      if (!best || score(t.best[0]) > score(best.best[0])) best = t;
    }
    return best;
  }
  function renderSummary() {
    const h = cur.header;
    document.title = 'rtune: ' + h.name;
    const errors = cur.trials.filter((t) => t.status === 'ERROR').length;
    const silent = cur.trials.filter((t) => t.silent).length;
    const ended = cur.trials.filter((t) => t.status === 'TERMINATED' || t.status === 'ERROR').length;
    const st = $('exp-status');
    // An experiment whose trials all failed did not simply finish: the badge says so in red.
    const allFailed = errors > 0 && errors === cur.trials.length && ended === cur.trials.length;
    st.textContent = allFailed ? h.status + ': every trial failed' : h.status;
    st.className = 'pill ' + h.status + (errors ? ' with-errors' : '') + (allFailed ? ' failed' : '');
    const err = $('exp-errors');
    err.textContent = errors ? errors + ' of ' + cur.trials.length + ' in ERROR' : '';
    err.dataset.count = String(errors);
    err.style.display = errors ? '' : 'none';
    const sil = $('exp-silent');
    sil.textContent = silent ? silent + ' silent' : '';
    sil.title = 'trials with no report for much longer than their peers';
    sil.style.display = silent ? '' : 'none';
    $('exp-info').textContent = h.name + ' · ' + h.metric + ' (' + h.mode + ') · ' + h.scheduler + ' · ' + h.searcher;
    $('exp-info').title = h.dir;
    const count = $('trial-count');
    count.textContent = String(cur.trials.length) + (h.total_trials ? ' / ' + h.total_trials : '');
    count.dataset.value = String(cur.trials.length);
    const b = bestTrial();
    const bv = $('best-value');
    if (b) {
      bv.textContent = h.metric + ' = ' + fmt(b.best[0]);
      bv.dataset.value = String(b.best[0]);
      $('best-trial').textContent = '(' + b.name + ', iteration ' + b.best[1] + ')';
      $('best-trial').dataset.trial = b.name;
      $('best-trial').dataset.id = String(b.id);
      $('best-trial').dataset.iteration = String(b.best[1]);
    } else {
      bv.textContent = '–';
      delete bv.dataset.value;
      $('best-trial').textContent = '';
    }
  }

  // ---------- trials table and its filters
  function buildFilters() {
    const box = $('filters');
    box.textContent = '';
    const statuses = ['PENDING', 'RUNNING', 'PAUSED', 'TERMINATED', 'ERROR'];
    const fs = el('fieldset', {}, el('legend', { text: 'status' }));
    for (const s of statuses) {
      const cb = el('input', { type: 'checkbox', checked: '', 'data-status': s });
      cb.addEventListener('change', () => {
        filter.statuses = new Set(Array.from(fs.querySelectorAll('input:checked')).map((c) => c.dataset.status));
        filtersChanged();
      });
      fs.append(el('label', {}, cb, ' ' + s + ' '));
    }
    box.append(fs);
    for (const p of cur.header.parameters) {
      const f = el('fieldset', {}, el('legend', { text: p }));
      const axis = paramAxis(p, cur.trials.map((t) => t.params[p]).filter((v) => v !== null && v !== undefined));
      if (axis.kind !== 'categorical') {
        const lo = el('input', { type: 'number', step: 'any', placeholder: 'min', 'data-param': p, 'data-bound': 'min' });
        const hi = el('input', { type: 'number', step: 'any', placeholder: 'max', 'data-param': p, 'data-bound': 'max' });
        const upd = () => {
          filter.ranges[p] = [lo.value === '' ? -Infinity : Number(lo.value), hi.value === '' ? Infinity : Number(hi.value)];
          filtersChanged();
        };
        lo.addEventListener('input', upd);
        hi.addEventListener('input', upd);
        f.append(lo, ' – ', hi);
      } else {
        const sel = el('select', { 'data-param': p }, el('option', { value: '', text: 'any' }));
        for (const v of axis.values) sel.append(el('option', { value: fmtValue(v), text: fmtValue(v) }));
        sel.addEventListener('change', () => { filter.cats[p] = sel.value; filtersChanged(); });
        f.append(sel);
      }
      box.append(f);
    }
  }

  function filtersChanged() {
    ['trials', 'curves', 'parallel', 'slice'].forEach((v) => dirty.add(v));
    scheduleRender(true);
  }

  // The trials the Trials tab's filters let through, and (unless `brushes` is false) inside every
  // brush of the parallel coordinates.
  function filteredTrials(brushes) {
    const brushList = brushes === false ? [] : Object.values(filter.brushes);
    return cur.trials.filter((t) => {
      if (filter.statuses && !filter.statuses.has(t.status)) return false;
      for (const [p, [lo, hi]] of Object.entries(filter.ranges)) {
        const v = t.params[p];
        if (typeof v !== 'number' || v < lo || v > hi) return false;
      }
      for (const [p, c] of Object.entries(filter.cats)) {
        if (c !== '' && fmtValue(t.params[p]) !== c) return false;
      }
      for (const b of brushList) if (!brushHolds(b, t)) return false;
      return true;
    });
  }

  function lastValue(id) {
    const c = cur.curves.get(id);
    if (!c) return null;
    for (let i = c.v.length - 1; i >= 0; i--) if (c.v[i] !== null) return c.v[i];
    return null;
  }

  function renderTrials() {
    const h = cur.header;
    const cols = [
      { key: 'pin', label: 'compare', get: (t) => (pinned.has(t.id) ? 1 : 0) },
      { key: 'id', label: 'trial', get: (t) => t.id, show: (t) => t.name },
      { key: 'status', label: 'status', get: (t) => t.status, show: (t) => t.status + (t.silent ? ' (silent)' : '') },
      { key: 'iteration', label: 'iter', get: (t) => t.iteration, num: true },
      { key: 'best', label: 'best ' + h.metric, get: (t) => (t.best ? t.best[0] : null), num: true },
      { key: 'last', label: 'last ' + h.metric, get: (t) => lastValue(t.id), num: true },
      { key: 'time', label: 'time (s)', get: (t) => t.time_total_s, num: true },
      { key: 'runs', label: 'runs', get: (t) => t.runs, num: true },
      { key: 'failures', label: 'failures', get: (t) => t.failures, num: true },
      { key: 'placement', label: 'placement', get: (t) => (t.placement ? t.placement.label : '') },
    ];
    for (const p of h.parameters) cols.push({ key: 'p:' + p, label: p, get: (t) => t.params[p], num: true, param: true });
    const rows = filteredTrials();
    const col = cols.find((c) => c.key === sort.key) || cols[1];
    rows.sort((a, b) => {
      let x = col.get(a), y = col.get(b);
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      if (typeof x === 'number' && typeof y === 'number') return (x - y) * sort.dir;
      return String(x).localeCompare(String(y)) * sort.dir;
    });
    const best = bestTrial();
    const table = $('trials-table');
    table.textContent = '';
    const head = el('tr');
    for (const c of cols) {
      const th = el('th', { text: c.label, 'data-key': c.key });
      if (c.key === sort.key) th.className = sort.dir > 0 ? 'sorted-asc' : 'sorted-desc';
      th.addEventListener('click', () => {
        sort.dir = sort.key === c.key ? -sort.dir : 1;
        sort.key = c.key;
        dirty.add('trials');
        scheduleRender(true);
      });
      head.append(th);
    }
    table.append(el('thead', {}, head));
    const body = el('tbody');
    for (const t of rows.slice(0, MAX_ROWS)) {
      const tr = el('tr', { class: 'clickable', 'data-trial': t.id });
      if (best && best.id === t.id) tr.classList.add('best');
      if (selectedTrial === t.id) tr.classList.add('selected');
      for (const c of cols) {
        if (c.key === 'pin') {
          const cb = el('input', { type: 'checkbox', class: 'pin', 'data-trial': t.id, title: 'compare this trial (also highlights it on the learning curves)' });
          cb.checked = pinned.has(t.id);
          cb.addEventListener('click', (ev) => { ev.stopPropagation(); togglePin(t.id); });
          tr.append(el('td', {}, cb));
          continue;
        }
        const v = c.show ? c.show(t) : c.get(t);
        const td = el('td', { text: fmtValue(v) });
        if (c.num && typeof v === 'number') td.className = 'num';
        if (c.key === 'status') td.className = 'status-' + t.status + (t.silent ? ' silent' : '');
        tr.append(td);
      }
      tr.addEventListener('click', () => { selectedTrial = t.id; showTrial(t); table.querySelectorAll('tr.selected').forEach((r) => r.classList.remove('selected')); tr.classList.add('selected'); });
      body.append(tr);
    }
    table.append(body);
    const brushed = Object.keys(filter.brushes).length;
    $('trials-note').textContent = rows.length + ' of ' + cur.trials.length + ' trials match the filters' +
      (brushed ? ' and the parallel coordinates\' brushes (' + brushed + ')' : '') +
      (rows.length > MAX_ROWS ? '; the first ' + MAX_ROWS + ' in this order are shown' : '') + '. Click a column to sort; tick trials to compare them.';
    $('trials-note').dataset.count = String(rows.length);
    if (selectedTrial !== null) {
      const t = trialById(selectedTrial);
      if (t) showTrial(t);
    }
  }

  function showTrial(t) {
    const box = $('trial-detail');
    box.textContent = '';
    box.append(el('h3', { text: t.name }));
    const dl = el('div', { class: 'note' });
    dl.textContent = 'status ' + t.status + (t.silent ? ' (silent: no report for much longer than its peers)' : '') + ', iteration ' + t.iteration + (t.placement ? ', ' + t.placement.label : '');
    box.append(dl);
    const params = el('table');
    for (const p of cur.header.parameters) params.append(el('tr', {}, el('td', { text: p }), el('td', { text: fmtValue(t.params[p]) })));
    box.append(params);
    if (t.error) box.append(el('h3', { text: 'error' }), el('pre', { text: t.error }));
    if (!CONFIG.live) {
      box.append(el('p', { class: 'note', text: 'Files: ' + cur.header.dir + '/' + trialName(t.id) + '/' }));
      return;
    }
    const id = t.id;
    fetch(withToken('/api/trial/' + current + '/' + id)).then((r) => r.json()).then((info) => {
      if (selectedTrial !== id) return;
      const links = el('div', { class: 'files' });
      for (const f of info.files) {
        links.append(el('a', { href: withToken('/files/' + current + '/' + id + '/' + f.name), target: '_blank', text: f.name }), ' (' + f.size + ' B)  ');
      }
      box.append(el('h3', { text: 'files' }), links);
      if (info.error && !t.error) box.append(el('h3', { text: 'error.txt' }), el('pre', { text: info.error }));
      box.append(el('h3', { text: 'stderr (tail)' }), el('pre', { class: 'stderr', text: info.stderr_tail || '(empty)' }));
    }).catch((e) => box.append(el('p', { text: 'cannot load the trial\'s files: ' + e })));
  }

  // ---------- learning curves
  function destroy(name) { if (charts[name]) { charts[name].destroy(); delete charts[name]; } }

  // Every reported numeric key, the metric first.
  function curveKeys() {
    const keys = new Set();
    for (const c of cur.curves.values()) for (const [k, col] of Object.entries(c.m || {})) if (!keys.has(k) && col.some((x) => x !== null)) keys.add(k);
    keys.delete(cur.header.metric);
    return [cur.header.metric].concat(Array.from(keys).sort());
  }

  function buildCurveControls() {
    $('curve-key').addEventListener('change', (e) => { curveOpts.key = e.target.value; ['curves', 'compare'].forEach((v) => dirty.add(v)); scheduleRender(true); });
    $('compare-key').addEventListener('change', (e) => { curveOpts.key = e.target.value; ['curves', 'compare'].forEach((v) => dirty.add(v)); scheduleRender(true); });
    $('curve-log').addEventListener('change', (e) => { curveOpts.log = e.target.checked; ['curves', 'compare'].forEach((v) => dirty.add(v)); scheduleRender(true); });
    $('curve-full').addEventListener('change', (e) => { curveOpts.fullRange = e.target.checked; dirty.add('curves'); scheduleRender(true); });
    $('curve-clear-pins').addEventListener('click', () => { pinned.clear(); pinsChanged(); });
    $('curve-compare').addEventListener('click', () => show('compare'));
  }
  function fillKeySelect(select) {
    const keys = curveKeys();
    if (!keys.includes(curveOpts.key)) curveOpts.key = cur.header.metric;
    const want = keys.join('\u0000');
    if (select.dataset.keys !== want) {
      select.textContent = '';
      for (const k of keys) select.append(el('option', { value: k, text: k + (k === cur.header.metric ? ' (the metric)' : '') }));
      select.dataset.keys = want;
    }
    select.value = curveOpts.key;
  }

  // The aligned data of a uPlot chart of `trials`' curves for `key`: x = every iteration reported,
  // one series per trial (the results that count), plus what the marks need.
  function curveData(trials, key, log) {
    const its = new Set();
    const perTrial = [];
    let nonPositive = 0;
    let integer = true;
    for (const t of trials) {
      const c = cur.curves.get(t.id);
      const col = curveColumn(c, key);
      if (!col) continue;
      const keep = counting(c);
      const pts = [];
      for (const k of keep) {
        const v = col[k];
        if (v === null || v === undefined) continue;
        if (log && v <= 0) { nonPositive++; continue; }
        if (!Number.isInteger(v)) integer = false;
        pts.push([c.it[k], v]);
        its.add(c.it[k]);
      }
      if (pts.length) perTrial.push({ t, pts, c, keep });
    }
    const xs = Array.from(its).sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const data = [xs];
    const values = [];
    for (const s of perTrial) {
      const ys = new Array(xs.length).fill(null);
      for (const [x, v] of s.pts) { ys[at.get(x)] = v; values.push(v); }
      data.push(ys);
    }
    return { data, perTrial, xs, values, nonPositive, integer };
  }

  // The value range shown: robust by default (in log space on a log axis), or everything.
  function yRange(values, log, full) {
    const f = log ? Math.log10 : (x) => x, g = log ? (x) => Math.pow(10, x) : (x) => x;
    const tv = values.map(f);
    let r;
    if (full) { let lo = Infinity, hi = -Infinity; for (const x of tv) { if (x < lo) lo = x; if (x > hi) hi = x; } r = Number.isFinite(lo) ? [lo, hi] : null; } else r = robustRange(tv);
    if (!r) return null;
    let [lo, hi] = r;
    if (lo === hi) { const d = Math.abs(lo) * 0.05 || 0.5; lo -= d; hi += d; } else { const pad = (hi - lo) * 0.04; lo -= pad; hi += pad; }
    return [g(lo), g(hi), g(r[0]), g(r[1])];
  }

  const INTEGER_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 1e5, 2e5, 5e5, 1e6];

  // uPlot options shared by the learning curves and the compare view's chart.
  function curveChartOptions(box, series, cd, range, height, withLegend) {
    const yAxis = { label: curveOpts.key + (curveOpts.log ? ' (log)' : ''), size: 76, values: (u, splits) => splits.map(fmt) };
    if (cd.integer && !curveOpts.log) yAxis.incrs = INTEGER_INCRS;
    return {
      width: shownWidth(box), height,
      // A little room at both ends: the first and last points (and their marks) stay inside.
      scales: { x: { time: false, range: (u, min, max) => { const pad = max > min ? (max - min) * 0.02 : 0.5; return [min - pad, max + pad]; } }, y: curveOpts.log ? { distr: 3, range: () => [range[0], range[1]] } : { range: () => [range[0], range[1]] } },
      // training_iteration counts reports: its ticks are whole numbers (never 1.5).
      axes: [{ label: 'training_iteration', incrs: INTEGER_INCRS, values: (u, splits) => (u.rtuneXTicks = splits.map((v) => String(v))) }, yAxis],
      legend: { show: !!withLegend },
      cursor: { points: { show: false }, drag: { x: true, y: false } },
      series,
    };
  }

  function renderCurves() {
    const box = $('curves-chart');
    fillKeySelect($('curve-key'));
    $('curve-log').checked = curveOpts.log;
    $('curve-full').checked = curveOpts.fullRange;
    const trials = filteredTrials().filter((t) => cur.curves.has(t.id));
    destroy('curves');
    box.textContent = '';
    const note = $('curve-note');
    note.textContent = '';
    if (!trials.length) { box.append(el('div', { class: 'empty', text: 'No results yet.' })); renderCurveLegend(); return; }
    const key = curveOpts.key;
    const cd = curveData(trials, key, curveOpts.log);
    if (!cd.perTrial.length) {
      box.append(el('div', { class: 'empty', text: 'No trial reported ' + key + (curveOpts.log ? ' above 0 (a log axis shows positive values only)' : '') + '.' }));
      renderCurveLegend();
      return;
    }
    const range = yRange(cd.values, curveOpts.log, curveOpts.fullRange);
    const best = bestTrial();
    const series = [{}];
    for (const s of cd.perTrial) {
      const isBest = best && best.id === s.t.id;
      series.push({ label: s.t.name, stroke: colour(s.t.id), width: isBest ? 2.2 : 1, points: { show: cd.xs.length < 30 && cd.perTrial.length < 50, size: 3 }, spanGaps: true });
    }
    const outside = cd.values.filter((v) => v < range[2] || v > range[3]).length;
    const opts = curveChartOptions(box, series, cd, range, 480, false);
    opts.hooks = {
      draw: [(u) => drawMarks(u, cd, range)],
      setCursor: [(u) => hoverCurves(u, cd)],
    };
    const chart = new uPlot(opts, cd.data, box);
    chart.rtune = cd;
    charts.curves = chart;
    // The highlight of hovered and pinned trials: a canvas over the plot, redrawn alone.
    const overlay = el('canvas', { class: 'curve-overlay' });
    chart.over.append(overlay);
    chart.rtuneOverlay = overlay;
    const tip = el('div', { id: 'curve-tooltip', class: 'tooltip' });
    tip.style.display = 'none';
    chart.over.append(tip);
    chart.over.addEventListener('mouseleave', () => { hovered = null; tip.style.display = 'none'; drawCurveOverlay(); });
    chart.over.addEventListener('click', () => { if (hovered !== null) togglePin(hovered); });
    drawCurveOverlay();
    renderCurveLegend();
    const parts = [cd.perTrial.length + ' trials, ' + cd.values.length + ' results of ' + key + '.'];
    if (outside) parts.push(outside + ' beyond the range shown (▲▼ at the edge; tick "full range" to see them).');
    if (cd.nonPositive) parts.push(cd.nonPositive + ' values ≤ 0 are not drawn on the log axis.');
    note.textContent = parts.join(' ');
    note.dataset.outside = String(outside);
  }

  // The trial whose line passes nearest the cursor (within 24 px), shown in the tooltip.
  function hoverCurves(u, cd) {
    const idx = u.cursor.idx, top = u.cursor.top, tip = $('curve-tooltip');
    let bestD = 24, found = null;
    if (idx !== null && idx !== undefined && top >= 0) {
      for (let s = 1; s < u.data.length; s++) {
        const v = u.data[s][idx];
        if (v === null || v === undefined) continue;
        const d = Math.abs(u.valToPos(v, 'y') - top);
        if (d < bestD) { bestD = d; found = s; }
      }
    }
    const id = found === null ? null : cd.perTrial[found - 1].t.id;
    if (id !== hovered) { hovered = id; drawCurveOverlay(); }
    if (found === null) { tip.style.display = 'none'; return; }
    const t = cd.perTrial[found - 1].t;
    const x = u.data[0][idx], v = u.data[found][idx];
    tip.textContent = '';
    tip.dataset.trial = String(t.id);
    tip.append(el('b', { text: t.name }), ' ' + t.status + (pinned.has(t.id) ? ' · pinned' : ''), el('br'),
      'training_iteration ' + x + ': ' + curveOpts.key + ' = ' + fmt(v), el('br'));
    for (const p of cur.header.parameters) tip.append(el('span', { class: 'param', text: p + ' = ' + fmtValue(t.params[p]) }), el('br'));
    tip.append(el('span', { class: 'note', text: pinned.has(t.id) ? 'click to unpin' : 'click to pin' }));
    tip.style.display = 'block';
    // Beside the cursor, inside the plot: to its left near the right edge, above it near the
    // bottom.
    const w = u.over.clientWidth, h = u.over.clientHeight;
    const tw = tip.offsetWidth, th = tip.offsetHeight;
    const left = u.cursor.left + 14;
    tip.style.left = (left + tw > w ? Math.max(0, u.cursor.left - tw - 14) : left) + 'px';
    tip.style.top = Math.max(0, Math.min(top - 10, h - th)) + 'px';
  }

  function drawCurveOverlay() {
    const u = charts.curves;
    if (!u || !u.rtuneOverlay) return;
    const canvas = u.rtuneOverlay, dpr = window.devicePixelRatio || 1;
    const w = u.over.clientWidth, h = u.over.clientHeight;
    canvas.width = w * dpr; canvas.height = h * dpr;
    canvas.style.width = w + 'px'; canvas.style.height = h + 'px';
    const ctx = canvas.getContext('2d');
    ctx.scale(dpr, dpr);
    const cd = u.rtune;
    const line = (s, width, stroke) => {
      ctx.strokeStyle = stroke; ctx.lineWidth = width; ctx.beginPath();
      let started = false;
      for (let i = 0; i < u.data[0].length; i++) {
        const v = u.data[s][i];
        if (v === null || v === undefined) continue;
        const x = u.valToPos(u.data[0][i], 'x'), y = u.valToPos(v, 'y');
        if (!started) { ctx.moveTo(x, y); started = true; } else ctx.lineTo(x, y);
      }
      ctx.stroke();
    };
    cd.perTrial.forEach((s, k) => {
      if (pinned.has(s.t.id) && s.t.id !== hovered) line(k + 1, 3, colour(s.t.id));
    });
    const k = cd.perTrial.findIndex((s) => s.t.id === hovered);
    if (k >= 0) { line(k + 1, 5, 'rgba(255,255,255,0.9)'); line(k + 1, 2.6, colour(hovered)); }
  }

  // The legend: pinned trials, then the best ones, each a swatch that pins on click; and the
  // marks the plot uses.
  function renderCurveLegend() {
    const box = $('curve-legend');
    box.textContent = '';
    const u = charts.curves;
    const shown = u ? u.rtune.perTrial.map((s) => s.t) : [];
    const byBest = shown.filter((t) => t.best).sort((a, b) => score(b.best[0]) - score(a.best[0]));
    const list = [];
    for (const t of shown) if (pinned.has(t.id)) list.push(t);
    const room = shown.length <= 20 ? shown.length : 10;
    for (const t of (shown.length <= 20 ? byBest.concat(shown.filter((t) => !t.best)) : byBest)) {
      if (list.length >= Math.max(room, pinned.size)) break;
      if (!list.includes(t)) list.push(t);
    }
    for (const t of list) {
      const item = el('span', { class: 'legend-item' + (pinned.has(t.id) ? ' pinned' : ''), 'data-trial': t.id, title: paramsText(t) + (t.best ? '; best ' + cur.header.metric + ' ' + fmt(t.best[0]) : '') });
      const sw = el('span', { class: 'swatch' });
      sw.style.background = colour(t.id);
      item.append(sw, t.name + (t.best ? ' (' + fmt(t.best[0]) + ')' : ''));
      item.addEventListener('click', () => togglePin(t.id));
      item.addEventListener('mouseenter', () => { hovered = t.id; drawCurveOverlay(); });
      item.addEventListener('mouseleave', () => { hovered = null; drawCurveOverlay(); });
      box.append(item);
    }
    if (shown.length > list.length) box.append(el('span', { class: 'note', text: 'and ' + (shown.length - list.length) + ' more: hover a line for its trial, click it to pin' }));
    $('curve-compare').disabled = pinned.size < 2;
    $('curve-clear-pins').disabled = pinned.size === 0;
  }

  function valueAt(c, keep, key, iteration) {
    const col = curveColumn(c, key);
    if (!col) return null;
    for (let j = keep.length - 1; j >= 0; j--) { const k = keep[j]; if (c.it[k] === iteration) return col[k]; }
    return null;
  }

  // The scheduler's decisions, superseded results and the values beyond the range, on the canvas.
  function drawMarks(u, cd, range) {
    const ctx = u.ctx;
    const dpr = window.devicePixelRatio || 1;
    const key = curveOpts.key, metric = cur.header.metric;
    const inRange = (v) => v >= range[0] && v <= range[1];
    ctx.save();
    const s = 4 * dpr;
    // Values beyond the range: a triangle at the edge, pointing where the value is (one per
    // pixel column and side: thousands of curves may leave the range at the same iteration).
    ctx.fillStyle = '#444';
    const yTop = u.bbox.top, yBottom = u.bbox.top + u.bbox.height;
    const marked = new Set();
    for (const p of cd.perTrial) {
      for (const [x, v] of p.pts) {
        if (v <= range[1] && v >= range[0]) continue;
        const px = Math.round(u.valToPos(x, 'x', true)), up = v > range[1];
        const key = px * 2 + (up ? 1 : 0);
        if (marked.has(key)) continue;
        marked.add(key);
        const py = up ? yTop + 2 * dpr : yBottom - 2 * dpr;
        ctx.beginPath(); ctx.moveTo(px, py); ctx.lineTo(px - s, py + (up ? 1.6 * s : -1.6 * s)); ctx.lineTo(px + s, py + (up ? 1.6 * s : -1.6 * s)); ctx.closePath(); ctx.fill();
      }
    }
    // Superseded results (superseded.json, and in older files the lines a restart replaced):
    // hollow grey circles, not part of any line.
    ctx.strokeStyle = '#888'; ctx.lineWidth = 1.2 * dpr;
    const circle = (x, v) => {
      if (v === null || v === undefined || !inRange(v) || (curveOpts.log && v <= 0)) return 0;
      ctx.beginPath(); ctx.arc(u.valToPos(x, 'x', true), u.valToPos(v, 'y', true), 3 * dpr, 0, 2 * Math.PI); ctx.stroke();
      return 1;
    };
    let superseded = 0;
    for (const p of cd.perTrial) {
      const col = curveColumn(p.c, key);
      if (p.keep.length < p.c.it.length) {
        const kept = new Set(p.keep);
        for (let k = 0; k < p.c.it.length; k++) if (!kept.has(k)) superseded += circle(p.c.it[k], col[k]);
      }
      const sup = cur.superseded.get(p.t.id);
      const scol = curveColumn(sup, key);
      if (scol) for (let k = 0; k < sup.it.length; k++) superseded += circle(sup.it[k], scol[k]);
    }
    u.rtuneSuperseded = superseded;
    const shown = new Map(cd.perTrial.map((p) => [p.t.id, p]));
    // Rung cutoffs are in the metric's units: only on the metric's plot; each rung's latest
    // cutoff (it moves as results arrive).
    const rungs = new Map();
    if (key === metric) {
      for (const d of cur.decisions) {
        const det = d.details || {};
        if (typeof det.rung === 'number' && typeof det.cutoff === 'number') rungs.set(det.rung + ':' + (det.bracket || 0), det);
      }
    }
    ctx.lineWidth = 2.5 * dpr; ctx.strokeStyle = '#111';
    for (const det of rungs.values()) {
      const cutoff = cur.header.mode === 'max' ? det.cutoff : -det.cutoff;
      if (!inRange(cutoff)) continue;
      const x = u.valToPos(det.rung, 'x', true), y = u.valToPos(cutoff, 'y', true);
      ctx.beginPath(); ctx.moveTo(x - 3 * s, y); ctx.lineTo(x + 3 * s, y); ctx.stroke();
    }
    // Many marks: smaller and lighter, so that the curves under them stay visible.
    const marks = cur.decisions.filter((d) => d.action !== 'continue' && shown.has(d.trial));
    const small = marks.length > 100;
    ctx.lineWidth = (small ? 1.2 : 2) * dpr;
    ctx.globalAlpha = small ? 0.6 : 1;
    const m = small ? 0.6 * s : s;
    for (const d of marks) {
      const p = shown.get(d.trial);
      let v = valueAt(p.c, p.keep, key, d.iteration);
      if (v === null || v === undefined || (curveOpts.log && v <= 0)) continue;
      v = Math.min(range[1], Math.max(range[0], v));
      const x = u.valToPos(d.iteration, 'x', true), y = u.valToPos(v, 'y', true);
      if (d.action === 'stop') {
        ctx.strokeStyle = '#dc2626';
        ctx.beginPath(); ctx.moveTo(x - m, y - m); ctx.lineTo(x + m, y + m); ctx.moveTo(x + m, y - m); ctx.lineTo(x - m, y + m); ctx.stroke();
      } else if (d.action === 'pause') {
        ctx.fillStyle = '#f59e0b'; ctx.fillRect(x - m, y - m, 2 * m, 2 * m);
      } else if (d.action === 'exploit') {
        ctx.fillStyle = '#7c3aed';
        ctx.beginPath(); ctx.moveTo(x, y - 1.4 * m); ctx.lineTo(x + 1.4 * m, y); ctx.lineTo(x, y + 1.4 * m); ctx.lineTo(x - 1.4 * m, y); ctx.closePath(); ctx.fill();
      }
    }
    ctx.restore();
  }

  // For the browser tests: where a trial's point is on the page, to move the mouse there.
  window.rtuneCurvePoint = (id, iteration) => {
    const u = charts.curves;
    if (!u) return null;
    const s = u.rtune.perTrial.findIndex((p) => p.t.id === id);
    const i = u.data[0].indexOf(iteration);
    if (s < 0 || i < 0 || u.data[s + 1][i] === null) return null;
    const r = u.over.getBoundingClientRect();
    return { x: r.left + u.valToPos(iteration, 'x'), y: r.top + u.valToPos(u.data[s + 1][i], 'y'), value: u.data[s + 1][i] };
  };
  // For the browser tests: each trial's points as drawn, [[iteration, value], ...] by trial id,
  // and the superseded results marked.
  window.rtuneCurveValues = () => {
    const u = charts.curves;
    if (!u) return null;
    const out = {};
    u.rtune.perTrial.forEach((p) => { out[p.t.id] = p.pts; });
    return { points: out, superseded: u.rtuneSuperseded };
  };
  window.rtuneCurveState = () => {
    const u = charts.curves;
    return u ? { key: curveOpts.key, log: curveOpts.log, distr: u.scales.y.distr, series: u.series.length - 1, range: [u.scales.y.min, u.scales.y.max], xTicks: u.rtuneXTicks, hovered, pinned: Array.from(pinned) } : null;
  };

  // ---------- best so far
  function bestSeries() {
    const pts = [];
    for (const c of cur.curves.values()) for (let k = 0; k < c.v.length; k++) if (c.v[k] !== null && c.ts[k] !== null) pts.push([c.ts[k], c.v[k]]);
    pts.sort((a, b) => a[0] - b[0]);
    const t = [], n = [], vt = [], vn = [];
    let best = null;
    for (let k = 0; k < pts.length; k++) {
      const [ts, v] = pts[k];
      if (best === null || score(v) > score(best)) {
        best = v;
        t.push(Math.max(0, ts - cur.header.started_at)); vt.push(v);
        n.push(k + 1); vn.push(v);
      }
    }
    if (pts.length) {
      const last = pts[pts.length - 1][0];
      const end = cur.header.finished_at || (CONFIG.live && cur.header.status === 'running' ? Math.max(last, Date.now() / 1000) : last);
      t.push(Math.max(0, end - cur.header.started_at)); vt.push(best);
      n.push(pts.length); vn.push(best);
    }
    return { t, vt, n, vn };
  }

  function renderBest() {
    const s = bestSeries();
    const draw = (name, boxId, xs, ys, xlabel, integer) => {
      const box = $(boxId);
      destroy(name);
      box.textContent = '';
      if (!xs.length) { box.append(el('div', { class: 'empty', text: 'No results yet.' })); return; }
      const xAxis = { label: xlabel };
      if (integer) { xAxis.incrs = INTEGER_INCRS; xAxis.values = (u, splits) => splits.map((v) => String(v)); }
      charts[name] = new uPlot({
        width: shownWidth(box), height: 300,
        scales: { x: { time: false } },
        axes: [xAxis, { label: 'best ' + cur.header.metric, size: 70, values: (u, splits) => splits.map(fmt) }],
        legend: { show: false },
        series: [{}, { stroke: '#2563eb', width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: true, size: 5 } }],
      }, [xs, ys], box);
    };
    draw('bestTime', 'best-time-chart', s.t, s.vt, 'seconds since the experiment started', false);
    draw('bestIter', 'best-iter-chart', s.n, s.vn, 'total trial-iterations (results reported, over all trials)', true);
  }

  // ---------- parallel coordinates
  // The axes: one per searched parameter (from the search space), then the objective (each trial's
  // best value, over the robust range).
  function parallelAxes(rows) {
    const axes = cur.header.parameters.map((p) => {
      const a = paramAxis(p, rows.map((t) => t.params[p]).filter((v) => v !== null && v !== undefined));
      a.id = 'p:' + p; a.name = p; a.get = (t) => t.params[p];
      return a;
    });
    const r = robustRange(rows.map((t) => t.best[0])) || [0, 1];
    const obj = numericAxis(r[0], r[1], 'linear', false);
    obj.id = 'objective'; obj.name = cur.header.metric; obj.get = (t) => (t.best ? t.best[0] : null);
    axes.push(obj);
    return axes;
  }
  // Where brush `b` lies on `axis` (0..1 from the bottom), or null when nothing it holds is there.
  function brushSpan(b, axis) {
    if (b.kind === 'set') {
      const us = axis.kind === 'categorical' ? axis.values.filter((v) => b.keys.has(catKey(v))).map(axis.pos) : [];
      if (!us.length) return null;
      const half = 0.5 / axis.values.length;
      return [Math.max(0, Math.min(...us) - half), Math.min(1, Math.max(...us) + half)];
    }
    const lo = Number.isFinite(b.lo) ? axis.pos(b.lo) : 0, hi = Number.isFinite(b.hi) ? axis.pos(b.hi) : 1;
    return lo === null || hi === null ? null : [Math.max(0, lo), Math.min(1, hi)];
  }
  function brushHolds(b, t) {
    const v = b.get(t);
    if (b.kind === 'set') return b.keys.has(catKey(v));
    return finiteNumber(v) && v >= b.lo && v <= b.hi;
  }

  function renderParallel() {
    const box = $('parallel-box');
    const canvas = $('parallel-canvas');
    const overlay = $('parallel-svg');
    const dpr = window.devicePixelRatio || 1;
    const W = shownWidth(box), H = 480;
    canvas.style.width = W + 'px'; canvas.style.height = H + 'px';
    canvas.width = W * dpr; canvas.height = H * dpr;
    overlay.setAttribute('width', W); overlay.setAttribute('height', H);
    overlay.textContent = '';
    const ctx = canvas.getContext('2d');
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, W, H);
    const rows = filteredTrials(false).filter((t) => t.best && Number.isFinite(t.best[0]));
    const noteBox = $('parallel-note');
    if (!rows.length) {
      overlay.append(svg('text', { x: 20, y: 30 }, 'No trial has reported ' + cur.header.metric + ' yet.'));
      noteBox.textContent = '';
      return;
    }
    const axes = parallelAxes(rows);
    const left = 40, right = 120, top = 48, bottom = 24;
    const n = axes.length;
    const spacing = (W - left - right) / Math.max(1, n - 1);
    const axX = (k) => left + k * spacing;
    // Values keep 4 % off the axes' ends: a line at a domain's bound stays clear of the frame.
    const Y = (u) => H - bottom - (0.04 + 0.92 * Math.min(1, Math.max(0, u))) * (H - top - bottom);
    const obj = axes[n - 1];
    const goodness = (v) => { const u = obj.pos(v); return cur.header.mode === 'max' ? u : 1 - u; };
    // Axes under the lines: no line can hide beneath one.
    ctx.strokeStyle = '#94a3b8'; ctx.lineWidth = 1.5;
    for (let k = 0; k < n; k++) { ctx.beginPath(); ctx.moveTo(axX(k), top); ctx.lineTo(axX(k), H - bottom); ctx.stroke(); }
    const brushes = Object.values(filter.brushes);
    const inside = (t) => brushes.every((b) => brushHolds(b, t));
    const path = (t) => {
      ctx.beginPath();
      let started = false;
      axes.forEach((a, k) => {
        const w = a.pos(a.get(t));
        if (w === null) return;
        if (!started) { ctx.moveTo(axX(k), Y(w)); started = true; } else ctx.lineTo(axX(k), Y(w));
      });
      ctx.stroke();
    };
    const many = rows.length > 200;
    ctx.lineWidth = many ? 1 : 1.6;
    // Outside the brushes: light grey context, under everything else.
    ctx.strokeStyle = 'rgba(203,213,225,0.6)';
    const selected = [];
    for (const t of rows) if (inside(t)) selected.push(t); else path(t);
    // Worst first, so that the best lines are on top; darker is better.
    selected.sort((a, b) => score(a.best[0]) - score(b.best[0]));
    ctx.globalAlpha = rows.length > 2000 ? 0.35 : 0.9;
    for (const t of selected) { ctx.strokeStyle = viridis(1 - goodness(t.best[0])); path(t); }
    ctx.globalAlpha = 1;
    for (const t of selected) if (pinned.has(t.id)) { ctx.lineWidth = 3.5; ctx.strokeStyle = '#111'; path(t); }
    // Labels, ticks and brushes on the SVG overlay (the lines' canvas is under it).
    const outside = rows.filter((t) => { const u = obj.pos(t.best[0]); return u < 0 || u > 1; }).length;
    axes.forEach((a, k) => {
      const x = axX(k);
      const g = svg('g', { class: 'pc-axis', 'data-axis': a.id, 'data-scale': a.kind });
      const label = a.name + (a.kind === 'log' ? ' (log)' : '');
      const name = svg('text', { x, y: top - 26, 'text-anchor': 'middle', class: 'pc-name' }, label);
      g.append(name);
      overlay.append(g);
      fitLabel(name, label, x, spacing - 10, W);
      name.append(svg('title', {}, label + (a.kind === 'categorical' ? ' (categories)' : '')));
      let ticks = a.ticks();
      // Never more labels than fit: every k-th category when there are many.
      const rows = Math.max(2, Math.floor((H - top - bottom) / 14));
      if (ticks.length > rows) { const step = Math.ceil(ticks.length / rows); ticks = ticks.filter((_, i) => i % step === 0); }
      for (const [u, text] of ticks) {
        g.append(svg('line', { x1: x - 4, x2: x, y1: Y(u), y2: Y(u), stroke: '#475569' }));
        // A tick label stays short of the next axis's labels.
        const room = Math.max(3, Math.min(14, Math.floor((spacing - 14) / 6.5)));
        g.append(svg('text', { x: x + 5, y: Y(u) + 3.5, class: 'pc-tick' }, text.length > room ? text.slice(0, room - 1) + '…' : text));
      }
      // A brush is kept as values; where it lies is worked out again on the axis as it is now.
      const b = filter.brushes[a.id];
      const span = b ? brushSpan(b, a) : null;
      if (span) g.append(svg('rect', { class: 'pc-brush', x: x - 9, y: Y(span[1]), width: 18, height: Math.max(2, Y(span[0]) - Y(span[1])) }));
      // The hit area for brushing: drag along the axis.
      const hit = svg('rect', { class: 'pc-hit', x: x - 14, y: top - 4, width: 28, height: H - top - bottom + 8 });
      hit.addEventListener('mousedown', (ev) => startBrush(ev, a, x, Y, top, H - bottom));
      g.append(hit);
    });
    // The colour bar: which colour is which value of the objective.
    const barX = axX(n - 1) + 58;
    const defs = svg('defs');
    const grad = svg('linearGradient', { id: 'pc-gradient', x1: 0, y1: 1, x2: 0, y2: 0 });
    for (let i = 0; i <= 8; i++) grad.append(svg('stop', { offset: i / 8, 'stop-color': viridis(1 - (cur.header.mode === 'max' ? i / 8 : 1 - i / 8)) }));
    defs.append(grad);
    overlay.append(defs);
    overlay.append(svg('rect', { x: barX, y: Y(1), width: 14, height: Y(0) - Y(1), fill: 'url(#pc-gradient)', stroke: '#475569', class: 'pc-colourbar' }));
    for (const [u, text] of obj.ticks()) overlay.append(svg('text', { x: barX + 18, y: Y(u) + 3.5, class: 'pc-tick' }, text));
    noteBox.textContent = '';
    const shownCount = selected.length;
    const spaceNote = cur.header.space ? '' : 'No search space (experiment.toml could not be read): numbers on linear axes, anything else as categories. ';
    noteBox.append(el('span', { text: spaceNote + (brushes.length ? shownCount + ' of ' + rows.length + ' trials inside the brushes (the rest grey). ' : rows.length + ' trials. ') +
      'Colour: ' + cur.header.metric + ', darker is better. Drag along an axis to brush a range (it filters the trials table and the other views); click an axis to clear its brush.' +
      (outside ? ' ' + outside + ' trials beyond the ' + cur.header.metric + ' range shown sit at its ends.' : '') }));
    noteBox.dataset.inside = String(shownCount);
    if (brushes.length) noteBox.append(' ', el('button', { text: 'clear brushes', onclick: () => { filter.brushes = {}; filtersChanged(); } }));
    // How close any line comes to an axis's ends, in pixels (for the browser tests).
    let margin = Infinity;
    for (const t of rows) for (const a of axes) { const w = a.pos(a.get(t)); if (w !== null) margin = Math.min(margin, Y(w) - top, H - bottom - Y(w)); }
    canvas.rtuneAxes = { axes, axX, Y, margin };
  }

  // An axis name cut (with "…") to `width` pixels and kept inside the picture: names of
  // neighbouring axes never overlap, the first and last never leave the picture.
  function fitLabel(node, label, x, width, W) {
    let text = label;
    while (node.getComputedTextLength() > width && text.length > 4) {
      text = text.slice(0, -1);
      node.textContent = text + '…';
    }
    const w = node.getComputedTextLength();
    node.setAttribute('x', Math.min(W - 2 - w / 2, Math.max(2 + w / 2, x)));
  }

  // For the browser tests: how many pairs of the parallel coordinates' labels overlap, and how
  // many reach beyond the picture.
  window.rtuneLabelClashes = () => {
    const root = $('parallel-svg').getBoundingClientRect();
    const boxes = Array.from(document.querySelectorAll('#parallel-svg text')).map((t) => t.getBoundingClientRect());
    let overlaps = 0, outside = 0;
    for (let i = 0; i < boxes.length; i++) {
      const a = boxes[i];
      if (a.left < root.left - 0.5 || a.right > root.right + 0.5 || a.top < root.top - 0.5 || a.bottom > root.bottom + 0.5) outside++;
      for (let j = i + 1; j < boxes.length; j++) {
        const b = boxes[j];
        if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) overlaps++;
      }
    }
    return { labels: boxes.length, overlaps, outside };
  };

  function startBrush(ev, axis, x, Y, top, bottom) {
    ev.preventDefault();
    const overlay = $('parallel-svg');
    const r0 = overlay.getBoundingClientRect();
    const y0 = ev.clientY - r0.top;
    const rect = svg('rect', { class: 'pc-brush', x: x - 9, y: y0, width: 18, height: 0 });
    overlay.append(rect);
    const clampY = (y) => Math.min(bottom, Math.max(top, y));
    const move = (e) => {
      const y = clampY(e.clientY - r0.top);
      rect.setAttribute('y', Math.min(clampY(y0), y)); rect.setAttribute('height', Math.abs(y - clampY(y0)));
    };
    const up = (e) => {
      window.removeEventListener('mousemove', move);
      window.removeEventListener('mouseup', up);
      const y1 = clampY(e.clientY - r0.top), ya = clampY(y0);
      if (Math.abs(y1 - ya) < 3) { delete filter.brushes[axis.id]; filtersChanged(); return; }
      const uOf = (y) => ((bottom - y) / (bottom - top) - 0.04) / 0.92;
      const u0 = uOf(Math.max(ya, y1)), u1 = uOf(Math.min(ya, y1));
      const b = { get: axis.get };
      if (axis.kind === 'categorical') {
        b.kind = 'set';
        b.keys = new Set(axis.values.filter((v) => { const u = axis.pos(v); return u >= u0 && u <= u1; }).map(catKey));
      } else {
        b.kind = 'range'; b.lo = axis.value(u0); b.hi = axis.value(u1);
        if (axis.id === 'objective') { if (u0 <= 0) b.lo = -Infinity; if (u1 >= 1) b.hi = Infinity; }
      }
      filter.brushes[axis.id] = b;
      filtersChanged();
    };
    window.addEventListener('mousemove', move);
    window.addEventListener('mouseup', up);
  }

  // For the browser tests: where a value lies on a parallel-coordinates axis, on the page.
  window.rtuneAxisPoint = (axisId, value) => {
    const c = $('parallel-canvas').rtuneAxes;
    if (!c) return null;
    const k = c.axes.findIndex((a) => a.id === axisId);
    if (k < 0) return null;
    const r = $('parallel-svg').getBoundingClientRect();
    const u = c.axes[k].pos(value);
    return u === null ? null : { x: r.left + c.axX(k), y: r.top + c.Y(u) };
  };

  // For the browser tests: the parallel coordinates' axes and brushes.
  window.rtuneParallel = () => {
    const c = $('parallel-canvas').rtuneAxes;
    if (!c) return null;
    const brushes = {};
    for (const [id, b] of Object.entries(filter.brushes)) brushes[id] = b.kind === 'set' ? { values: Array.from(b.keys).map((k) => JSON.parse(k)) } : { lo: b.lo, hi: b.hi };
    // The colours of the lines, and whether the colour bar explains them.
    const colours = new Set(Array.from(document.querySelectorAll('#parallel-svg stop')).map((st) => st.getAttribute('stop-color')));
    return { axes: c.axes.map((a) => ({ id: a.id, kind: a.kind, values: a.values || null, lo: a.lo, hi: a.hi })), brushes, lineMargin: c.margin,
      colourBar: !!document.querySelector('#parallel-svg .pc-colourbar'), colourStops: colours.size };
  };

  // ---------- slice plot: each parameter against the objective
  function renderSlice() {
    const box = $('slice-plots');
    box.textContent = '';
    const rows = filteredTrials().filter((t) => t.best && Number.isFinite(t.best[0]));
    if (!rows.length) { box.append(el('div', { class: 'empty', text: 'No trial has reported ' + cur.header.metric + ' yet.' })); return; }
    const params = cur.header.parameters;
    const r = robustRange(rows.map((t) => t.best[0]));
    const yAxis = numericAxis(r[0], r[1], 'linear', false);
    const perRow = Math.max(1, Math.min(3, params.length));
    const W = Math.floor((shownWidth(box) - 12 * perRow) / perRow), H = 260;
    const left = 60, right = 12, top = 26, bottom = 40;
    const order = rows.slice().sort((a, b) => a.id - b.id);
    const maxId = Math.max(1, ...order.map((t) => t.id));
    for (const p of params) {
      const axis = paramAxis(p, rows.map((t) => t.params[p]).filter((v) => v !== null && v !== undefined));
      const root = svg('svg', { width: W, height: H, class: 'slice', 'data-param': p, 'data-scale': axis.kind });
      const X = (u) => left + (0.03 + 0.94 * u) * (W - left - right);
      const Y = (u) => H - bottom - (0.04 + 0.92 * Math.min(1, Math.max(0, u))) * (H - top - bottom);
      root.append(svg('text', { x: left, y: 16, class: 'pc-name' }, p + ' · ' + (spaceOf(p) ? spaceOf(p).distribution : 'no search space') + (axis.kind === 'log' ? ', log axis' : '')));
      root.append(svg('rect', { x: left, y: top, width: W - left - right, height: H - top - bottom, fill: 'none', stroke: '#cbd5e1' }));
      let xt = axis.ticks();
      const room = Math.max(2, Math.floor((W - left - right) / 60));
      if (xt.length > room) { const step = Math.ceil(xt.length / room); xt = xt.filter((_, i) => i % step === 0); }
      for (const [u, text] of xt) {
        root.append(svg('line', { x1: X(u), x2: X(u), y1: top, y2: H - bottom, stroke: '#f1f5f9' }));
        root.append(svg('text', { x: X(u), y: H - bottom + 14, 'text-anchor': 'middle', class: 'slice-tick' }, text));
      }
      for (const [u, text] of yAxis.ticks()) {
        root.append(svg('line', { x1: left, x2: W - right, y1: Y(u), y2: Y(u), stroke: '#f1f5f9' }));
        root.append(svg('text', { x: left - 4, y: Y(u) + 3.5, 'text-anchor': 'end', class: 'slice-tick' }, text));
      }
      root.append(svg('text', { x: (left + W - right) / 2, y: H - 6, 'text-anchor': 'middle', class: 'slice-tick' }, p));
      root.append(svg('text', { transform: 'translate(12 ' + (top + H - bottom) / 2 + ') rotate(-90)', 'text-anchor': 'middle', class: 'slice-tick' }, 'best ' + cur.header.metric));
      for (const t of order) {
        let u = axis.pos(t.params[p]);
        if (u === null) continue;
        // Categories: spread the points of a category a little (by trial id, so it is stable).
        if (axis.kind === 'categorical') u += (((t.id * 0.6180339887) % 1) - 0.5) * 0.5 / axis.values.length;
        const v = t.best[0], w = yAxis.pos(v);
        const attrs = { fill: viridis(t.id / maxId), 'fill-opacity': 0.8, stroke: pinned.has(t.id) ? '#111' : 'none', 'data-trial': t.id, class: 'slice-dot' };
        // Beyond the range shown: a triangle at the edge, pointing where the value is.
        const dot = w > 1 || w < 0
          ? svg('path', { ...attrs, d: 'M' + X(u) + ',' + Y(w) + (w > 1 ? 'l-4,7h8z' : 'l-4,-7h8z') })
          : svg('circle', { ...attrs, cx: X(u), cy: Y(w), r: pinned.has(t.id) ? 5 : 3.5 });
        dot.append(svg('title', {}, t.name + ': ' + p + ' = ' + fmtValue(t.params[p]) + ', best ' + cur.header.metric + ' = ' + fmt(v) + (w < 0 || w > 1 ? ' (beyond the range shown)' : '')));
        dot.addEventListener('click', () => togglePin(t.id));
        root.append(dot);
      }
      box.append(root);
    }
    $('slice-note').textContent = rows.length + ' trials (the Trials tab\'s filters and the brushes apply): each parameter against the trial\'s best ' +
      cur.header.metric + '; colour: trial number (dark early, yellow late). Click a point to pin its trial.';
  }

  // ---------- compare view: pinned trials side by side
  function renderCompare() {
    const table = $('compare-table'), box = $('compare-chart'), note = $('compare-note');
    table.textContent = ''; box.textContent = '';
    destroy('compare');
    fillKeySelect($('compare-key'));
    const trials = cur.trials.filter((t) => pinned.has(t.id));
    if (trials.length < 2) {
      note.textContent = '';
      box.append(el('div', { class: 'empty', text: 'Pin two or more trials to compare them: tick them in the Trials tab, or click their lines in Learning curves (' + trials.length + ' pinned now).' }));
      return;
    }
    note.textContent = trials.length + ' trials. Rows whose values differ are highlighted.';
    const rows = [
      ['status', (t) => t.status],
      ['best ' + cur.header.metric, (t) => (t.best ? fmt(t.best[0]) + ' @ ' + t.best[1] : '')],
      ['training_iteration', (t) => String(t.iteration)],
      ['runs', (t) => String(t.runs)],
    ].concat(cur.header.parameters.map((p) => [p, (t) => fmtValue(t.params[p]), true]));
    const head = el('tr', {}, el('th', { text: '' }));
    for (const t of trials) {
      const th = el('th', { 'data-trial': t.id });
      const sw = el('span', { class: 'swatch' });
      sw.style.background = colour(t.id);
      th.append(sw, t.name, ' ', el('button', { class: 'unpin', text: '×', title: 'remove from the comparison', onclick: () => togglePin(t.id) }));
      head.append(th);
    }
    table.append(el('thead', {}, head));
    const body = el('tbody');
    for (const [label, get, isParam] of rows) {
      const values = trials.map(get);
      const differs = new Set(values).size > 1;
      const tr = el('tr', { class: (differs ? 'differs' : '') + (isParam ? ' param' : ''), 'data-row': label });
      tr.append(el('th', { text: label }));
      for (const v of values) tr.append(el('td', { text: v }));
      body.append(tr);
    }
    table.append(body);
    const cd = curveData(trials, curveOpts.key, curveOpts.log);
    if (!cd.perTrial.length) { box.append(el('div', { class: 'empty', text: 'None of them reported ' + curveOpts.key + '.' })); return; }
    const range = yRange(cd.values, curveOpts.log, true);
    const series = [{ label: 'training_iteration' }].concat(cd.perTrial.map((s) => ({ label: s.t.name, stroke: colour(s.t.id), width: 2, points: { show: true, size: 4 }, spanGaps: true })));
    charts.compare = new uPlot(curveChartOptions(box, series, cd, range, 360, true), cd.data, box);
    box.dataset.series = String(cd.perTrial.length);
  }

  // ---------- importance
  function renderImportance() {
    const box = $('importance-bars');
    box.textContent = '';
    const imp = cur.importance;
    if (!imp) { box.append(el('div', { class: 'empty', text: 'Needs at least 4 trials with a value of ' + cur.header.metric + '.' })); return; }
    for (const r of imp) {
      const bar = el('div', { class: 'bar' });
      bar.style.width = (100 * r.importance).toFixed(1) + '%';
      box.append(el('div', { class: 'bar-row', 'data-param': r.parameter }, el('span', { text: r.parameter }), el('div', {}, bar), el('span', { text: (100 * r.importance).toFixed(1) + ' %' })));
    }
  }

  // ---------- decisions
  const decisionFilter = { action: '', text: '' };
  function renderDecisions() {
    const f = $('decisions-filters');
    if (!f.childElementCount) {
      const sel = el('select', { id: 'decision-action' });
      for (const a of ['', 'stop', 'pause', 'exploit', 'continue']) sel.append(el('option', { value: a, text: a || 'every action' }));
      sel.addEventListener('change', () => { decisionFilter.action = sel.value; dirty.add('decisions'); scheduleRender(true); });
      const text = el('input', { type: 'search', placeholder: 'trial or reason contains…' });
      text.addEventListener('input', () => { decisionFilter.text = text.value.toLowerCase(); dirty.add('decisions'); scheduleRender(true); });
      f.append(el('label', {}, 'action ', sel), text);
    }
    const rows = cur.decisions.filter((d) => (!decisionFilter.action || d.action === decisionFilter.action) &&
      (!decisionFilter.text || (trialName(d.trial) + ' ' + d.reason).toLowerCase().includes(decisionFilter.text)));
    const table = $('decisions-table');
    table.textContent = '';
    table.append(el('thead', {}, el('tr', {}, ...['time', 'trial', 'iteration', 'action', 'reason'].map((h) => el('th', { text: h })))));
    const body = el('tbody');
    for (let k = rows.length - 1; k >= 0 && rows.length - k <= MAX_ROWS; k--) {
      const d = rows[k];
      const t0 = cur.header.started_at;
      body.append(el('tr', {}, el('td', { text: '+' + (d.time - t0).toFixed(1) + ' s' }), el('td', { text: trialName(d.trial) }),
        el('td', { class: 'num', text: String(d.iteration) }), el('td', { class: 'action-' + d.action, text: d.action + (d.donor ? ' ← ' + trialName(d.donor[0]) + '@' + d.donor[1] : '') }),
        el('td', { text: d.reason, title: d.details ? JSON.stringify(d.details) : '' })));
    }
    table.append(body);
    $('decisions-note').textContent = rows.length + ' decisions, newest first' + (rows.length > MAX_ROWS ? ' (the newest ' + MAX_ROWS + ' shown)' : '') +
      '; ' + cur.continueDecisions + ' plain "keep running" decisions are only counted.';
  }

  // ---------- resource timeline
  // The lane of a run: from its typed placement (src/model.rs `Placement`; the label is display
  // text and never read here). A SLURM job still waiting in the queue is in the queue's lane; a
  // running one on its node(s), with the GPUs when the executor knows their indices.
  function lane(p) {
    if (!p) return 'unplaced';
    if (p.queued) return 'SLURM job queue';
    if (!p.nodes || !p.nodes.length) return p.executor;
    const gpus = p.nodes.flatMap((n) => n.gpus || []);
    return p.nodes.map((n) => n.node).join(' + ') + (gpus.length ? ' · GPU ' + gpus.join(',') : '');
  }
  const samePlacement = (a, b) => JSON.stringify(a) === JSON.stringify(b);

  // One bar per run of a trial (a trial paused and resumed, or restarted after a failure, runs
  // several times, possibly elsewhere): from its RUNNING status to the next status, in the lane
  // of the run's placement (events.jsonl's `placement` events). A queued SLURM job that starts
  // moves its run from the queue's lane to its node's: the bar is split there. Files written
  // before placements were logged per run fall back to the trial's latest placement.
  function timelineBars(last) {
    const byTrial = new Map();
    for (const e of cur.events) {
      if ((e.event !== 'status' && e.event !== 'placement') || e.trial === null || e.trial === undefined) continue;
      if (!byTrial.has(e.trial)) byTrial.set(e.trial, []);
      byTrial.get(e.trial).push(e);
    }
    const latest = new Map(cur.trials.map((t) => [t.id, t.placement]));
    const bars = [];
    for (const [id, evs] of byTrial) {
      // Stable: events of the same time keep the file's order (RUNNING before its placement).
      evs.sort((a, b) => a.time - b.time);
      const perRun = evs.some((e) => e.event === 'placement');
      let open = null;
      let queued = null; // a placement logged before its RUNNING status
      const close = (to, end) => { if (open) { bars.push({ ...open, to, end }); open = null; } };
      for (const e of evs) {
        if (e.event === 'placement') {
          if (!open) { queued = e; continue; }
          if (open.placement === null) { open.placement = e.placement; open.run = e.run; continue; }
          if (samePlacement(e.placement, open.placement)) continue;
          const { from, run } = open;
          close(e.time, 'MOVED');
          open = { id, from: Math.max(from, e.time), placement: e.placement, run: e.run ?? run };
        } else if (e.status === 'RUNNING') {
          if (!open) {
            open = { id, from: e.time, placement: queued ? queued.placement : null, run: queued ? queued.run : null };
            queued = null;
          }
        } else {
          close(e.time, e.status);
        }
      }
      close(last, 'RUNNING');
      if (!perRun) for (let k = bars.length - 1; k >= 0 && bars[k].id === id; k--) bars[k].placement = latest.get(id) || null;
    }
    return bars;
  }

  function renderTimeline() {
    const box = $('timeline');
    box.textContent = '';
    const t0 = cur.header.started_at;
    const last = cur.header.finished_at || cur.events.reduce((m, e) => Math.max(m, e.time), Math.max(t0, CONFIG.live ? Date.now() / 1000 : 0));
    const bars = timelineBars(last);
    if (!bars.length) { box.append(el('div', { class: 'empty', text: 'No trial has started yet.' })); return; }
    const lanes = new Map();
    for (const b of bars.sort((a, b) => a.from - b.from)) {
      const name = lane(b.placement);
      if (!lanes.has(name)) lanes.set(name, []);
      const rows = lanes.get(name);
      let r = rows.findIndex((end) => end <= b.from);
      if (r < 0) { r = rows.length; rows.push(0); }
      rows[r] = b.to;
      b.lane = name; b.row = r;
    }
    const names = Array.from(lanes.keys()).sort();
    const rowH = 14, laneGap = 18, left = 150, W = shownWidth(box), top = 24;
    let y = top;
    const laneY = new Map();
    for (const n of names) { laneY.set(n, y); y += lanes.get(n).length * rowH + laneGap; }
    const H = y + 10;
    const span = Math.max(1e-9, last - t0);
    const X = (t) => left + (t - t0) / span * (W - left - 20);
    const root = svg('svg', { width: W, height: H, 'font-size': 11, 'font-family': 'sans-serif' });
    for (let k = 0; k <= 8; k++) {
      const t = t0 + span * k / 8, x = X(t);
      root.append(svg('line', { x1: x, x2: x, y1: top - 4, y2: H, stroke: '#eee' }), svg('text', { x, y: 14, 'text-anchor': 'middle' }, '+' + (t - t0).toFixed(span < 20 ? 1 : 0) + ' s'));
    }
    for (const n of names) {
      root.append(svg('text', { x: 4, y: laneY.get(n) + 11, 'font-weight': 'bold', 'data-lane': n }, n));
      root.append(svg('line', { x1: 0, x2: W, y1: laneY.get(n) - 4, y2: laneY.get(n) - 4, stroke: '#ccc' }));
    }
    const endColour = { TERMINATED: '#60a5fa', ERROR: '#ef4444', PAUSED: '#f59e0b', RUNNING: '#22c55e', PENDING: '#94a3b8', MOVED: '#cbd5e1' };
    for (const b of bars) {
      const yy = laneY.get(b.lane) + b.row * rowH;
      const attrs = { x: X(b.from), y: yy, width: Math.max(1, X(b.to) - X(b.from)), height: rowH - 2, fill: endColour[b.end] || '#60a5fa', stroke: colour(b.id), 'data-trial': b.id, 'data-lane': b.lane };
      if (b.run !== null && b.run !== undefined) attrs['data-run'] = b.run;
      const r = svg('rect', attrs);
      r.append(svg('title', {}, trialName(b.id) + (b.run !== null && b.run !== undefined ? ' run ' + b.run : '') + ': +' + (b.from - t0).toFixed(1) + ' s to +' + (b.to - t0).toFixed(1) + ' s, then ' + b.end + ' (' + (b.placement ? b.placement.label : 'no placement') + ')'));
      root.append(r);
    }
    box.append(root);
    box.append(el('div', { class: 'note', text: 'One bar per run of a trial, in the lane where that run was placed. Bar colour: how the run ended (blue terminated, amber paused, red error, grey moved from the SLURM queue to its node, green still running).' }));
  }

  // ---------- PBT lineage
  function renderLineage() {
    const graph = $('lineage-graph'), table = $('lineage-table');
    graph.textContent = ''; table.textContent = '';
    if (!cur.lineage.length) { graph.append(el('div', { class: 'empty', text: 'No PBT exploits in this experiment.' })); return; }
    const ids = Array.from(new Set(cur.trials.map((t) => t.id).concat(cur.lineage.flatMap((l) => [l.target, l.donor])))).sort((a, b) => a - b);
    const rowOf = new Map(ids.map((id, i) => [id, i]));
    let maxIt = 1;
    for (const t of cur.trials) maxIt = Math.max(maxIt, t.iteration);
    for (const l of cur.lineage) maxIt = Math.max(maxIt, l.target_iteration, l.donor_iteration + 1);
    const rowH = 26, left = 110, top = 30, W = shownWidth(graph), H = top + ids.length * rowH + 20;
    const X = (it) => left + it / maxIt * (W - left - 40);
    const Y = (id) => top + rowOf.get(id) * rowH;
    const root = svg('svg', { width: W, height: H, 'font-size': 11, 'font-family': 'sans-serif' });
    const defs = svg('defs');
    const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.append(svg('path', { d: 'M0,0L10,5L0,10z', fill: '#7c3aed' }));
    defs.append(marker);
    root.append(defs);
    root.append(svg('text', { x: left, y: 16 }, 'training_iteration →  (arrow: the target restarts from the donor\'s checkpoint with the changed config)'));
    const final = new Map(cur.trials.map((t) => [t.id, t]));
    for (const id of ids) {
      const t = final.get(id);
      root.append(svg('text', { x: 4, y: Y(id) + 4 }, trialName(id)));
      root.append(svg('line', { x1: X(0), x2: X(t ? t.iteration : maxIt), y1: Y(id), y2: Y(id), stroke: colour(id), 'stroke-width': 3, opacity: 0.6 }));
    }
    for (const l of cur.lineage) {
      const x = X(l.donor_iteration);
      const y1 = Y(l.donor), y2 = Y(l.target);
      const p = svg('path', { d: 'M' + x + ',' + y1 + ' C' + (x + 30) + ',' + y1 + ' ' + (x + 30) + ',' + y2 + ' ' + (x + 4) + ',' + y2, fill: 'none', stroke: '#7c3aed', 'stroke-width': 1.5, 'marker-end': 'url(#arrow)' });
      p.append(svg('title', {}, trialName(l.donor) + '@' + l.donor_iteration + ' → ' + trialName(l.target) + ' (gave up iteration ' + l.target_iteration + '): ' + l.change));
      root.append(p);
      root.append(svg('text', { x: x + 34, y: (y1 + y2) / 2, fill: '#5b21b6' }, l.change));
    }
    graph.append(root);
    table.append(el('thead', {}, el('tr', {}, ...['time', 'target', 'donor', 'donor iteration', 'target gave up', 'change', 'config before → after'].map((h) => el('th', { text: h })))));
    const body = el('tbody');
    for (const l of cur.lineage) {
      const diff = [];
      const keys = new Set(Object.keys(l.old_config || {}).concat(Object.keys(l.new_config || {})));
      for (const k of keys) {
        const a = JSON.stringify((l.old_config || {})[k]), b = JSON.stringify((l.new_config || {})[k]);
        if (a !== b) diff.push(k + ': ' + a + ' → ' + b);
      }
      body.append(el('tr', {}, el('td', { text: '+' + (l.time - cur.header.started_at).toFixed(1) + ' s' }), el('td', { text: trialName(l.target) }), el('td', { text: trialName(l.donor) }),
        el('td', { class: 'num', text: String(l.donor_iteration) }), el('td', { class: 'num', text: String(l.target_iteration) }), el('td', { text: l.change }), el('td', { text: diff.join('; ') })));
    }
    table.append(body);
  }

  start();
})();
