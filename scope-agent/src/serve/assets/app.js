// scope serve — the viewer. Vanilla ES2020, no dependencies, no build step.
//
// Structure: small helpers (DOM, formatting, BigInt time), the API client,
// the router (hash routes like `#/timeline?session=S&tid=T`), then one object
// per view with `init()` (wire events once), `show(params)` (load + render on
// navigation) and `params()` (what to keep in that view's URL).
//
// Times: epoch nanoseconds exceed 2^53, so the server may send them as strings.
// They are parsed to BigInt, and drawing uses Numbers relative to the session
// start ("rel" ns), which are exact for any recording shorter than ~104 days.
'use strict';

/* ------------------------------------------------------------------ DOM */

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const SVG_NS = 'http://www.w3.org/2000/svg';

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  return e;
}
function addKids(e, kids) {
  for (const k of kids.flat(Infinity)) if (k != null && k !== false) e.append(k instanceof Node ? k : String(k));
  return e;
}
/** HTML element: h('td', {class: 'num'}, 'text', child) */
const h = (tag, attrs, ...kids) => addKids(setAttrs(document.createElement(tag), attrs), kids);
/** SVG element. */
const s = (tag, attrs, ...kids) => addKids(setAttrs(document.createElementNS(SVG_NS, tag), attrs), kids);

/* ----------------------------------------------------------- formatting */

const UNITS = [['ns', 1], ['µs', 1e3], ['ms', 1e6], ['s', 1e9]];

/** A number with 3 significant digits and no exponent: 1.23, 12.3, 123, 1230. */
function sig3(x) {
  if (x === 0) return '0';
  const digits = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(x))));
  return x.toFixed(Math.min(digits, 6));
}

/** Duration in ns → "1.23 ms". Accepts numbers and decimal strings; null → "—". */
function fmtDur(ns) {
  if (ns == null || ns === '') return '—';
  const n = Number(ns);
  if (!Number.isFinite(n)) return '—';
  const v = Math.abs(n);
  let u = 0;
  while (u < UNITS.length - 1 && Number((v / UNITS[u][1]).toPrecision(3)) >= 1000) u++;
  const x = Number((v / UNITS[u][1]).toPrecision(3));
  return (n < 0 ? '−' : '') + (u === 0 && Number.isInteger(x) ? String(x) : sig3(x)) + ' ' + UNITS[u][0]; // whole ns stay whole
}

/** An integer count with thousands separators; exact for big decimal strings. */
function fmtCount(n) {
  if (n == null || n === '') return '—';
  try { return BigInt(n).toLocaleString('en-US'); } catch { return Number(n).toLocaleString('en-US'); }
}

/** 1234567 → "1.23M" for tight spaces (chart labels). */
function fmtCompact(n) {
  const v = Number(n);
  const a = Math.abs(v);
  if (a < 1e3) return String(Math.round(v * 100) / 100);
  for (const [suf, k] of [['k', 1e3], ['M', 1e6], ['G', 1e9], ['T', 1e12]]) {
    if (a < k * 1000 || suf === 'T') return sig3(Number((v / k).toPrecision(3))) + suf;
  }
  return String(v);
}

/** Tick label for an offset `ns` on an axis whose ticks are `step` apart: enough decimals to tell ticks apart. */
function fmtTick(ns, step, unitOf) {
  let u = 0;
  while (u < UNITS.length - 1 && Math.abs(unitOf) >= UNITS[u + 1][1]) u++;
  const k = UNITS[u][1];
  const digits = Math.max(0, Math.min(9, Math.ceil(-Math.log10(step / k) - 1e-9)));
  return (ns / k).toFixed(digits) + ' ' + UNITS[u][0];
}

/** Offset from the session start: "+1.23 ms", "−0.5 ms". */
const fmtOffset = (ns) => (Number(ns) < 0 ? '' : '+') + fmtDur(ns);

const plural = (n, one, many = one + 's') => `${fmtCount(n)} ${Number(n) === 1 ? one : many}`;

/** Epoch ns (BigInt) → "2024-06-11 14:03:22" in local time. */
function fmtWallClock(ns) {
  const d = new Date(Number(ns / 1000000n));
  const p = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Stable colour per function name (FNV-1a hash → pastel HSL), readable with dark text. */
const colorCache = new Map();
function colorFor(name) {
  let c = colorCache.get(name);
  if (c) return c;
  let x = 2166136261;
  for (let i = 0; i < name.length; i++) { x ^= name.charCodeAt(i); x = Math.imul(x, 16777619); }
  x >>>= 0;
  c = `hsl(${x % 360}, ${48 + ((x >>> 9) % 22)}%, ${70 + ((x >>> 17) % 10)}%)`;
  colorCache.set(name, c);
  return c;
}

/** Truncates `text` to fit `px` pixels of 11px sans text; null when not even 3 chars fit. */
let charW = 0;
function fitLabel(text, px) {
  if (!charW) {
    const ctx = document.createElement('canvas').getContext('2d');
    ctx.font = `11px ${getComputedStyle(document.body).fontFamily}`;
    const sample = 'parse_record_field_hash_map';
    charW = (ctx && ctx.measureText(sample).width / sample.length) || 6.2;
  }
  const max = Math.floor((px - 6) / charW);
  if (max >= text.length) return text;
  return max >= 3 ? text.slice(0, max - 1) + '…' : null;
}

/* ------------------------------------------------------- time and ids */

/** JSON number or decimal string → BigInt (null stays null). */
const big = (v) => (v == null ? null : typeof v === 'bigint' ? v : BigInt(typeof v === 'number' ? Math.round(v) : v));
/** Epoch ns → Number of ns since the session start. */
const rel = (v) => Number(big(v) - state.origin);
/** ns since the session start → epoch ns as a decimal string for the API. */
const abs = (r) => (state.origin + BigInt(Math.round(r))).toString();
const idStr = (v) => (v == null ? '' : String(v));

/* ---------------------------------------------------------- state + API */

const TOKEN = new URLSearchParams(location.search).get('token') || '';
const AUTH_MSG = 'The token in the URL is missing or wrong; use the URL serve printed.';

const state = {
  sessions: [],
  session: null, // the selected session object from /api/sessions
  origin: 0n, // its start_ns as BigInt
  cache: new Map(), // per-session promises: functions, threads, findings
  view: null,
};
const sid = () => state.session.session_id;

// One counter drives both the top-bar spinner and body[data-ready]: it counts
// requests in flight, scheduled (debounced) requests and renders in progress.
let pending = 0;
function busy(delta) {
  pending = Math.max(0, pending + delta);
  document.body.dataset.ready = pending > 0 ? '0' : '1';
  $('#loading').hidden = pending === 0;
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

/** GET (or POST when `body` is given) a JSON API path; throws ApiError with the server's message. */
async function api(path, params, body) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v != null && v !== '') url.searchParams.set(k, String(v));
  const init = { headers: { 'X-Scope-Token': TOKEN } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  busy(+1);
  try {
    let res;
    try {
      res = await fetch(url, init);
    } catch (e) {
      throw new ApiError(`Cannot reach the scope server (${e.message}). Is scope serve still running?`, 0);
    }
    if (res.status === 401 || res.status === 403) throw new ApiError(AUTH_MSG, res.status);
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch {
      if (res.ok) throw new ApiError(`${url.pathname}: the server sent invalid JSON`, res.status);
    }
    if (!res.ok) {
      const msg = data && data.error ? data.error : `HTTP ${res.status} ${res.statusText}`;
      throw new ApiError(`${msg} (${url.pathname})`, res.status);
    }
    return data;
  } finally {
    busy(-1);
  }
}

/** Caches a per-session loader's promise (dropped again when it fails). */
function cached(key, load) {
  const k = `${sid()}|${key}`;
  if (!state.cache.has(k)) {
    const p = load();
    state.cache.set(k, p);
    p.catch(() => state.cache.delete(k));
  }
  return state.cache.get(k);
}
const getFunctions = () => cached('functions', () => api('/api/functions', { session: sid() }).then((d) => d.rows || []));
const getThreads = () => cached('threads', () => api('/api/threads', { session: sid() }).then((d) => d.threads || []));
const getFindings = () => cached('findings', () => api('/api/findings', { session: sid() }).then((d) => d.findings || []));

/** Returns a function that hands out tokens; a token is "current" until the next one is taken. */
function latest() {
  let n = 0;
  return () => { const mine = ++n; return () => mine === n; };
}

function showError(err) {
  const msg = err instanceof Error ? err.message : String(err);
  console.error('scope:', err);
  $('#error-text').textContent = msg;
  $('#error').hidden = false;
}
const clearError = () => { $('#error').hidden = true; };

/* -------------------------------------------------------------- tooltip */

// Elements that show a tooltip map to a function producing [title, [[label, value], ...]].
const tipFor = new WeakMap();

function showTip(ev, title, rows) {
  const t = $('#tooltip');
  t.replaceChildren(h('div', { class: 'tip-title' }, title),
    ...rows.filter(Boolean).map(([k, v]) => h('div', { class: 'tip-row' }, h('span', { class: 'muted' }, k), h('span', { class: 'mono' }, v))));
  t.hidden = false;
  const pad = 14;
  const { innerWidth: W, innerHeight: H } = window;
  const r = t.getBoundingClientRect();
  let x = ev.clientX + pad, y = ev.clientY + pad;
  if (x + r.width > W - 4) x = ev.clientX - r.width - pad;
  if (y + r.height > H - 4) y = ev.clientY - r.height - pad;
  t.style.left = `${Math.max(4, x)}px`;
  t.style.top = `${Math.max(4, y)}px`;
}
const hideTip = () => { $('#tooltip').hidden = true; };

/** Delegated hover tooltips for every element registered in tipFor below `root`. */
function hoverTips(root) {
  root.addEventListener('mousemove', (ev) => {
    let e = ev.target;
    while (e && e !== root && !tipFor.has(e)) e = e.parentNode;
    const f = e && tipFor.get(e);
    if (!f) return hideTip();
    const [title, rows] = f();
    showTip(ev, title, rows);
  });
  root.addEventListener('mouseleave', hideTip);
}

/* --------------------------------------------------------------- router */

const VIEWS = {};

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const q = raw.indexOf('?');
  const name = q < 0 ? raw : raw.slice(0, q);
  return { view: VIEWS[name] ? name : 'timeline', params: new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)) };
}

function hashFor(view, params) {
  const p = new URLSearchParams();
  if (state.session) p.set('session', sid());
  for (const [k, v] of Object.entries(params || {})) if (v != null && v !== '') p.set(k, String(v));
  return `#/${view}?${p}`;
}

/** Navigates (adds a history entry; the hashchange listener renders). */
function go(view, params) {
  const target = hashFor(view, params);
  if (location.hash === target) route(); else location.hash = target;
}

/** Records a view's state in the URL without a navigation (zoom, selection). */
function replaceHash(view, params) {
  history.replaceState(null, '', hashFor(view, params));
  updateTabs();
}

function updateTabs() {
  for (const a of $$('#tabs a')) {
    const v = VIEWS[a.dataset.view];
    a.classList.toggle('active', a.dataset.view === state.view);
    a.href = hashFor(a.dataset.view, v.params ? v.params() : {});
  }
}

let routeSeq = 0;
async function route() {
  const { view, params } = parseHash();
  const seq = ++routeSeq;
  clearError();
  hideTip();
  busy(+1);
  try {
    const want = params.get('session');
    if (want && (!state.session || want !== sid())) {
      const found = state.sessions.find((x) => x.session_id === want);
      if (found) selectSession(found);
      else showError(`There is no session ${want}; showing the newest one.`);
    }
    if (!state.session) return;
    state.view = view;
    for (const sec of $$('main > .view')) sec.hidden = sec.id !== `view-${view}`;
    updateTabs();
    await VIEWS[view].show(params, () => seq === routeSeq);
    if (seq === routeSeq) replaceHash(view, VIEWS[view].params()); // canonical URL for what is shown
  } catch (e) {
    showError(e);
  } finally {
    busy(-1);
  }
}

function selectSession(sess) {
  state.session = sess;
  state.origin = big(sess.start_ns);
  $('#session-picker').value = sess.session_id;
  const dur = Number(big(sess.end_ns) - state.origin);
  const meta = $('#session-meta');
  // Counts the server did not send (a session still recording has no `threads` yet) are left out.
  const parts = [h('span', { class: 'mono', title: sess.command }, `pid ${sess.pid}`),
    sess.calls != null && plural(sess.calls, 'call'), sess.threads != null && plural(sess.threads, 'thread'),
    h('span', { class: 'mono' }, fmtDur(dur))].filter(Boolean);
  meta.replaceChildren(...parts.flatMap((p, i) => (i ? [' · ', p] : [p])));
  meta.title = sess.command;
  for (const v of Object.values(VIEWS)) if (v.reset) v.reset();
  // The findings count on the tab; a failure shows up when the tab is opened.
  const badge = $('#findings-count');
  badge.hidden = true;
  getFindings().then((f) => {
    if (state.session !== sess) return;
    badge.textContent = f.length;
    badge.hidden = f.length === 0;
  }, () => {});
}

/* ============================================================ TIMELINE */

const LANE_H = 22, AXIS_H = 22, STRIP_H = 8;
const LANES_TOP = AXIS_H + 2 * STRIP_H + 4;

VIEWS.timeline = {
  tid: null, thread: null,
  full: [0, 1], // the thread's extent (rel ns)
  view: null, // [from, to] visible (rel ns)
  data: null, // last /api/timeline answer, normalised
  sel: null, // {at, frames}
  seq: latest(), stackSeq: latest(), timer: null,
  drag: null,

  reset() { this.tid = null; this.thread = null; this.view = null; this.data = null; this.sel = null; },

  params() {
    if (this.tid == null) return {};
    return this.view ? { tid: this.tid, from: abs(this.view[0]), to: abs(this.view[1]) } : { tid: this.tid };
  },

  init() {
    const svg = $('#timeline-svg');
    $('#thread-picker').addEventListener('change', (e) => go('timeline', { tid: e.target.value }));
    $('#zoom-in').addEventListener('click', () => this.zoomAt(0.5, 0.5));
    $('#zoom-out').addEventListener('click', () => this.zoomAt(0.5, 2));
    $('#zoom-reset').addEventListener('click', () => this.setView(this.padded(this.full)));
    svg.addEventListener('wheel', (e) => {
      e.preventDefault(); // also stops ctrl+wheel from zooming the page
      if (!this.view) return;
      const r = svg.getBoundingClientRect();
      const unit = e.deltaMode === 1 ? 30 : e.deltaMode === 2 ? r.height : 1;
      if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
        this.panPx((e.deltaX || e.deltaY) * unit);
      } else {
        this.zoomAt((e.clientX - r.left) / r.width, Math.exp(e.deltaY * unit * 0.002));
      }
    }, { passive: false });
    // Drag pans; a press without movement is a click (stack at that time).
    svg.addEventListener('mousedown', (e) => {
      if (e.button !== 0 || !this.view) return;
      e.preventDefault();
      this.drag = { x0: e.clientX, y0: e.clientY, view0: this.view.slice(), moved: false };
      svg.classList.add('dragging');
    });
    window.addEventListener('mousemove', (e) => {
      const d = this.drag;
      if (!d) return;
      const dx = e.clientX - d.x0;
      if (!d.moved && Math.abs(dx) < 4) return;
      d.moved = true;
      hideTip();
      const k = (d.view0[1] - d.view0[0]) / this.width();
      this.setView([d.view0[0] - dx * k, d.view0[1] - dx * k]);
    });
    window.addEventListener('mouseup', (e) => {
      const d = this.drag;
      if (!d) return;
      this.drag = null;
      svg.classList.remove('dragging');
      if (d.moved) return;
      const r = svg.getBoundingClientRect();
      if (e.clientY - r.top < AXIS_H) return; // clicks on the axis do nothing
      const [f, t] = this.view;
      this.loadStack(f + ((e.clientX - r.left) / r.width) * (t - f));
    });
    hoverTips(svg);
    $('#stack').addEventListener('click', (e) => {
      const li = e.target.closest('li[data-call-id]');
      const fr = li && this.sel && this.sel.frames.find((x) => idStr(x.call_id) === li.dataset.callId);
      if (!fr) return;
      const s0 = rel(fr.start_ns);
      const s1 = fr.duration_ns == null ? this.full[1] : s0 + Number(fr.duration_ns);
      this.setView(this.padded([s0, s1]));
    });
    document.addEventListener('keydown', (e) => {
      if (state.view !== 'timeline' || e.ctrlKey || e.metaKey || e.altKey || !this.view) return;
      if (/^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
      const act = { '+': () => this.zoomAt(0.5, 0.5), '=': () => this.zoomAt(0.5, 0.5), '-': () => this.zoomAt(0.5, 2),
        '0': () => this.setView(this.padded(this.full)), ArrowLeft: () => this.panPx(-this.width() / 8),
        ArrowRight: () => this.panPx(this.width() / 8) }[e.key];
      if (act) { e.preventDefault(); act(); }
    });
    let lastW = 0;
    new ResizeObserver(() => {
      const w = this.width();
      if (state.view !== 'timeline' || !this.view || w === lastW || w === 0) return;
      lastW = w;
      this.draw();
      this.schedule();
    }).observe($('#timeline-wrap'));
  },

  async show(params, isCurrent) {
    const threads = await getThreads();
    if (!isCurrent()) return;
    const picker = $('#thread-picker');
    picker.replaceChildren(...threads.map((t) => h('option', { value: t.tid }, `${t.tid} — ${plural(t.calls, 'call')}`)));
    if (!threads.length) {
      $('#timeline-svg').replaceChildren();
      this.status('This session recorded no threads.');
      return;
    }
    const busiest = threads.reduce((a, b) => (Number(b.calls) > Number(a.calls) ? b : a));
    const want = params.get('tid') || (this.tid != null ? String(this.tid) : String(busiest.tid));
    const thread = threads.find((t) => String(t.tid) === want);
    if (!thread) throw new ApiError(`There is no thread ${want} in this session.`);
    const changed = String(this.tid) !== String(thread.tid);
    this.tid = thread.tid;
    this.thread = thread;
    picker.value = String(thread.tid);
    this.full = [rel(thread.start_ns), rel(thread.end_ns)];
    if (params.get('from') && params.get('to')) {
      const v = [rel(params.get('from')), rel(params.get('to'))];
      if (v[1] > v[0]) this.view = v;
    } else if (changed || !this.view) {
      this.view = this.padded(this.full);
    }
    if (changed) { this.data = null; this.sel = null; this.renderStack(); }
    replaceHash('timeline', this.params());
    this.draw();
    await this.fetch();
  },

  width() { return Math.max(1, Math.floor($('#timeline-wrap').clientWidth)); },
  padded([a, b]) { const p = Math.max((b - a) * 0.02, 500); return [a - p, b + p]; },
  status(msg) { $('#timeline-status').textContent = msg; },

  /** Sets the visible range (clamped), redraws from the data at hand and schedules a fetch. */
  setView([f, t]) {
    const [a, b] = this.padded(this.full);
    const span = Math.min(Math.max(t - f, 1000), b - a); // at least 1 µs, at most everything
    f = Math.min(Math.max(f, a), b - span);
    this.view = [f, f + span];
    this.draw();
    this.schedule();
  },
  zoomAt(frac, factor) {
    const [f, t] = this.view;
    const at = f + frac * (t - f);
    const span = (t - f) * factor;
    this.setView([at - frac * span, at - frac * span + span]);
  },
  panPx(px) {
    const [f, t] = this.view;
    const d = (px * (t - f)) / this.width();
    this.setView([f + d, t + d]);
  },

  /** Debounced (100 ms) re-request of the visible range; counts as pending for data-ready. */
  schedule() {
    if (this.timer) clearTimeout(this.timer); else busy(+1);
    this.timer = setTimeout(() => {
      this.timer = null;
      replaceHash('timeline', this.params());
      this.fetch();
      busy(-1);
    }, 100);
  },

  async fetch() {
    const isCurrent = this.seq();
    const [f, t] = this.view;
    this.status('loading…');
    $('#timeline-wrap').classList.add('loading');
    try {
      const d = await api('/api/timeline', { session: sid(), tid: this.tid, from: abs(f), to: abs(t), width: this.width() });
      if (!isCurrent()) return;
      const endRel = rel(state.session.end_ns);
      this.data = {
        bars: (d.bars || []).map((b) => {
          const s0 = rel(b.start_ns);
          const open = b.duration_ns == null;
          return { ...b, s: s0, e: open ? Math.max(endRel, this.full[1]) : s0 + Number(b.duration_ns), open, depth: Number(b.depth) };
        }),
        hidden: (d.hidden || []).map((x) => ({ ...x, s: rel(x.start_ns), e: rel(x.end_ns), depth: Number(x.depth) })),
        losses: (d.losses || []).map((x) => ({ ...x, s: rel(x.start_ns), e: rel(x.end_ns) })),
        windows: (d.windows || []).map((x) => ({ s: rel(x.start_ns), e: rel(x.end_ns) })),
      };
      // What the server drew, for scripts and tests: the range and the
      // shortest call drawn one by one (narrower ones are in grey bands).
      const svgEl = $('#timeline-svg');
      svgEl.dataset.fromNs = String(d.from_ns);
      svgEl.dataset.toNs = String(d.to_ns);
      svgEl.dataset.minNs = String(d.min_ns);
      svgEl.dataset.tid = String(d.tid);
      this.draw();
      const n = this.data;
      this.status(`${plural(n.bars.length, 'call')} drawn` + (n.hidden.length
        ? ` · ${plural(n.hidden.reduce((a, x) => a + Number(x.calls || 0), 0), 'narrower call')} merged into grey bands` : '')
        + (n.losses.length ? ` · ${plural(n.losses.reduce((a, x) => a + Number(x.lost || 0), 0), 'event')} lost here` : ''));
    } catch (e) {
      if (isCurrent()) { this.status('failed to load this range'); showError(e); }
    } finally {
      if (isCurrent()) $('#timeline-wrap').classList.remove('loading');
    }
  },

  /** Redraws the whole SVG from this.data and this.view (cheap: the server sends ≲ a few bars per pixel). */
  draw() {
    const svg = $('#timeline-svg');
    if (!this.view) return;
    const W = this.width();
    const d = this.data || { bars: [], hidden: [], losses: [], windows: [] };
    let maxDepth = Number(this.thread ? this.thread.max_depth : 0) || 0;
    for (const b of d.bars) maxDepth = Math.max(maxDepth, b.depth);
    const lanes = maxDepth + 1;
    const H = LANES_TOP + lanes * LANE_H + 6;
    setAttrs(svg, { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    const [f, t] = this.view;
    const k = W / (t - f);
    const X = (ns) => (ns - f) * k;
    const clipX = (x) => Math.max(-2, Math.min(W + 2, x));
    const g = document.createDocumentFragment();

    for (let i = 0; i < lanes; i++) {
      g.append(s('rect', { class: `lane${i % 2 ? ' odd' : ''}`, x: 0, y: LANES_TOP + i * LANE_H, width: W, height: LANE_H, 'data-depth': i }));
    }
    // Axis: ticks at 1-2-5 steps, labelled as offsets from the session start.
    const raw = (t - f) / Math.max(2, W / 120);
    const p10 = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * p10).find((x) => x >= raw);
    g.append(s('rect', { class: 'axis-bg', x: 0, y: 0, width: W, height: AXIS_H }));
    for (let x = Math.ceil(f / step) * step; x <= t; x += step) {
      const px = Math.round(X(x)) + 0.5;
      g.append(s('line', { class: 'grid', x1: px, x2: px, y1: AXIS_H - 5, y2: H }));
      g.append(s('text', { class: 'tick', x: px + 3, y: 14 }, fmtTick(x, step, Math.max(Math.abs(f), Math.abs(t)))));
    }
    // Strips: governor sampling windows and dropped events.
    const yWin = AXIS_H + 2, yLoss = AXIS_H + 2 + STRIP_H;
    g.append(s('rect', { class: 'strip', x: 0, y: yWin, width: W, height: 2 * STRIP_H }));
    for (const w of d.windows) {
      const el = s('rect', { class: 'window', x: clipX(X(w.s)), y: yWin, width: Math.max(1, clipX(X(w.e)) - clipX(X(w.s))), height: STRIP_H });
      tipFor.set(el, () => ['governor sampling window', [['from', `${fmtOffset(w.s)}`], ['length', fmtDur(w.e - w.s)]]]);
      g.append(el);
    }
    for (const l of d.losses) {
      const x = clipX(X(l.s));
      const el = s('rect', { class: 'loss', x: x - 1, y: yLoss, width: Math.max(3, clipX(X(l.e)) - x), height: STRIP_H });
      tipFor.set(el, () => [`${plural(l.lost, 'event')} lost`, [['at', `${fmtOffset(l.s)}`], ['for', fmtDur(l.e - l.s)],
        ['why', 'the kernel ring buffer was full']]]);
      g.append(el);
    }
    // Runs of calls narrower than a pixel, merged by the server.
    for (const x of d.hidden) {
      const el = s('rect', { class: 'hidden-band', x: clipX(X(x.s)), y: LANES_TOP + x.depth * LANE_H + 4,
        width: Math.max(1, clipX(X(x.e)) - clipX(X(x.s))), height: LANE_H - 8, 'data-depth': x.depth });
      tipFor.set(el, () => [`${plural(x.calls, 'call')} too short to draw`, [['depth', x.depth], ['span', fmtDur(x.e - x.s)], ['', 'zoom in to see them']]]);
      g.append(el);
    }
    // Calls.
    const selected = new Set(this.sel ? this.sel.frames.map((fr) => idStr(fr.call_id)) : []);
    for (const b of d.bars) {
      if (b.e < f || b.s > t) continue;
      const x0 = clipX(X(b.s)), x1 = clipX(X(b.e));
      const w = Math.max(1, x1 - x0);
      const y = LANES_TOP + b.depth * LANE_H + 1;
      const cid = idStr(b.call_id);
      const el = s('rect', { class: `bar${b.open ? ' open' : ''}${selected.has(cid) ? ' selected' : ''}`, x: x0, y, width: w, height: LANE_H - 2,
        fill: colorFor(b.name), 'data-call-id': cid, 'data-depth': b.depth, 'data-function-id': idStr(b.function_id) });
      tipFor.set(el, () => [b.name, [['duration', b.open ? `${fmtDur(b.e - b.s)}+ (never returned)` : fmtDur(b.duration_ns)],
        ['self', fmtDur(b.self_ns)], ['depth', b.depth], ['start', `${fmtOffset(b.s)}`]]]);
      g.append(el);
      const label = w > 24 && fitLabel(b.name, w);
      if (label) g.append(s('text', { class: 'bar-label', x: Math.max(x0, 0) + 3, y: y + LANE_H / 2 + 2 }, label));
    }
    if (this.sel) {
      const px = X(this.sel.at);
      if (px >= 0 && px <= W) g.append(s('line', { class: 'cursor', x1: px, x2: px, y1: AXIS_H, y2: H }));
    }
    svg.replaceChildren(g);
    $('#timeline-range').textContent = `${fmtOffset(f)} – ${fmtOffset(t)}  (${fmtDur(t - f)} shown)`;
  },

  async loadStack(at) {
    const isCurrent = this.stackSeq();
    this.sel = { at, frames: [], loading: true };
    this.draw();
    this.renderStack();
    try {
      const d = await api('/api/stack', { session: sid(), tid: this.tid, at: abs(at) });
      if (!isCurrent()) return;
      this.sel = { at, frames: d.frames || [] };
    } catch (e) {
      if (!isCurrent()) return;
      this.sel = { at, frames: [], error: e.message };
      showError(e);
    }
    this.draw();
    this.renderStack();
  },

  renderStack() {
    const ol = $('#stack');
    const sel = this.sel;
    $('#stack-at').textContent = sel ? `at +${fmtDur(sel.at)}` : '';
    const empty = $('#stack-empty');
    if (!sel || sel.loading || sel.error || !sel.frames.length) {
      ol.replaceChildren();
      empty.hidden = false;
      empty.textContent = !sel ? 'Click in a lane to see the call stack of this thread at that time.'
        : sel.loading ? 'loading…' : sel.error ? `Could not load the stack: ${sel.error}` : 'No call of a probed function was running at that time.';
      return;
    }
    empty.hidden = true;
    ol.dataset.atNs = abs(sel.at);
    ol.replaceChildren(...sel.frames.map((fr) => {
      const start = rel(fr.start_ns);
      const file = fr.file ? `${String(fr.file).split('/').pop()}${fr.line ? ':' + fr.line : ''}` : '';
      return h('li', { 'data-call-id': idStr(fr.call_id), 'data-depth': fr.depth, style: `--depth:${Number(fr.depth) || 0}`,
        title: 'click to zoom the timeline to this call' },
      h('div', { class: 'frame-name' }, h('span', { class: 'swatch', style: `background:${colorFor(fr.name)}` }), fr.name),
      h('div', { class: 'frame-meta mono' }, `${fmtOffset(start)} · `,
        fr.duration_ns == null ? h('span', { class: 'open-tag' }, 'never returned') : fmtDur(fr.duration_ns)),
      file && h('div', { class: 'frame-src mono muted', title: `${fr.file}${fr.line ? ':' + fr.line : ''}` }, file));
    }));
  },
};

/* =============================================================== FLAME */

const FLAME_ROW = 18;
// Call tree: children shown per expanded node before a "more" row, and the
// number of rows the default expansion (depth 3) may add beyond the hot path.
const TREE_PAGE = 100, TREE_DEPTH = 3, TREE_BUDGET = 800;

const selfOf = (n) => (n.self != null ? Number(n.self)
  : Math.max(0, Number(n.value) - (n.children || []).reduce((a, c) => a + Number(c.value), 0)));

VIEWS.flame = {
  root: null, key: null, focus: [], seq: latest(), tid: '', from: '', to: '', lastW: 0,
  tree: null, // {root, open: Set<node>, limit: Map<node, n>, hot: Set<node>, nodes}

  reset() { this.root = null; this.key = null; this.focus = []; this.tid = ''; this.from = this.to = ''; this.tree = null; },
  params() { return { tid: this.tid, from: this.from, to: this.to }; },

  init() {
    $('#flame-thread').addEventListener('change', (e) => go('flame', { ...this.params(), tid: e.target.value }));
    $('#flame-use-range').addEventListener('change', (e) => {
      const tl = VIEWS.timeline;
      if (e.target.checked && tl.view) go('flame', { tid: this.tid || tl.tid, from: abs(tl.view[0]), to: abs(tl.view[1]) });
      else go('flame', { tid: this.tid });
    });
    const svg = $('#flame-svg');
    hoverTips(svg);
    svg.addEventListener('click', (e) => {
      const r = e.target.closest('rect.frame');
      if (r && r.__path) this.setFocus(r.__path, 'icicle');
    });
    $('#flame-breadcrumb').addEventListener('click', (e) => {
      const a = e.target.closest('a[data-depth]');
      if (!a) return;
      e.preventDefault();
      this.setFocus(this.focus.slice(0, Number(a.dataset.depth)), 'icicle');
    });
    const wrap = $('#flame-wrap');
    new ResizeObserver(() => {
      // Only a new width changes the layout (the height follows the icicle or the splitter).
      if (state.view !== 'flame' || !this.root || wrap.clientWidth === this.lastW) return;
      this.render();
    }).observe(wrap);

    // Call tree: the triangle toggles, the name focuses the icicle, "more" rows page.
    $('#call-tree tbody').addEventListener('click', (e) => {
      const tr = e.target.closest('tr');
      if (!tr || !this.tree) return;
      if (tr.classList.contains('tree-more')) return this.moreRows(tr);
      if (!tr.classList.contains('tree-row')) return;
      if (e.target.closest('.twisty')) return this.toggleRow(tr);
      if (e.target.closest('.tree-name')) this.setFocus(tr.__names, 'tree');
    });
    $('#call-tree tbody').addEventListener('keydown', (e) => {
      const tr = e.target.closest('tr');
      if (!tr || !this.tree || (e.key !== 'Enter' && e.key !== ' ')) return;
      e.preventDefault();
      if (tr.classList.contains('tree-more')) this.moreRows(tr);
      else if (!tr.classList.contains('tree-row')) return;
      else if (e.target.closest('.twisty')) this.toggleRow(tr);
      else if (e.target.closest('.tree-name')) this.setFocus(tr.__names, 'tree');
    });
    $('#call-tree-collapse').addEventListener('click', () => {
      if (!this.tree) return;
      this.tree.open.clear();
      this.tree.limit.clear();
      this.renderTreeBody();
    });
    $('#call-tree-reset').addEventListener('click', () => {
      if (!this.root) return;
      this.buildTree();
      this.markTreeFocus(true);
    });

    // Splitter between the icicle and the tree: drag to resize, double-click to reset.
    const split = $('#flame-split');
    split.addEventListener('mousedown', (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      const y0 = e.clientY, h0 = wrap.getBoundingClientRect().height;
      const max = $('#view-flame').clientHeight - 160;
      split.classList.add('dragging');
      const move = (ev) => {
        const hpx = Math.max(60, Math.min(max, h0 + ev.clientY - y0));
        wrap.style.flex = `0 0 ${hpx}px`;
        wrap.style.maxHeight = 'none';
      };
      const up = () => {
        split.classList.remove('dragging');
        window.removeEventListener('mousemove', move);
        window.removeEventListener('mouseup', up);
      };
      window.addEventListener('mousemove', move);
      window.addEventListener('mouseup', up);
    });
    split.addEventListener('dblclick', () => { wrap.style.flex = ''; wrap.style.maxHeight = ''; });
  },

  async show(params, isCurrent) {
    const threads = await getThreads();
    if (!isCurrent()) return;
    this.tid = params.get('tid') || '';
    this.from = params.get('from') || '';
    this.to = params.get('to') || '';
    const sel = $('#flame-thread');
    sel.replaceChildren(h('option', { value: '' }, 'all threads'),
      ...threads.map((t) => h('option', { value: t.tid }, `${t.tid} — ${plural(t.calls, 'call')}`)));
    sel.value = this.tid;
    const tl = VIEWS.timeline;
    const ranged = !!(this.from && this.to);
    const box = $('#flame-use-range');
    box.checked = ranged;
    box.disabled = !ranged && !tl.view;
    $('#flame-range-toggle').title = box.disabled ? 'open the Timeline first: this uses its visible range' : '';
    $('#flame-range').textContent = ranged ? `${fmtOffset(rel(this.from))} – ${fmtOffset(rel(this.to))}` : '';
    const key = JSON.stringify([sid(), this.tid, this.from, this.to]);
    if (key !== this.key) {
      const isMine = this.seq();
      const root = await api('/api/flame', { session: sid(), tid: this.tid, from: this.from, to: this.to });
      if (!isMine() || !isCurrent()) return;
      this.root = root;
      this.key = key;
      this.focus = [];
    }
    this.render();
  },

  /** Zooms the icicle to the frame at `names` (from the root's children down); `from` is 'icicle' or 'tree'. */
  setFocus(names, from) {
    this.focus = names.slice();
    this.render({ reveal: from === 'icicle', scrollIcicle: from === 'tree' });
  },

  render(opts = {}) {
    const svg = $('#flame-svg');
    const root = this.root;
    if (!root) return;
    const wrap = $('#flame-wrap');
    this.lastW = wrap.clientWidth;
    const W = Math.max(100, wrap.clientWidth - 2);
    const total = Number(root.value) || 0;
    $('#flame-total').textContent = `${fmtDur(total)} in total`;
    $('#flame-empty').hidden = total > 0;
    // Walk down to the focused frame; frames on the way are drawn full width.
    const chain = [root];
    for (const name of this.focus) {
      const next = (chain[chain.length - 1].children || []).find((c) => c.name === name);
      if (!next) break;
      chain.push(next);
    }
    this.focus = chain.slice(1).map((n) => n.name);
    const focus = chain[chain.length - 1];
    const fv = Number(focus.value) || 1;
    const g = document.createDocumentFragment();
    let rows = 0, count = 0;
    const frame = (node, path, x, w, depth, cls) => {
      rows = Math.max(rows, depth + 1);
      count++;
      const y = depth * FLAME_ROW;
      const el = s('rect', { class: `frame${cls}`, x, y, width: Math.max(0.5, w - 1), height: FLAME_ROW - 1,
        fill: colorFor(node.name), 'data-name': node.name, 'data-depth': depth });
      el.__path = path;
      const v = Number(node.value);
      tipFor.set(el, () => [node.name, [['total', `${fmtDur(v)} (${(100 * v / (total || 1)).toFixed(1)}%)`],
        ['self', fmtDur(node.self)], path.length > this.focus.length ? ['of focus', `${(100 * v / fv).toFixed(1)}%`] : null]]);
      g.append(el);
      const label = w > 28 && fitLabel(node.name, w);
      if (label) g.append(s('text', { class: 'frame-label', x: x + 3, y: y + FLAME_ROW / 2 + 3 }, label));
    };
    chain.slice(0, -1).forEach((n, i) => frame(n, chain.slice(1, i + 1).map((c) => c.name), 0, W, i, ' ancestor'));
    const layout = (node, path, x, w, depth) => {
      frame(node, path, x, w, depth, node === focus ? ' focus' : '');
      if (count > 20000) return; // enough for any screen
      let cx = x;
      const nv = Number(node.value) || 1;
      for (const c of node.children || []) {
        const cw = (w * Number(c.value)) / nv;
        if (cw >= 0.75) layout(c, [...path, c.name], cx, cw, depth + 1);
        cx += cw;
      }
    };
    if (total > 0) layout(focus, this.focus, 0, W, chain.length - 1);
    const H = rows * FLAME_ROW + 4;
    setAttrs(svg, { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    svg.replaceChildren(g);
    if (opts.scrollIcicle) { // keep the focused frame in view when the tree zoomed to it
      const y = (chain.length - 1) * FLAME_ROW;
      if (y < wrap.scrollTop || y + FLAME_ROW > wrap.scrollTop + wrap.clientHeight) wrap.scrollTop = Math.max(0, y - 2 * FLAME_ROW);
    }
    // Breadcrumb: all › a › b (the last one is where we are).
    const crumbs = $('#flame-breadcrumb');
    crumbs.replaceChildren();
    addKids(crumbs, [chain.map((n, i) => [
      i ? h('span', { class: 'sep' }, '›') : null,
      i < chain.length - 1 ? h('a', { href: '#', 'data-depth': i, title: 'zoom out to here' }, n.name) : h('span', { class: 'current' }, n.name),
    ]), chain.length > 1 ? h('span', { class: 'muted crumb-info' }, `${fmtDur(fv)} · ${(100 * fv / (total || 1)).toFixed(1)}% of all`)
      : h('span', { class: 'muted crumb-info' }, 'click a frame to zoom into it')]);
    // The call tree shows the same data: rebuilt when the data changed, else only the focus mark moves.
    if (!this.tree || this.tree.root !== root) this.buildTree();
    this.markTreeFocus(!!opts.reveal);
  },

  /* ---- call tree ---- */

  /** New tree state for this.root: open to depth TREE_DEPTH (within a row budget) and along the hottest path. */
  buildTree() {
    const root = this.root;
    const t = { root, open: new Set(), limit: new Map(), hot: new Set(), nodes: 0 };
    this.tree = t;
    const stack = [...(root.children || [])];
    while (stack.length) { const n = stack.pop(); t.nodes++; if (n.children) for (const c of n.children) stack.push(c); }
    const kids = (n) => n.children || [];
    const shown = (n) => Math.min(kids(n).length, TREE_PAGE);
    let rows = shown(root);
    for (let n = root; kids(n).length;) { // hottest path: the biggest child at every level
      const best = kids(n).reduce((a, c) => (Number(c.value) > Number(a.value) ? c : a));
      const i = kids(n).indexOf(best);
      if (i >= TREE_PAGE) t.limit.set(n, i + 1);
      t.hot.add(best);
      if (kids(best).length) { t.open.add(best); rows += shown(best); }
      n = best;
    }
    let level = kids(root).slice(0, TREE_PAGE);
    for (let d = 0; d < TREE_DEPTH && level.length; d++) {
      const next = [];
      for (const n of level) {
        if (!kids(n).length) continue;
        if (!t.open.has(n)) {
          if (rows + shown(n) > TREE_BUDGET) continue;
          t.open.add(n);
          rows += shown(n);
        }
        next.push(...kids(n).slice(0, TREE_PAGE));
      }
      level = next;
    }
    $('#call-tree-info').textContent = t.nodes ? plural(t.nodes, 'call path') : '';
    this.renderTreeBody();
    $('#call-tree-wrap').scrollTop = 0;
  },

  /** Replaces the tbody with the rows of every expanded node. */
  renderTreeBody() {
    const tb = $('#call-tree tbody');
    const t = this.tree;
    if (!t || !(Number(t.root.value) > 0) || !t.nodes) {
      tb.replaceChildren(h('tr', { class: 'tree-empty' }, h('td', { colspan: 4, class: 'empty' }, 'No calls in this selection.')));
      return;
    }
    const f = document.createDocumentFragment();
    this.treeRows(t.root, [], 0, f, 0);
    tb.replaceChildren(f);
    this.markTreeFocus(false);
  },

  /** Appends to `out` the rows of node's children from index `start` (and of their expanded descendants). */
  treeRows(node, names, depth, out, start) {
    const t = this.tree;
    const kids = node.children || [];
    const lim = Math.min(kids.length, t.limit.get(node) || TREE_PAGE);
    const total = Number(t.root.value) || 1;
    for (let i = start; i < lim; i++) {
      const c = kids[i];
      const path = [...names, c.name];
      const open = t.open.has(c);
      const leaf = !(c.children && c.children.length);
      const v = Number(c.value), self = selfOf(c), pct = (100 * v) / total;
      const tr = h('tr', {
        class: ['tree-row', leaf ? 'leaf' : open ? 'open' : 'closed', t.hot.has(c) && 'hot'].filter(Boolean).join(' '),
        'data-path': path.join(';'), 'data-depth': depth, 'aria-level': depth + 1, 'aria-expanded': leaf ? null : String(open),
      },
      h('td', { class: 'tree-fn', 'data-col': 'function', style: `--depth:${depth}` }, h('div', { class: 'tree-cell' },
        h('span', { class: 'twisty', role: leaf ? null : 'button', tabindex: leaf ? null : 0,
          title: leaf ? null : this.twistyTitle(c, open) }),
        h('span', { class: 'swatch', style: `background:${colorFor(c.name)}` }),
        h('span', { class: 'tree-name', role: 'button', tabindex: 0, title: `${c.name}\nclick to zoom the flame graph to this frame` }, c.name))),
      h('td', { class: 'num', 'data-col': 'total', 'data-value': v }, fmtDur(v)),
      h('td', { class: 'num', 'data-col': 'self', 'data-value': self }, fmtDur(self)),
      h('td', { class: 'num share', 'data-col': 'pct', 'data-value': pct.toFixed(4), style: `--share:${Math.min(100, pct).toFixed(2)}%` },
        `${pct >= 10 || pct === 0 ? pct.toFixed(1) : pct.toPrecision(2)}%`));
      tr.__node = c;
      tr.__names = path;
      out.append(tr);
      if (open) this.treeRows(c, path, depth + 1, out, 0);
    }
    if (lim < kids.length) {
      const rest = kids.slice(lim).reduce((a, c) => a + Number(c.value), 0);
      const more = h('tr', { class: 'tree-more', 'data-depth': depth, 'data-path': names.join(';') },
        h('td', { colspan: 4, style: `--depth:${depth}` }, h('span', { class: 'more-link', role: 'button', tabindex: 0 },
          `show ${Math.min(TREE_PAGE, kids.length - lim)} more of ${fmtCount(kids.length - lim)} (${fmtDur(rest)})`)));
      more.__node = node;
      more.__names = names;
      out.append(more);
    }
  },

  // (not plural(): its toLocaleString is slow over thousands of rows)
  twistyTitle(node, open) { const n = node.children.length; return `${open ? 'collapse' : 'expand'} (${n} ${n === 1 ? 'callee' : 'callees'})`; },

  toggleRow(tr) {
    const node = tr.__node;
    if (!node.children || !node.children.length) return;
    const d = Number(tr.dataset.depth);
    const open = !this.tree.open.has(node);
    if (open) {
      this.tree.open.add(node);
      const f = document.createDocumentFragment();
      this.treeRows(node, tr.__names, d + 1, f, 0);
      tr.after(f);
    } else {
      this.tree.open.delete(node);
      let last = null;
      for (let n = tr.nextElementSibling; n && Number(n.dataset.depth) > d; n = n.nextElementSibling) last = n;
      if (last) { // one removal for the whole subtree
        const r = document.createRange();
        r.setStartAfter(tr);
        r.setEndAfter(last);
        r.deleteContents();
      }
    }
    tr.classList.toggle('open', open);
    tr.classList.toggle('closed', !open);
    tr.setAttribute('aria-expanded', String(open));
    tr.querySelector('.twisty').title = this.twistyTitle(node, open);
    if (open) this.markTreeFocus(false);
  },

  moreRows(tr) {
    const node = tr.__node;
    const t = this.tree;
    const from = Math.min(node.children.length, t.limit.get(node) || TREE_PAGE);
    t.limit.set(node, from + TREE_PAGE);
    const f = document.createDocumentFragment();
    this.treeRows(node, tr.__names, Number(tr.dataset.depth), f, from);
    tr.replaceWith(f);
    this.markTreeFocus(false);
  },

  /** Marks the row of the icicle's focus; with `reveal`, opens its ancestors and scrolls it into view. */
  markTreeFocus(reveal) {
    const t = this.tree;
    const tb = $('#call-tree tbody');
    for (const r of tb.querySelectorAll('tr.tree-row.focus')) r.classList.remove('focus');
    if (!t || !this.focus.length) return;
    if (reveal) {
      let changed = false;
      let n = t.root;
      this.focus.forEach((name, i) => {
        const kids = (n && n.children) || [];
        const k = kids.findIndex((c) => c.name === name);
        if (k < 0) { n = null; return; }
        if (k >= (t.limit.get(n) || TREE_PAGE)) { t.limit.set(n, k + 1); changed = true; }
        n = kids[k];
        if (i < this.focus.length - 1 && !t.open.has(n)) { t.open.add(n); changed = true; }
      });
      if (changed) { this.renderTreeBody(); return this.markTreeFocus(true); }
    }
    const row = tb.querySelector(`tr.tree-row[data-path="${CSS.escape(this.focus.join(';'))}"]`);
    if (!row) return;
    row.classList.add('focus');
    if (!reveal) return;
    const wrap = $('#call-tree-wrap');
    const wr = wrap.getBoundingClientRect(), rr = row.getBoundingClientRect();
    const top = wr.top + $('#call-tree thead').getBoundingClientRect().height;
    if (rr.top < top) wrap.scrollTop -= top - rr.top + rr.height;
    else if (rr.bottom > wr.bottom) wrap.scrollTop += rr.bottom - wr.bottom + rr.height;
  },
};

/* =========================================================== FUNCTIONS */

/** Log2 buckets with the empty ones in between added back, so the x axis stays logarithmic. */
function fillLog2Gaps(buckets) {
  const sorted = buckets.slice().sort((a, b) => Number(a.lo_ns) - Number(b.lo_ns));
  if (!sorted.every((b) => Number(b.hi_ns) === 2 * Number(b.lo_ns))) return sorted; // not plain log2: as sent
  const out = [];
  for (const b of sorted) {
    for (let lo = out.length ? 2 * Number(out[out.length - 1].lo_ns) : Number(b.lo_ns); lo < Number(b.lo_ns); lo *= 2) {
      out.push({ lo_ns: lo, hi_ns: 2 * lo, count: 0 });
    }
    out.push(b);
  }
  return out;
}

VIEWS.functions = {
  rows: [], sortCol: 'total_ns', sortDir: -1, selected: null, histSeq: latest(),

  reset() { this.rows = []; this.selected = null; },
  params() { return { function_id: this.selected }; },

  init() {
    $('#functions thead').addEventListener('click', (e) => {
      const th = e.target.closest('th[data-col]');
      if (!th) return;
      const col = th.dataset.col;
      if (this.sortCol === col) this.sortDir = -this.sortDir;
      else { this.sortCol = col; this.sortDir = col === 'name' ? 1 : -1; }
      this.renderRows();
    });
    $('#function-filter').addEventListener('input', () => this.renderRows());
    $('#functions tbody').addEventListener('click', (e) => {
      const tr = e.target.closest('tr[data-function-id]');
      if (tr) this.select(tr.dataset.functionId, true);
    });
  },

  async show(params, isCurrent) {
    const rows = await getFunctions();
    if (!isCurrent()) return;
    this.rows = rows;
    this.renderRows();
    const fid = params.get('function_id') || this.selected;
    if (fid) await this.select(fid, false);
    else $('#function-detail').hidden = true;
  },

  renderRows() {
    const q = $('#function-filter').value.trim().toLowerCase();
    const col = this.sortCol, dir = this.sortDir;
    const val = (r) => (col === 'name' ? String(r.name || '') : r[col] == null ? null : Number(r[col]));
    const rows = this.rows
      .filter((r) => !q || [r.name, r.module, r.file].some((x) => x && String(x).toLowerCase().includes(q)))
      .sort((a, b) => {
        const x = val(a), y = val(b);
        if (x == null || y == null) return x == null ? (y == null ? 0 : 1) : -1; // unknowns last
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
    for (const th of $$('#functions th')) {
      th.classList.toggle('sorted', th.dataset.col === col);
      th.dataset.dir = th.dataset.col === col ? (dir > 0 ? 'asc' : 'desc') : '';
    }
    const maxTotal = Math.max(1, ...this.rows.map((r) => Number(r.total_ns) || 0));
    const num = (r, c, text, title) => h('td', { class: 'num', 'data-col': c, 'data-value': r[c] == null ? '' : String(r[c]), title }, text);
    const timeCell = (r, c) => {
      const td = num(r, c, fmtDur(r[c]));
      const pct = (100 * (Number(r[c]) || 0)) / maxTotal;
      td.style.setProperty('--share', `${pct.toFixed(1)}%`);
      td.classList.add('share');
      return td;
    };
    $('#functions tbody').replaceChildren(...rows.map((r) => {
      const fid = idStr(r.function_id);
      const loc = [r.module, r.file ? `${r.file}${r.line ? ':' + r.line : ''}` : null].filter(Boolean).join(' · ');
      const est = r.estimated === true;
      return h('tr', { 'data-function-id': fid, class: fid === this.selected ? 'selected' : null },
        h('td', { 'data-col': 'name', 'data-value': r.name, title: r.name },
          h('div', { class: 'fn-name mono' }, r.name), loc && h('div', { class: 'fn-loc muted' }, loc)),
        num(r, 'calls', (est ? '≈ ' : '') + fmtCount(r.calls),
          est ? `estimated from sampling windows: between ${fmtCount(r.calls_low)} and ${fmtCount(r.calls_high)} calls` : null),
        timeCell(r, 'total_ns'), timeCell(r, 'self_ns'),
        num(r, 'p50_ns', fmtDur(r.p50_ns)), num(r, 'p99_ns', fmtDur(r.p99_ns)), num(r, 'max_ns', fmtDur(r.max_ns)));
    }));
    $('#function-count').textContent = q ? `${rows.length} of ${plural(this.rows.length, 'function')}` : plural(this.rows.length, 'function');
  },

  async select(fid, fromClick) {
    fid = String(fid);
    this.selected = fid;
    for (const tr of $$('#functions tbody tr')) tr.classList.toggle('selected', tr.dataset.functionId === fid);
    const row = this.rows.find((r) => idStr(r.function_id) === fid);
    if (fromClick) replaceHash('functions', this.params());
    const detail = $('#function-detail');
    if (!row) { detail.hidden = true; throw new ApiError(`There is no function ${fid} in this session.`); }
    detail.hidden = false;
    $('#function-detail-name').textContent = row.name;
    $('#function-detail-loc').textContent = row.file ? `${row.file}${row.line ? ':' + row.line : ''}` : (row.module || '');
    $('#source-link').href = hashFor('source', { function_id: fid });
    $('#function-detail-stats').replaceChildren(...[
      ['calls', (row.estimated ? '≈ ' : '') + fmtCount(row.calls)], ['total', fmtDur(row.total_ns)], ['self', fmtDur(row.self_ns)],
      ['p50', fmtDur(row.p50_ns)], ['p99', fmtDur(row.p99_ns)], ['max', fmtDur(row.max_ns)],
    ].map(([k, v]) => h('div', { class: 'stat' }, h('div', { class: 'muted' }, k), h('div', { class: 'mono' }, v))));
    if (!fromClick) { const tr = $(`#functions tbody tr.selected`); if (tr) tr.scrollIntoView({ block: 'nearest' }); }
    const isCurrent = this.histSeq();
    const svg = $('#histogram');
    svg.classList.add('loading');
    try {
      const d = await api('/api/histogram', { session: sid(), function_id: fid });
      if (isCurrent()) this.renderHistogram(fillLog2Gaps(d.buckets || []), row);
    } catch (e) {
      if (isCurrent()) { svg.replaceChildren(); showError(e); }
    } finally {
      if (isCurrent()) svg.classList.remove('loading');
    }
  },

  renderHistogram(buckets, row) {
    const svg = $('#histogram');
    const W = Math.max(300, svg.parentNode.clientWidth - 32), H = 170;
    const L = 48, R = 10, T = 14, B = 28;
    setAttrs(svg, { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    if (!buckets.length) {
      svg.replaceChildren(s('text', { class: 'empty-text', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no completed calls'));
      return;
    }
    const maxC = Math.max(1, ...buckets.map((b) => Number(b.count)));
    const bw = Math.min(72, (W - L - R) / buckets.length);
    const Y = (c) => T + (H - T - B) * (1 - c / maxC);
    const g = document.createDocumentFragment();
    g.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B + 0.5, y2: H - B + 0.5 }));
    for (const c of [maxC, Math.round(maxC / 2)]) {
      g.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: Y(c), y2: Y(c) }));
      g.append(s('text', { class: 'tick', x: L - 6, y: Y(c) + 4, 'text-anchor': 'end' }, fmtCompact(c)));
    }
    const every = Math.ceil(64 / bw); // label at most one bucket edge per 64 px
    buckets.forEach((b, i) => {
      const x = L + i * bw, c = Number(b.count);
      const el = s('rect', { class: 'hbar', x: x + 1, y: Y(c), width: Math.max(1, bw - 2), height: H - B - Y(c),
        'data-lo': idStr(b.lo_ns), 'data-hi': idStr(b.hi_ns), 'data-count': idStr(b.count) });
      tipFor.set(el, () => [`${fmtDur(b.lo_ns)} – ${fmtDur(b.hi_ns)}`, [['calls', fmtCount(b.count)]]]);
      g.append(el);
      if (i % every === 0) g.append(s('text', { class: 'tick', x, y: H - B + 16 }, fmtDur(b.lo_ns)));
    });
    if (buckets.length % every === 0) g.append(s('text', { class: 'tick', x: L + buckets.length * bw, y: H - B + 16 }, fmtDur(buckets[buckets.length - 1].hi_ns)));
    // p50 / p99 markers, placed inside their bucket on a log scale.
    const xOf = (v) => {
      v = Number(v);
      const i = buckets.findIndex((b) => v >= Number(b.lo_ns) && v < Number(b.hi_ns));
      if (i < 0) return null;
      const lo = Number(buckets[i].lo_ns), hi = Number(buckets[i].hi_ns);
      return L + (i + Math.log(v / lo) / Math.log(hi / lo)) * bw;
    };
    for (const [k, v] of [['p50', row.p50_ns], ['p99', row.p99_ns]]) {
      const x = v == null ? null : xOf(v);
      if (x == null) continue;
      g.append(s('line', { class: 'marker', x1: x, x2: x, y1: T - 4, y2: H - B }));
      g.append(s('text', { class: 'marker-label', x: x + 3, y: T + 4 }, k));
    }
    svg.replaceChildren(g);
    if (!svg.__tips) { hoverTips(svg); svg.__tips = true; }
  },
};

/* ============================================================== SOURCE */

VIEWS.source = {
  fid: null, seq: latest(),

  reset() { this.fid = null; },
  params() { return { function_id: this.fid }; },

  init() {
    $('#source-function').addEventListener('change', (e) => go('source', { function_id: e.target.value }));
  },

  async show(params, isCurrent) {
    const funcs = await getFunctions();
    if (!isCurrent()) return;
    this.fid = params.get('function_id') || this.fid;
    const sel = $('#source-function');
    const byName = funcs.slice().sort((a, b) => String(a.name).localeCompare(String(b.name)));
    sel.replaceChildren(h('option', { value: '' }, 'choose a function…'),
      ...byName.map((f) => h('option', { value: idStr(f.function_id) }, f.name)));
    sel.value = this.fid || '';
    const empty = $('#source-empty'), table = $('#source');
    const say = (msg) => { table.hidden = true; empty.hidden = false; empty.textContent = msg; $('#source-file').textContent = ''; };
    if (!this.fid) return say('Choose a function to see its source with per-line costs.');
    const fn = funcs.find((f) => idStr(f.function_id) === this.fid);
    let d;
    try {
      d = await api('/api/source', { session: sid(), function_id: this.fid });
    } catch (e) {
      if (isCurrent()) say(`No source for ${fn ? fn.name : 'function ' + this.fid}: ${e.message}`);
      throw e;
    }
    if (!isCurrent()) return;
    this.render(d, fn);
  },

  render(d, fn) {
    $('#source-empty').hidden = true;
    const table = $('#source');
    table.hidden = false;
    $('#source-file').textContent = d.file || '';
    const lines = d.lines || [];
    const loops = (d.loops || []).map((l) => ({ a: Number(l.line), b: Number(l.end_line), depth: Number(l.depth) || 0 }));
    const minDepth = loops.length ? Math.min(...loops.map((l) => l.depth)) : 0; // outermost loops get colour 0
    const sites = new Map();
    for (const c of d.call_sites || []) {
      const n = Number(c.line);
      if (!sites.has(n)) sites.set(n, []);
      sites.get(n).push(c);
    }
    const findings = new Map();
    for (const f of d.findings || []) {
      const n = Number(f.line);
      if (!findings.has(n)) findings.set(n, []);
      findings.get(n).push(f);
    }
    const maxSelf = Math.max(1, ...lines.map((l) => Number(l.self_ns) || 0));
    const maxTotal = Math.max(1, ...lines.map((l) => Number(l.total_ns) || 0));
    const fnLine = fn && fn.line ? Number(fn.line) : null;
    const gutterW = 8 + 7 * (loops.length ? Math.max(...loops.map((l) => l.depth - minDepth)) + 1 : 0);
    const blank = (v) => v == null || Number(v) === 0;
    const rows = [];
    let target = null;
    for (const l of lines) {
      const n = Number(l.line);
      const inLoops = loops.filter((lp) => n >= lp.a && n <= lp.b);
      const cs = sites.get(n) || [];
      const inLoopCall = cs.some((c) => c.in_loop_line != null);
      const gutter = h('td', { class: 'loops', style: `width:${gutterW}px` }, inLoops.map((lp) => h('span', {
        class: `loop-bar d${(lp.depth - minDepth) % 4}${n === lp.a ? ' start' : ''}${n === lp.b ? ' end' : ''}`,
        style: `left:${4 + 7 * (lp.depth - minDepth)}px`, title: `loop, lines ${lp.a}–${lp.b}` })));
      const heat = (v, max) => (blank(v) ? null : `background-color:rgba(227,140,60,${(0.06 + (0.34 * Number(v)) / max).toFixed(3)})`);
      const tr = h('tr', {
        id: `L${n}`, 'data-line': n,
        class: ['src-line', inLoops.length && 'in-loop', inLoopCall && 'call-in-loop', n === fnLine && 'fn-line',
          findings.has(n) && 'has-finding'].filter(Boolean).join(' '),
      }, gutter, h('td', { class: 'ln mono' }, n),
      h('td', { class: 'num mono', 'data-value': l.calls ?? '' }, blank(l.calls) ? '' : fmtCount(l.calls)),
      h('td', { class: 'num mono heat', style: heat(l.total_ns, maxTotal), 'data-value': l.total_ns ?? '' }, blank(l.total_ns) ? '' : fmtDur(l.total_ns)),
      h('td', { class: 'num mono heat self', style: heat(l.self_ns, maxSelf), 'data-value': l.self_ns ?? '' }, blank(l.self_ns) ? '' : fmtDur(l.self_ns)),
      h('td', { class: 'code mono' }, h('span', { class: 'text' }, l.text ?? ''),
        cs.map((c) => h('span', { class: `callsite${c.in_loop_line != null ? ' in-loop' : ''}`,
          title: c.in_loop_line != null ? `calls ${c.callee} inside the loop at line ${c.in_loop_line}` : `calls ${c.callee}` },
        `→ ${c.callee}${c.in_loop_line != null ? ' ⟳' : ''}`))));
      rows.push(tr);
      if (n === fnLine) target = tr;
      for (const f of findings.get(n) || []) {
        const through = loops.filter((lp) => n >= lp.a && n < lp.b); // loops that go on below the note
        rows.push(h('tr', { class: 'finding-row' }, h('td', { class: 'loops' }, through.map((lp) => h('span', {
          class: `loop-bar d${(lp.depth - minDepth) % 4}`, style: `left:${4 + 7 * (lp.depth - minDepth)}px` }))), h('td', { colspan: 4 }),
          h('td', {}, h('a', { class: `finding sev-${f.severity || 'info'}`, 'data-id': f.id, href: hashFor('findings', {}), title: f.kind || '' },
            h('span', { class: 'sev' }, f.severity || 'info'), h('span', { class: 'mono' }, f.id), ' ', f.title))));
      }
    }
    $('#source tbody').replaceChildren(...rows);
    if (!target && fnLine == null && rows.length) target = rows.find((r) => r.classList.contains('has-finding'));
    if (target) target.scrollIntoView({ block: 'center' });
  },
};

/* ================================================================= SQL */

const EXAMPLE_SQL = 'SELECT f.name, count(*) AS calls, sum(c.duration_ns) AS total_ns\nFROM calls c JOIN functions f USING (session_id, function_id)\nGROUP BY f.name ORDER BY total_ns DESC LIMIT 20';
const NUMERIC_TYPE = /^(u?int|u?bigint|smallint|tinyint|hugeint|integer|float|double|decimal|numeric|real|number)/i;
const TEXT_TYPE = /utf8|char|text|string|varchar/i;

VIEWS.sql = {
  result: null, seq: latest(),

  params() { return {}; },

  init() {
    const ta = $('#sql');
    ta.value = EXAMPLE_SQL;
    $('#sql-run').addEventListener('click', () => this.run());
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); this.run(); }
    });
    $('#sql-chart-col').addEventListener('change', () => this.renderChart());
    hoverTips($('#sql-chart'));
  },

  async show() { /* nothing to load: the query is run on demand */ },

  async run() {
    const sql = $('#sql').value.trim();
    if (!sql) return;
    const isCurrent = this.seq();
    const btn = $('#sql-run');
    btn.disabled = true;
    $('#sql-status').textContent = 'running…';
    clearError();
    try {
      const d = await api('/api/query', null, { sql });
      if (!isCurrent()) return;
      this.result = d;
      this.render();
    } catch (e) {
      if (!isCurrent()) return;
      $('#sql-status').textContent = 'failed';
      showError(e);
    } finally {
      if (isCurrent()) btn.disabled = false;
    }
  },

  render() {
    const { columns = [], rows = [], truncated, elapsed_ms: ms } = this.result;
    // A column is numeric by its type, or failing that when every non-null value parses as a number.
    this.numeric = columns.map((c, i) => (c.type ? NUMERIC_TYPE.test(c.type)
      : rows.length > 0 && rows.every((r) => r[i] == null || (r[i] !== '' && !Number.isNaN(Number(r[i]))))));
    const shown = rows.slice(0, 5000);
    $('#sql-result').replaceChildren(
      h('thead', {}, h('tr', {}, columns.map((c, i) => h('th', { class: this.numeric[i] ? 'num' : null, title: c.type || '' },
        c.name, c.type ? h('span', { class: 'col-type' }, c.type) : null)))),
      h('tbody', {}, shown.map((r) => h('tr', {}, r.map((v, i) => {
        if (v == null) return h('td', { class: 'null' }, 'NULL');
        const isNs = this.numeric[i] && /_ns$/.test(columns[i].name);
        const text = typeof v === 'object' ? JSON.stringify(v) : String(v);
        return h('td', { class: this.numeric[i] ? 'num mono' : null, title: isNs ? fmtDur(v) : null }, text);
      })))));
    $('#sql-status').textContent = `${plural(rows.length, 'row')}${shown.length < rows.length ? ` (first ${shown.length} shown)` : ''}`
      + (ms != null ? ` · ${Number(ms).toFixed(1)} ms` : '');
    $('#sql-truncated').hidden = !truncated;
    $('#sql-hint').hidden = true;
    // Chart options: the numeric columns, when there is a text column to label the bars.
    const colSel = $('#sql-chart-col');
    const nums = columns.map((c, i) => i).filter((i) => this.numeric[i]);
    colSel.replaceChildren(...nums.map((i) => h('option', { value: i }, columns[i].name)));
    if (nums.length) colSel.value = String(nums[nums.length - 1]);
    colSel.hidden = nums.length < 2;
    this.renderChart();
  },

  /** Horizontal bars: first text column as labels, the chosen numeric column as lengths. */
  renderChart() {
    const wrap = $('#sql-chart-wrap');
    const { columns = [], rows = [] } = this.result || {};
    const labelCol = columns.findIndex((c, i) => !this.numeric[i] && (!c.type || TEXT_TYPE.test(c.type)));
    const valCol = Number($('#sql-chart-col').value);
    // Only when the labels name the rows (e.g. a GROUP BY result): bars with repeated labels say nothing.
    const distinct = labelCol >= 0 && new Set(rows.map((r) => r[labelCol])).size === rows.length;
    if (!distinct || !this.numeric[valCol] || !rows.length) { wrap.hidden = true; return; }
    wrap.hidden = false;
    const data = rows.slice(0, 50).map((r) => ({ label: r[labelCol] == null ? 'NULL' : String(r[labelCol]), v: Number(r[valCol]) || 0 }));
    const isNs = /_ns$/.test(columns[valCol].name);
    const fmt = (v) => (isNs ? fmtDur(v) : fmtCompact(v));
    $('#sql-chart-title').textContent = `${columns[valCol].name} by ${columns[labelCol].name}`
      + (rows.length > data.length ? ` (first ${data.length} rows)` : '');
    const svg = $('#sql-chart');
    const W = Math.max(400, Math.min(1100, wrap.clientWidth - 24)), ROW = 20, L = 200, R = 80;
    const H = data.length * ROW + 6;
    setAttrs(svg, { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    const max = Math.max(1e-12, ...data.map((d) => Math.abs(d.v)));
    const g = document.createDocumentFragment();
    data.forEach((d, i) => {
      const y = i * ROW + 3;
      const w = ((W - L - R) * Math.abs(d.v)) / max;
      g.append(s('text', { class: 'chart-label', x: L - 8, y: y + 13, 'text-anchor': 'end' }, fitLabel(d.label, L - 10) || '…'));
      const el = s('rect', { class: 'cbar', x: L, y, width: Math.max(1, w), height: ROW - 5, fill: colorFor(d.label) });
      tipFor.set(el, () => [d.label, [[columns[valCol].name, isNs ? `${fmtDur(d.v)} (${fmtCount(Math.round(d.v))} ns)` : fmtCount(d.v)]]]);
      g.append(el);
      g.append(s('text', { class: 'chart-value', x: L + w + 6, y: y + 13 }, fmt(d.v)));
    });
    svg.replaceChildren(g);
  },
};

/* ============================================================ FINDINGS */

const SEVERITY_RANK = { critical: 0, error: 1, high: 1, warning: 2, medium: 2, info: 3, low: 3 };

VIEWS.findings = {
  params() { return {}; },
  init() {},

  async show(params, isCurrent) {
    const list = await getFindings();
    if (!isCurrent()) return;
    $('#findings-empty').hidden = list.length > 0;
    const sorted = list.slice().sort((a, b) => (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9));
    $('#findings').replaceChildren(...sorted.map((f) => {
      const conf = f.confidence == null ? null
        : typeof f.confidence === 'number' ? `confidence ${f.confidence <= 1 ? Math.round(f.confidence * 100) + '%' : f.confidence}`
          : `confidence ${f.confidence}`;
      const where = f.file ? `${f.file}${f.line ? ':' + f.line : ''}` : null;
      return h('li', { class: `finding-item sev-${f.severity || 'info'}`, 'data-id': f.id },
        h('span', { class: 'sev-badge' }, f.severity || 'info'),
        h('div', { class: 'finding-body' },
          h('div', { class: 'finding-title' }, h('span', { class: 'finding-id mono' }, f.id), f.title),
          h('div', { class: 'finding-meta muted' }, [f.kind, f.function && h('span', { class: 'mono' }, f.function),
            where && h('span', { class: 'mono' }, where), conf].filter(Boolean).flatMap((x, i) => (i ? [' · ', x] : [x])))),
        f.function_id != null && h('a', { class: 'source-link', href: hashFor('source', { function_id: f.function_id }) }, 'source →'));
    }));
  },
};

/* ================================================================ boot */

async function boot() {
  busy(+1);
  try {
    for (const v of Object.values(VIEWS)) v.init();
    $('#error-close').addEventListener('click', clearError);
    $('#session-picker').addEventListener('change', (e) => {
      const next = state.sessions.find((x) => x.session_id === e.target.value);
      if (!next) return;
      selectSession(next);
      go(state.view || 'timeline', {});
    });
    window.addEventListener('hashchange', route);
    if (!TOKEN) throw new ApiError(AUTH_MSG, 401);
    const d = await api('/api/sessions');
    state.sessions = d.sessions || [];
    $('.session-select').hidden = state.sessions.length === 0;
    $('#session-picker').replaceChildren(...state.sessions.map((x) => h('option', { value: x.session_id },
      `${fmtWallClock(big(x.start_ns))} · ${String(x.command || '').split(/\s+/)[0].split('/').pop()}`)));
    for (const o of $$('#session-picker option')) o.title = `${o.value}: ${state.sessions.find((x) => x.session_id === o.value).command}`;
    if (!state.sessions.length) {
      const empty = $('#empty');
      empty.hidden = false;
      empty.replaceChildren(h('h2', {}, 'No sessions recorded yet'),
        h('p', {}, 'Record one with ', h('code', {}, 'scope-agent record -f PATTERN -- ./program'), ', then reload this page.'));
      return;
    }
    const want = parseHash().params.get('session');
    selectSession(state.sessions.find((x) => x.session_id === want) || state.sessions[0]);
    await route();
  } catch (e) {
    showError(e);
    if (e.status === 401 || e.status === 403) {
      const empty = $('#empty');
      empty.hidden = false;
      empty.replaceChildren(h('h2', {}, 'Not authorised'), h('p', {}, AUTH_MSG));
    }
  } finally {
    busy(-1);
  }
}

boot();
