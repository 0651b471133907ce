// The rtune dashboard page. Data comes either from the server (`rtune dashboard`: one
// server-sent-events stream per experiment, a snapshot first, then changes) or inlined
// (`rtune report`). Plain JavaScript; charts by uPlot (vendored) and hand-drawn canvas/SVG.
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
  const filter = { statuses: null, ranges: {}, cats: {} };
  let selectedTrial = null;
  const MAX_ROWS = 1000;

  // ---------- helpers
  function withToken(url) {
    return CONFIG.token ? url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(CONFIG.token) : url;
  }
  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return '';
    if (typeof x !== 'number') return String(x);
    if (x === 0) return '0';
    const a = Math.abs(x);
    if (a < 1e-3 || a >= 1e5) return x.toExponential(3);
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
  function colour(id) {
    return 'hsl(' + ((id * 137.508) % 360).toFixed(1) + ',65%,45%)';
  }
  function score(v) { return cur.header.mode === 'max' ? v : -v; }
  function trialName(id) { return 'trial_' + String(id).padStart(5, '0'); }
  function shownWidth(node) { return Math.max(400, (node.clientWidth || document.body.clientWidth || 1000) - 10); }

  // ---------- data
  function load(snapshot, importance) {
    const curves = new Map();
    for (const [k, c] of Object.entries(snapshot.curves)) curves.set(Number(k), c);
    cur = {
      header: snapshot.header,
      trials: snapshot.trials,
      curves: curves,
      decisions: snapshot.decisions,
      continueDecisions: snapshot.continue_decisions,
      events: snapshot.events,
      lineage: snapshot.lineage,
      problems: snapshot.problems,
      importance: importance === undefined ? null : importance,
      points: 0,
    };
    for (const c of curves.values()) cur.points += c.it.length;
    filter.statuses = null;
    filter.ranges = {};
    filter.cats = {};
    buildFilters();
    for (const v of ['trials', 'curves', 'best', 'parallel', 'importance', 'decisions', 'timeline', 'lineage']) dirty.add(v);
    scheduleRender(true);
    if (CONFIG.live) fetchImportance();
  }

  function apply(u) {
    if (!cur) return;
    if (u.reset) { connect(current); return; }
    if (u.header) cur.header = u.header;
    if (u.trials) {
      cur.trials = u.trials;
      ['trials', 'parallel', 'timeline', 'curves'].forEach((v) => dirty.add(v));
      if (CONFIG.live && Date.now() - importanceAt > 10000) fetchImportance();
      else if (CONFIG.live && !importanceTimer) importanceTimer = setTimeout(fetchImportance, 10000);
    }
    if (u.points) {
      for (const [k, p] of Object.entries(u.points)) {
        const id = Number(k);
        cur.points += p.it.length;
        const c = cur.curves.get(id);
        if (!c) { cur.curves.set(id, p); continue; }
        for (const key of ['it', 'v', 't', 'ts']) for (const x of p[key]) c[key].push(x);
      }
      dirty.add('curves'); dirty.add('best');
    }
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
    window.addEventListener('resize', () => { ['curves', 'best', 'parallel', 'timeline', 'lineage'].forEach((v) => dirty.add(v)); scheduleRender(false); });
    if (CONFIG.live) {
      fetch(withToken('/api/experiments')).then((r) => r.json()).then((list) => {
        experiments = list;
        fillSelect();
        connect(0);
      }).catch((e) => setLive('cannot load: ' + e));
    } else {
      experiments = STATIC.experiments.map((e, i) => ({ index: i, name: e.snapshot.header.name }));
      fillSelect();
      selectExperiment(0);
      setLive('report (not live)');
    }
    const hash = location.hash.replace('#', '');
    if (hash) show(hash);
  }

  function fillSelect() {
    const select = $('experiment');
    select.textContent = '';
    for (const e of experiments) select.append(el('option', { value: e.index, text: e.name }));
    select.style.display = experiments.length > 1 ? '' : 'none';
  }

  function selectExperiment(i) {
    selectedTrial = null;
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
    trials: renderTrials, curves: renderCurves, best: renderBest, parallel: renderParallel,
    importance: renderImportance, decisions: renderDecisions, timeline: renderTimeline, lineage: renderLineage,
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
    const st = $('exp-status');
    st.textContent = h.status;
    st.className = 'pill ' + h.status;
    $('exp-info').textContent = h.name + ' · ' + h.metric + ' (' + h.mode + ') · ' + h.scheduler + ' · ' + h.searcher;
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
    } else {
      bv.textContent = '–';
      delete bv.dataset.value;
      $('best-trial').textContent = '';
    }
  }

  // ---------- trials table and its filters
  function paramKinds() {
    const kinds = {};
    for (const p of cur.header.parameters) {
      let numeric = true;
      const cats = new Set();
      for (const t of cur.trials) {
        const v = t.params[p];
        if (v === null || v === undefined) continue;
        if (typeof v !== 'number') numeric = false;
        if (cats.size <= 30) cats.add(fmtValue(v));
      }
      kinds[p] = numeric && cats.size > 6 ? 'numeric' : 'categorical';
      if (kinds[p] === 'categorical') kinds[p + '\u0000cats'] = Array.from(cats).sort();
    }
    return kinds;
  }

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
    const kinds = paramKinds();
    for (const p of cur.header.parameters) {
      const f = el('fieldset', {}, el('legend', { text: p }));
      if (kinds[p] === 'numeric') {
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
        for (const c of kinds[p + '\u0000cats'] || []) sel.append(el('option', { value: c, text: c }));
        sel.addEventListener('change', () => { filter.cats[p] = sel.value; filtersChanged(); });
        f.append(sel);
      }
      box.append(f);
    }
  }

  function filtersChanged() {
    ['trials', 'curves', 'parallel'].forEach((v) => dirty.add(v));
    scheduleRender(true);
  }

  function filteredTrials() {
    return cur.trials.filter((t) => {
      if (filter.statuses && !filter.statuses.has(t.status)) return false;
      for (const [p, [lo, hi]] of Object.entries(filter.ranges)) {
        const v = t.params[p];
        if (typeof v !== 'number' || v < lo || v > hi) return false;
      }
      for (const [p, c] of Object.entries(filter.cats)) {
        if (c !== '' && fmtValue(t.params[p]) !== c) return false;
      }
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
      { key: 'id', label: 'trial', get: (t) => t.id, show: (t) => t.name },
      { key: 'status', label: 'status', get: (t) => t.status },
      { key: 'iteration', label: 'iter', get: (t) => t.iteration, num: true },
      { key: 'best', label: 'best ' + h.metric, get: (t) => (t.best ? t.best[0] : null), num: true },
      { key: 'last', label: 'last ' + h.metric, get: (t) => lastValue(t.id), num: true },
      { key: 'time', label: 'time (s)', get: (t) => t.time_total_s, num: true },
      { key: 'runs', label: 'runs', get: (t) => t.runs, num: true },
      { key: 'failures', label: 'failures', get: (t) => t.failures, num: true },
      { key: 'placement', label: 'placement', get: (t) => t.placement || '' },
    ];
    for (const p of h.parameters) cols.push({ key: 'p:' + p, label: p, get: (t) => t.params[p], num: true, param: true });
    const rows = filteredTrials();
    const col = cols.find((c) => c.key === sort.key) || cols[0];
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
        const v = c.show ? c.show(t) : c.get(t);
        const td = el('td', { text: fmtValue(v) });
        if (c.num && typeof v === 'number') td.className = 'num';
        if (c.key === 'status') td.className = 'status-' + t.status;
        tr.append(td);
      }
      tr.addEventListener('click', () => { selectedTrial = t.id; showTrial(t); table.querySelectorAll('tr.selected').forEach((r) => r.classList.remove('selected')); tr.classList.add('selected'); });
      body.append(tr);
    }
    table.append(body);
    $('trials-note').textContent = rows.length + ' of ' + cur.trials.length + ' trials match the filters' +
      (rows.length > MAX_ROWS ? '; the first ' + MAX_ROWS + ' in this order are shown' : '') + '. Click a column to sort.';
    if (selectedTrial !== null) {
      const t = cur.trials.find((x) => x.id === selectedTrial);
      if (t) showTrial(t);
    }
  }

  function showTrial(t) {
    const box = $('trial-detail');
    box.textContent = '';
    box.append(el('h3', { text: t.name }));
    const dl = el('div', { class: 'note' });
    dl.textContent = 'status ' + t.status + ', iteration ' + t.iteration + (t.placement ? ', ' + t.placement : '');
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

  function renderCurves() {
    const box = $('curves-chart');
    const trials = filteredTrials().filter((t) => cur.curves.has(t.id));
    destroy('curves');
    box.textContent = '';
    if (!trials.length) { box.append(el('div', { class: 'empty', text: 'No results yet.' })); return; }
    let maxIt = 0;
    for (const t of trials) { const c = cur.curves.get(t.id); for (const i of c.it) if (i > maxIt) maxIt = i; }
    const xs = Array.from({ length: maxIt }, (_, i) => i + 1);
    const data = [xs];
    const series = [{}];
    const best = bestTrial();
    for (const t of trials) {
      const c = cur.curves.get(t.id);
      const ys = new Array(maxIt).fill(null);
      // After a PBT exploit a trial's iterations restart lower: the latest value at each wins.
      for (let k = 0; k < c.it.length; k++) if (c.it[k] >= 1 && c.v[k] !== null) ys[c.it[k] - 1] = c.v[k];
      data.push(ys);
      const isBest = best && best.id === t.id;
      series.push({ label: t.name, stroke: colour(t.id), width: isBest ? 2.5 : 1, points: { show: maxIt < 30 && trials.length < 50, size: 3 }, spanGaps: true });
    }
    const shown = new Set(trials.map((t) => t.id));
    const opts = {
      width: shownWidth(box), height: 480,
      scales: { x: { time: false } },
      axes: [{ label: 'training_iteration' }, { label: cur.header.metric, size: 70 }],
      legend: { show: false },
      cursor: { points: { show: false } },
      series: series,
      hooks: { draw: [(u) => drawMarks(u, shown)] },
    };
    charts.curves = new uPlot(opts, data, box);
  }

  function valueAt(id, iteration) {
    const c = cur.curves.get(id);
    if (!c) return null;
    for (let k = c.it.length - 1; k >= 0; k--) if (c.it[k] === iteration && c.v[k] !== null) return c.v[k];
    return null;
  }

  function drawMarks(u, shown) {
    const ctx = u.ctx;
    const dpr = window.devicePixelRatio || 1;
    ctx.save();
    ctx.lineWidth = 2 * dpr;
    const s = 4 * dpr;
    const rungs = new Set();
    for (const d of cur.decisions) {
      if (!shown.has(d.trial)) continue;
      const det = d.details || {};
      if (typeof det.rung === 'number' && typeof det.cutoff === 'number') {
        const key = det.rung + ':' + det.cutoff + ':' + (det.bracket || 0);
        if (!rungs.has(key)) {
          rungs.add(key);
          const cutoff = cur.header.mode === 'max' ? det.cutoff : -det.cutoff;
          const x = u.valToPos(det.rung, 'x', true), y = u.valToPos(cutoff, 'y', true);
          ctx.strokeStyle = '#111';
          ctx.beginPath(); ctx.moveTo(x - 3 * s, y); ctx.lineTo(x + 3 * s, y); ctx.stroke();
        }
      }
      if (d.action === 'continue') continue;
      const v = valueAt(d.trial, d.iteration);
      if (v === null) continue;
      const x = u.valToPos(d.iteration, 'x', true), y = u.valToPos(v, 'y', true);
      if (d.action === 'stop') {
        ctx.strokeStyle = '#dc2626';
        ctx.beginPath(); ctx.moveTo(x - s, y - s); ctx.lineTo(x + s, y + s); ctx.moveTo(x + s, y - s); ctx.lineTo(x - s, y + s); ctx.stroke();
      } else if (d.action === 'pause') {
        ctx.fillStyle = '#f59e0b'; ctx.fillRect(x - s, y - s, 2 * s, 2 * s);
      } else if (d.action === 'exploit') {
        ctx.fillStyle = '#7c3aed';
        ctx.beginPath(); ctx.moveTo(x, y - 1.4 * s); ctx.lineTo(x + 1.4 * s, y); ctx.lineTo(x, y + 1.4 * s); ctx.lineTo(x - 1.4 * s, y); ctx.closePath(); ctx.fill();
      }
    }
    ctx.restore();
  }

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
    const draw = (name, boxId, xs, ys, xlabel) => {
      const box = $(boxId);
      destroy(name);
      box.textContent = '';
      if (!xs.length) { box.append(el('div', { class: 'empty', text: 'No results yet.' })); return; }
      charts[name] = new uPlot({
        width: shownWidth(box), height: 300,
        scales: { x: { time: false } },
        axes: [{ label: xlabel }, { label: 'best ' + cur.header.metric, size: 70 }],
        legend: { show: false },
        series: [{}, { stroke: '#2563eb', width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: true, size: 5 } }],
      }, [xs, ys], box);
    };
    draw('bestTime', 'best-time-chart', s.t, s.vt, 'seconds since the experiment started');
    draw('bestIter', 'best-iter-chart', s.n, s.vn, 'total trial-iterations (results reported, over all trials)');
  }

  // ---------- parallel coordinates
  function renderParallel() {
    const canvas = $('parallel-canvas');
    const dpr = window.devicePixelRatio || 1;
    const W = shownWidth(canvas.parentNode), H = 460;
    canvas.style.width = W + 'px';
    canvas.width = W * dpr; canvas.height = H * dpr;
    const ctx = canvas.getContext('2d');
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, W, H);
    ctx.font = '12px sans-serif';
    const params = cur.header.parameters;
    const rows = filteredTrials().filter((t) => t.best);
    if (!rows.length) { ctx.fillText('No trial has reported ' + cur.header.metric + ' yet.', 20, 30); return; }
    const names = params.concat([cur.header.metric]);
    const left = 60, right = 90, top = 30, bottom = 40;
    const axX = (k) => left + k * (W - left - right) / Math.max(1, names.length - 1);
    const Y = (u) => H - bottom - u * (H - top - bottom);
    const scales = names.map((p, k) => {
      const vals = rows.map((t) => (k === params.length ? t.best[0] : t.params[p]));
      const nums = vals.filter((v) => typeof v === 'number');
      if (nums.length === vals.length && nums.length) {
        let lo = Math.min(...nums), hi = Math.max(...nums);
        const log = lo > 0 && hi / lo > 100;
        const f = log ? Math.log : (x) => x;
        const a = f(lo), b = f(hi), span = b > a ? b - a : 1;
        return { map: (v) => (typeof v === 'number' ? (f(v) - a) / span : null), labels: [[0, fmt(lo)], [1, fmt(hi)], [0.5, log ? fmt(Math.exp((a + b) / 2)) : fmt((lo + hi) / 2)]], log };
      }
      const cats = Array.from(new Set(vals.map(fmtValue))).sort();
      const n = Math.max(1, cats.length - 1);
      return { map: (v) => { const i = cats.indexOf(fmtValue(v)); return i < 0 ? null : (cats.length === 1 ? 0.5 : i / n); }, labels: cats.map((c, i) => [cats.length === 1 ? 0.5 : i / n, c]) };
    });
    const metricScale = scales[params.length];
    ctx.globalAlpha = rows.length > 2000 ? 0.15 : 0.85;
    ctx.lineWidth = rows.length > 200 ? 1 : 1.6;
    const order = rows.slice().sort((a, b) => score(a.best[0]) - score(b.best[0]));
    for (const t of order) {
      const u = metricScale.map(t.best[0]);
      const good = cur.header.mode === 'max' ? u : 1 - u;
      ctx.strokeStyle = 'hsl(' + (200 + 40 * good).toFixed(0) + ',85%,' + (85 - 62 * good).toFixed(0) + '%)';
      ctx.beginPath();
      let started = false;
      names.forEach((p, k) => {
        const w = k === params.length ? u : scales[k].map(t.params[p]);
        if (w === null) return;
        if (!started) { ctx.moveTo(axX(k), Y(w)); started = true; } else ctx.lineTo(axX(k), Y(w));
      });
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    ctx.strokeStyle = '#333'; ctx.fillStyle = '#111';
    names.forEach((p, k) => {
      const x = axX(k);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, H - bottom); ctx.stroke();
      ctx.font = 'bold 12px sans-serif'; ctx.textAlign = 'center';
      ctx.fillText(p + (scales[k].log ? ' (log)' : ''), x, H - bottom + 20);
      ctx.font = '11px sans-serif'; ctx.textAlign = 'left';
      for (const [u, label] of scales[k].labels) ctx.fillText(label, x + 4, Y(u) + 4);
    });
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
  // The lane of a placement: its node(s), and the GPUs when the placement names them (the local
  // executor's `gpu=0,1`; SLURM's `gpus=1` is a count, so a SLURM run's lane is its node). A
  // SLURM job still waiting in the queue (`job 12 PENDING (Resources)`) is in the queue's lane;
  // once it runs (`job 12 n1 cpu=2 gpus=1`), on its node's.
  function lane(placement) {
    if (!placement) return 'unplaced';
    let p = placement;
    const job = p.match(/^job \S+ (.*)$/);
    if (job) {
      if (/^[A-Z_]+ \(/.test(job[1])) return 'SLURM job queue';
      p = job[1];
    }
    const nodes = p.split(' + ').map((part) => part.trim().split(/\s+/)[0]);
    const gpu = p.match(/\bgpu=([\d,]+)/);
    return nodes.join(' + ') + (gpu ? ' · GPU ' + gpu[1] : '');
  }

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
          if (e.placement === open.placement) continue;
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
      root.append(svg('text', { x: 4, y: laneY.get(n) + 11, 'font-weight': 'bold' }, n));
      root.append(svg('line', { x1: 0, x2: W, y1: laneY.get(n) - 4, y2: laneY.get(n) - 4, stroke: '#ccc' }));
    }
    const endColour = { TERMINATED: '#60a5fa', ERROR: '#ef4444', PAUSED: '#f59e0b', RUNNING: '#22c55e', PENDING: '#94a3b8', MOVED: '#cbd5e1' };
    for (const b of bars) {
      const yy = laneY.get(b.lane) + b.row * rowH;
      const attrs = { x: X(b.from), y: yy, width: Math.max(1, X(b.to) - X(b.from)), height: rowH - 2, fill: endColour[b.end] || '#60a5fa', stroke: colour(b.id), 'data-trial': b.id };
      if (b.run !== null && b.run !== undefined) attrs['data-run'] = b.run;
      const r = svg('rect', attrs);
      r.append(svg('title', {}, trialName(b.id) + (b.run !== null && b.run !== undefined ? ' run ' + b.run : '') + ': +' + (b.from - t0).toFixed(1) + ' s to +' + (b.to - t0).toFixed(1) + ' s, then ' + b.end + ' (' + (b.placement || 'no placement') + ')'));
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
