// outbox-relay dashboard: one vanilla script, no build step, no dependencies.
//
// Rules this file keeps (see the page contract):
// - CSP is `default-src 'self'`: no inline scripts or style attributes, so styling is by class
//   and every element is built with createElement.
// - Payloads, error messages and every other server string are untrusted: they only ever
//   reach the page through textContent or attribute values, never innerHTML.
// - The admin token lives in sessionStorage only; it is never written into the DOM.
'use strict';

const TOKEN_KEY = 'outbox-relay-token';
const HOUR = 3600;
/** "Project/p_42", or "-" for an event without an entity. */
function entityKey(ev) {
  if (ev.entity_type == null && ev.entity_id == null) return '-';
  return `${ev.entity_type ?? '-'}/${ev.entity_id ?? '-'}`;
}

/** The row's last error; once the event is COMPLETED it is history, not a failure. */
function errorFact(ev) {
  const done = ev.status === 'COMPLETED';
  return h('div', { class: 'fact wide' },
    h('dt', {}, done ? 'Last error (before it was delivered)' : 'Error'),
    h('dd', { class: done ? 'muted pre' : 'err pre' }, ev.error_message));
}

const SEARCH_FIELDS = ['id', 'type', 'org', 'entity_type', 'entity_id', 'status', 'from', 'to'];
const $ = (id) => document.getElementById(id);
const tid = (name) => document.querySelector(`[data-testid="${name}"]`);

const S = {
  token: sessionStorage.getItem(TOKEN_KEY),
  admin: false,
  adminKnown: false,
  skew: 0, // relay clock minus browser clock (ms), so ages match the relay's view of time
  view: null,
  shown: null,
  booted: false,
  overview: null,
  metaAt: 0, // when /api/overview last answered (admin flag, instance, version)
  tl: { end: null, d: [], f: [] }, // rolling hour of per-second counts, last index = second `end`
  events: null,
  ev: null,
  lastEventsHash: '#/events',
};

// ---------------------------------------------------------------- DOM helpers

// h('a', {href, class, data: {testid}}, 'text', child...): strings become text nodes.
function h(tag, opts = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(opts)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) if (kid != null && kid !== false && kid !== '') el.append(kid);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  return el;
}

// Rebuilding a table every poll would drop keyboard focus; put it back on the same control of
// the same row (rows carry data-key).
function focusMemo(el) {
  const row = el && el.closest ? el.closest('[data-key]') : null;
  return row && { row: row.dataset.key, testid: el.dataset.testid, tag: el.tagName };
}

function refocus(root, memo) {
  if (!memo) return;
  const row = [...root.querySelectorAll('[data-key]')].find((r) => r.dataset.key === memo.row);
  const target = row && (memo.testid
    ? row.querySelector(`[data-testid="${memo.testid}"]`)
    : row.querySelector(memo.tag === 'A' ? 'a' : 'button, input'));
  if (target) target.focus({ preventScroll: true });
}

function keepFocus(container, rebuild) {
  const a = document.activeElement;
  const memo = a && container.contains(a) ? focusMemo(a) : null;
  rebuild();
  refocus(container, memo);
}

// ---------------------------------------------------------------- formatting

const nf = new Intl.NumberFormat();
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});

const fmtInt = (n) => (n == null || !Number.isFinite(+n) ? '-' : nf.format(n));
const plural = (n, word) => `${nf.format(n)} ${word}${n === 1 ? '' : 's'}`;
const shortId = (id) => (String(id).length > 12 ? String(id).slice(0, 8) + '…' : String(id));
const eventHref = (id) => '#/events/' + encodeURIComponent(id);

function fmtPct(rate) {
  if (rate == null) return '-';
  const p = rate * 100;
  return (p >= 99.95 || p === 0 ? p.toFixed(0) : p.toFixed(1)) + ' %';
}

function fmtMs(ms) {
  if (ms == null) return '-';
  if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + ' s';
  return (ms < 100 ? ms.toFixed(1) : Math.round(ms)) + ' ms';
}

// "3.2 s", "45 s", "4 min", "2.5 h", "3 d"
function humanAge(sec) {
  if (sec == null || !Number.isFinite(sec)) return '-';
  sec = Math.max(0, sec);
  if (sec < 10) return sec.toFixed(1) + ' s';
  if (sec < 60) return Math.round(sec) + ' s';
  if (sec < HOUR) return Math.round(sec / 60) + ' min';
  if (sec < 86400) return (sec < 10 * HOUR ? (sec / HOUR).toFixed(1) : Math.round(sec / HOUR)) + ' h';
  return Math.round(sec / 86400) + ' d';
}

const relayNow = () => Date.now() + S.skew;

// Relative to the relay's clock. `coarse` (tables) rounds to minutes so a row only changes
// when its text would.
function ago(iso, coarse) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const s = (relayNow() - t) / 1000;
  if (coarse && Math.abs(s) < 60) return s >= 0 ? 'just now' : 'in <1 min';
  const a = humanAge(Math.abs(s)).replace(/^(\d+)\.\d (s)$/, '$1 $2');
  return s >= 0 ? a + ' ago' : 'in ' + a;
}

function fmtTime(iso) {
  if (!iso) return '-';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toDateString() === new Date().toDateString() ? timeFmt.format(d) : dateTimeFmt.format(d);
}

// Local time with the relative age beside it; the raw timestamp in the tooltip.
function timeCell(iso, coarse) {
  if (!iso) return h('span', { class: 'muted' }, '-');
  return h('span', { class: 'time', title: String(iso) }, fmtTime(iso), ' ',
    h('span', { class: 'muted small' }, ago(iso, coarse)));
}

function badge(text, kind, testid) {
  return h('span', { class: `badge badge-${kind || String(text).toLowerCase()}`, data: testid ? { testid } : {} }, text);
}

function statusBadges(ev) {
  return [badge(ev.status), ev.held && badge('held'), ev.skipped && badge('skipped')];
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message, handled = false) {
    super(message);
    this.status = status;
    this.handled = handled; // already shown (login form or 403 page): do not notify again
  }
}

async function api(path, body) {
  const sent = S.token;
  const headers = { Accept: 'application/json' };
  if (sent) headers.Authorization = 'Bearer ' + sent;
  const init = { headers, cache: 'no-store' };
  if (body !== undefined) {
    init.method = 'POST';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init).catch((e) => {
    throw new ApiError(0, 'relay unreachable: ' + e.message);
  });
  let data = null;
  try { data = await res.json(); } catch { /* empty or non-JSON body */ }
  if (res.ok) return data;
  const msg = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status} ${res.statusText}`.trim();
  if (res.status === 401) {
    // A late answer to a request made with an older token says nothing about the current one.
    if (S.token === sent) showLogin(msg);
    throw new ApiError(401, msg, true);
  }
  if (res.status === 403) {
    showBlocked(msg);
    throw new ApiError(403, msg, true);
  }
  throw new ApiError(res.status, msg);
}

function report(e) {
  if (!e || !e.handled) notify(e && e.message ? e.message : String(e), 'error');
}

// ---------------------------------------------------------------- polling

// One poller at a time, owned by the current view. fn(p) returns false to stop; it checks
// p.dead after each await so a late answer never paints over the next view.
let poll = null;

function startPoll(fn, ms) {
  stopPoll();
  poll = { fn, ms, timer: 0, busy: false, dead: false };
  runPoll(poll);
}

function stopPoll() {
  if (poll) { poll.dead = true; clearTimeout(poll.timer); }
  poll = null;
}

async function runPoll(p) {
  clearTimeout(p.timer);
  // Hidden tab: stop here; visibilitychange restarts the loop.
  if (p.dead || p.busy || document.visibilityState === 'hidden') return;
  p.busy = true;
  try {
    if ((await p.fn(p)) === false) p.dead = true;
  } catch (e) {
    report(e);
    if (e.handled) p.dead = true;
  }
  p.busy = false;
  if (!p.dead) p.timer = setTimeout(() => runPoll(p), p.ms);
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && poll) runPoll(poll);
});

// ---------------------------------------------------------------- notices, dialog, auth

let noticeTimer = 0;
function notify(msg, kind = 'ok') {
  const n = $('notice');
  if (n.textContent !== msg) n.textContent = msg;
  n.className = `notice show ${kind}`;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { n.className = 'notice'; n.textContent = ''; },
    kind === 'error' ? 15000 : 8000);
}

// Resolves true on OK. Focus starts on OK, Tab cycles inside, Escape and the backdrop cancel,
// and focus returns to whatever opened it.
function confirmDialog({ title, text, ok = 'OK', danger = false }) {
  const dlg = $('confirm-dialog');
  const okBtn = $('confirm-ok');
  const cancelBtn = $('confirm-cancel');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text || '';
  okBtn.textContent = ok;
  okBtn.className = danger ? 'btn btn-danger-solid' : 'btn btn-primary';
  const back = document.activeElement;
  const memo = focusMemo(back); // a poll may replace the button's row while we wait
  const listeners = new AbortController();
  return new Promise((resolve) => {
    const finish = (value) => {
      listeners.abort();
      if (dlg.open) dlg.close();
      if (back && back.isConnected && typeof back.focus === 'function') back.focus();
      else refocus(document, memo);
      resolve(value);
    };
    const on = (el, type, fn) => el.addEventListener(type, fn, { signal: listeners.signal });
    on(okBtn, 'click', () => finish(true));
    on(cancelBtn, 'click', () => finish(false));
    on(dlg, 'close', () => finish(false)); // closed from outside, e.g. by navigation
    on(dlg, 'cancel', (e) => { e.preventDefault(); finish(false); });
    on(dlg, 'click', (e) => { if (e.target === dlg) finish(false); }); // the backdrop
    on(dlg, 'keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); finish(false); return; }
      if (e.key !== 'Tab') return;
      e.preventDefault(); // trap: the two buttons are the only stops
      const stops = [cancelBtn, okBtn];
      const i = stops.indexOf(document.activeElement);
      stops[(i + (e.shiftKey ? stops.length - 1 : 1) + stops.length) % stops.length].focus();
    });
    dlg.showModal();
    okBtn.focus();
  });
}

// Action buttons: without admin rights they stay focusable but aria-disabled, and clicking
// one opens the login form instead of doing nothing.
function gate(btn, ready = true) {
  btn.dataset.ready = ready ? '1' : '0';
  btn.classList.add('needs-admin');
  if (!S.admin) {
    btn.disabled = false;
    btn.setAttribute('aria-disabled', 'true');
    btn.title = 'admin token required';
  } else {
    btn.removeAttribute('aria-disabled');
    btn.removeAttribute('title');
    btn.disabled = !ready;
  }
}

function actionButton(label, testid, onClick, cls = '') {
  const b = h('button', { type: 'button', class: `btn btn-small ${cls}`, data: { testid } }, label);
  b.addEventListener('click', guarded(onClick));
  gate(b);
  return b;
}

function guarded(fn) {
  return (e) => {
    if (e.currentTarget.getAttribute('aria-disabled') === 'true') showLogin('admin token required', true);
    else fn(e);
  };
}

function applyAdmin() {
  document.querySelectorAll('.needs-admin').forEach((b) => gate(b, b.dataset.ready !== '0'));
  for (const slot of document.querySelectorAll('.admin-hint-slot')) {
    slot.replaceChildren(S.adminKnown && !S.admin
      ? h('button', { type: 'button', class: 'hint-btn', onclick: () => showLogin('', true) },
        'admin token required')
      : '');
  }
  $('auth-toggle').textContent = S.token ? 'Log out' : 'Log in';
  // Without a token configured there is nothing to log in with.
  $('auth-toggle').hidden = !S.token && S.overview?.relay?.admin_token === false;
}

function showLogin(msg, voluntary = false) {
  stopPoll();
  if (!voluntary && S.token) {
    // The relay refused the token we sent: forget it rather than resend it on every poll.
    sessionStorage.removeItem(TOKEN_KEY);
    S.token = null;
  }
  const err = $('login-error');
  err.textContent = msg || '';
  err.hidden = !msg;
  show('login');
  $('token-input').value = '';
  $('token-input').focus();
  applyAdmin();
}

function showBlocked(msg) {
  stopPoll();
  $('blocked-message').textContent = msg;
  show('blocked');
}

function onLoginSubmit(e) {
  e.preventDefault();
  const input = $('token-input');
  const token = input.value.trim();
  input.value = ''; // the value property only, but clear it anyway once it is stored
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  S.token = token;
  S.metaAt = 0;
  route(true);
  $('main').focus({ preventScroll: true });
}

function onAuthToggle() {
  if (!S.token) { showLogin('', true); return; }
  sessionStorage.removeItem(TOKEN_KEY);
  S.token = null;
  S.admin = false;
  S.metaAt = 0;
  applyAdmin();
  notify('Logged out');
  route(true);
}

// ---------------------------------------------------------------- routing

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  if (path === '/events') return { view: 'events', params };
  if (path === '/audit') return { view: 'audit', params };
  const m = /^\/events\/(.+)$/.exec(path);
  if (m) {
    let id = m[1];
    try { id = decodeURIComponent(id); } catch { /* keep it raw */ }
    return { view: 'event', id };
  }
  return { view: 'overview', params };
}

function show(name) {
  $('loading').hidden = true;
  for (const v of ['login', 'blocked', 'overview', 'events', 'event', 'audit']) $('view-' + v).hidden = v !== name;
  S.shown = name;
}

// soft: re-run the current page in place (after an action or a login) without moving focus.
function route(soft = false) {
  stopPoll();
  if ($('confirm-dialog').open) $('confirm-dialog').close(); // never confirm for a page we left
  const r = parseHash();
  const changed = r.view !== S.view;
  S.view = r.view;
  const dead = r.view === 'events' && r.params.get('status') === 'FAILED';
  const navKey = r.view === 'overview' || r.view === 'audit' ? r.view : dead ? 'dead' : 'events';
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === navKey) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (r.view === 'overview') enterOverview();
  else if (r.view === 'audit') enterAudit();
  else if (r.view === 'events') enterEvents(r.params, dead);
  else enterEvent(r.id);
  // The overview poller keeps the admin flag fresh; elsewhere ask for it now and then.
  if (r.view !== 'overview' && Date.now() - S.metaAt > 30000) refreshMeta();
  const title = r.view === 'overview' ? 'Overview' : r.view === 'audit' ? 'Audit' : r.view === 'event' ? `Event ${shortId(r.id)}` : dead ? 'Dead letters' : 'Events';
  document.title = `${title} · outbox-relay`;
  if (changed && !soft && S.booted) {
    window.scrollTo(0, 0);
    $('main').focus({ preventScroll: true });
  }
}

// ---------------------------------------------------------------- audit

// The newest page polls; older pages ("Load more") stay as loaded until the view is left.
function enterAudit() {
  show('audit');
  const A = { rows: [], next: null, more: false };
  $('audit-more').onclick = async () => {
    if (!A.next) return;
    try {
      const data = await api('/api/audit?limit=50&before=' + encodeURIComponent(A.next));
      A.rows = A.rows.concat(data.entries || []);
      A.next = data.next || null;
      A.more = true;
      renderAudit(A);
    } catch (e) { report(e); }
  };
  startPoll(async (p) => {
    if (A.more) return;
    let data;
    try {
      data = await api('/api/audit?limit=50');
    } catch (e) {
      if (e.handled) throw e;
      $('audit-error').textContent = e.message;
      $('audit-error').hidden = false;
      return;
    }
    if (p.dead) return;
    $('audit-error').hidden = true;
    A.rows = data.entries || [];
    A.next = data.next || null;
    renderAudit(A);
  }, 5000);
}

/** An entry's detail as "key: value" pairs (the peer last), ids shortened. */
function auditDetail(d) {
  if (!d || typeof d !== 'object') return '';
  return Object.entries(d)
    .sort(([a], [b]) => (a === 'peer') - (b === 'peer'))
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : typeof v === 'object' ? JSON.stringify(v) : v}`)
    .join('; ');
}

function renderAudit(A) {
  const body = $('audit-body');
  body.replaceChildren(...A.rows.map((e) => h('tr', { data: { testid: 'audit-row', action: e.action } },
    h('td', { title: e.at }, fmtTime(e.at)),
    h('td', { data: { testid: 'audit-actor' } }, e.actor),
    h('td', {}, e.via),
    h('td', {}, h('span', { class: 'badge' }, e.action)),
    h('td', { class: 'mono' }, e.target),
    h('td', { class: 'muted small' }, auditDetail(e.detail)))));
  $('audit-empty').hidden = A.rows.length > 0;
  $('audit-more').hidden = !A.next;
}

// ---------------------------------------------------------------- overview

const overviewPath = () => '/api/overview' + (S.tl.end == null ? '' : '?since=' + S.tl.end);

function refreshMeta() {
  S.metaAt = Date.now();
  return api(overviewPath()).then(applyOverview, report);
}

function applyOverview(o) {
  S.overview = o;
  S.metaAt = Date.now();
  S.admin = !!o.admin;
  S.adminKnown = true;
  const r = o.relay || {};
  $('relay-info').textContent = [r.instance, r.version && 'v' + r.version].filter(Boolean).join(' · ');
  const now = Date.parse(r.now);
  if (!Number.isNaN(now)) S.skew = now - Date.now();
  if (o.timeline) mergeTimeline(o.timeline);
  applyAdmin();
}

// Seconds that come back again overwrite what we had (the relay may resend a second that was
// still counting); a jump of more than an hour either way starts a fresh buffer.
function mergeTimeline(t) {
  const end = Number(t.end);
  if (!Number.isFinite(end)) return;
  const d = t.delivered || [];
  const f = t.failed || [];
  const tl = S.tl;
  if (tl.end == null || end <= tl.end - HOUR || end - tl.end >= HOUR) {
    tl.d = new Array(HOUR).fill(0);
    tl.f = new Array(HOUR).fill(0);
    tl.end = end;
  } else if (end > tl.end) {
    const k = end - tl.end;
    tl.d = tl.d.slice(k).concat(new Array(k).fill(0));
    tl.f = tl.f.slice(k).concat(new Array(k).fill(0));
    tl.end = end;
  }
  const n = Math.max(d.length, f.length);
  for (let i = 0; i < n; i++) {
    const idx = HOUR - 1 - (tl.end - (end - n + 1 + i));
    if (idx < 0 || idx >= HOUR) continue;
    tl.d[idx] = Number(d[i]) || 0;
    tl.f[idx] = Number(f[i]) || 0;
  }
}

function enterOverview() {
  show('overview');
  if (S.overview) renderOverview(S.overview);
  startPoll(async (p) => {
    const o = await api(overviewPath());
    if (p.dead) return;
    applyOverview(o);
    renderOverview(o);
  }, 2000);
}

function renderOverview(o) {
  const q = o.queue || {};
  tid('queue-pending').textContent = fmtInt(q.pending);
  tid('queue-processing').textContent = fmtInt(q.processing);
  tid('oldest-pending').textContent = humanAge(q.oldest_pending_age_seconds);
  tid('queue-failed').textContent = fmtInt(q.failed);
  tid('queue-failed').closest('.card').classList.toggle('alarm', q.failed > 0);
  tid('sse-subscribers').textContent = o.sse && o.sse.enabled ? fmtInt(o.sse.subscribers) : 'off';
  const instances = o.instances || [];
  tid('instances').textContent = fmtInt(instances.filter((i) => i.state === 'live').length);
  $('chart-scope').textContent = o.cluster
    ? 'per second, every relay on the table (the busiest second of each slot)'
    : 'per second, this instance only: the relays\' reports cannot be read (run migrate, and check the role\'s grants)';
  $('endpoints-scope').textContent = o.cluster ? 'all relays, last 5 minutes' : 'this instance, last 5 minutes';
  drawChart();

  const eps = $('endpoints-body');
  keepFocus(eps, () => eps.replaceChildren(...(o.endpoints || []).map(endpointRow)));
  if (!(o.endpoints || []).length) {
    eps.append(h('tr', {}, h('td', { class: 'empty', colspan: '8' }, 'No endpoints configured.')));
  }

  const blocked = o.blocked_keys || [];
  $('blocked-panel').hidden = blocked.length === 0;
  const bb = $('blocked-body');
  keepFocus(bb, () => bb.replaceChildren(...blocked.map(blockedRow)));

  const r = o.relay || {};
  $('relay-facts').replaceChildren(
    fact('Instance', r.instance), fact('Version', r.version),
    fact('Started', timeCell(r.started_at)), fact('Table', h('code', {}, r.table || '-')),
    fact('Ordering', r.ordering ? 'on (per entity key)' : 'off'),
    fact('SSE', o.sse && o.sse.enabled ? 'enabled' : 'disabled'));
  $('instances-body').replaceChildren(...instances.map(instanceRow));
}

// One relay in the breakdown: live, stopped (shut down cleanly) or gone (silent past twice its
// report interval), with its share of the last 5 minutes.
const INSTANCE_STATES = { live: 'active', stopped: 'paused', gone: 'disabled' };

function instanceRow(i) {
  return h('tr', { data: { testid: 'instance-row', name: i.name, state: i.state } },
    h('td', {}, i.name, i.this ? h('span', { class: 'muted small' }, ' (this page)') : null),
    h('td', {}, badge(i.state, INSTANCE_STATES[i.state] || 'paused', 'instance-state')),
    h('td', {}, i.version || '-'),
    h('td', { class: 'num', data: { testid: 'instance-delivered' } }, fmtInt(i.delivered_5m)),
    h('td', { class: 'num' }, fmtInt(i.failed_5m)),
    h('td', { class: 'num' }, fmtInt(i.in_flight)),
    h('td', { class: 'num' }, fmtInt(i.connections)),
    h('td', {}, timeCell(i.started_at)),
    h('td', {}, i.this ? h('span', { class: 'muted' }, 'live') : timeCell(i.seen_at)));
}

function fact(label, value) {
  return h('div', { class: 'fact' }, h('dt', {}, label), h('dd', {}, value == null || value === '' ? '-' : value));
}

// An endpoint's state: active, paused by an operator, held by its open circuit breaker, or
// disabled after failing for disable_after; with what the relays know about it.
const PAUSE_STATES = { operator: ['paused', 'paused'], circuit: ['circuit open', 'circuit'], disabled: ['disabled', 'disabled'] };

function endpointState(ep) {
  const p = ep.pause;
  if (!ep.paused || !p) return badge(ep.paused ? 'paused' : 'active', null, 'endpoint-state');
  const [text, kind] = PAUSE_STATES[p.reason] || PAUSE_STATES.operator;
  const b = badge(text, kind, 'endpoint-state');
  const bits = [];
  if (p.failing_for_s != null) bits.push(`failing for ${humanAge(p.failing_for_s)}`);
  if (p.probe_in_s != null) bits.push(p.probe_in_s > 0 ? `next probe in ${humanAge(p.probe_in_s)}` : 'probing');
  if (p.last_error) bits.push(`last error: ${p.last_error}`);
  if (p.reason === 'operator') bits.push(`since ${p.since}${p.by ? ` by ${p.by}` : ''}`);
  b.title = bits.join('; ');
  return b;
}

function endpointRow(ep) {
  const verb = !ep.paused ? 'Pause' : ep.pause && ep.pause.reason === 'disabled' ? 'Enable' : 'Resume';
  const toggle = actionButton(verb, 'endpoint-toggle', () => toggleEndpoint(ep));
  toggle.setAttribute('aria-label', `${verb} endpoint ${ep.name}`);
  const replay = actionButton('Replay…', 'endpoint-replay', () => replayDialog(ep.name));
  replay.setAttribute('aria-label', `Replay events to endpoint ${ep.name}`);
  const span = humanAge(ep.window_seconds);
  const rateTitle = ep.attempts
    ? `${fmtInt(ep.succeeded)} of ${fmtInt(ep.attempts)} attempts succeeded in the last ${span}`
    : `no attempts in the last ${span}`;
  const le = ep.last_error;
  return h('tr', { class: 'endpoint-row', data: { testid: 'endpoint-row', name: ep.name, key: ep.name } },
    h('th', { scope: 'row' }, ep.name),
    h('td', {}, h('span', { class: 'trunc mono small', title: ep.url }, ep.url)),
    h('td', {}, endpointState(ep)),
    h('td', { class: `num${ep.success_rate != null && ep.success_rate < 0.95 ? ' bad' : ''}`, title: rateTitle },
      fmtPct(ep.success_rate)),
    h('td', { class: 'num' }, fmtMs(ep.p99_ms)),
    h('td', { class: 'num' }, fmtInt(ep.in_flight)),
    h('td', { class: 'last-error' }, le
      ? [h('span', { class: 'muted small nowrap', title: String(le.at) }, ago(le.at)), ' ',
        h('span', { class: 'trunc err', title: le.message }, le.message)]
      : h('span', { class: 'muted' }, 'none')),
    h('td', { class: 'actions' }, toggle, ' ', replay));
}

function blockedRow(b) {
  const key = `${b.entity_type}/${b.entity_id}`;
  const skip = actionButton('Skip', 'blocked-skip', () => changeEvents('skip', [b.event_id],
    `Event ${b.event_id} heads ${key}; the ${plural(b.waiting, 'event')} waiting behind it proceed, and it is not delivered again.`),
  'btn-danger');
  skip.setAttribute('aria-label', `Skip head event of ${key}`);
  return h('tr', { data: { testid: 'blocked-row', key: b.event_id } },
    h('td', { class: 'mono small' }, key),
    h('td', {}, h('a', { href: eventHref(b.event_id), class: 'mono small', title: b.event_id,
      'aria-label': `Event ${b.event_id}` }, shortId(b.event_id))),
    h('td', {}, h('span', { class: 'trunc err', title: b.error_message || '' }, b.error_message || '')),
    h('td', { class: 'num' }, fmtInt(b.waiting)),
    h('td', { class: 'actions' }, skip));
}

// 1, 2, 5 x 10^k: round y-axis tops.
function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// Per-second counts over the hour, drawn at the element's real pixel size (so text and
// strokes are not stretched). Each slot is a few pixels wide and shows the peak second in it,
// which keeps a lone failure visible at phone width.
function drawChart() {
  const svg = $('chart-svg');
  const fig = $('chart');
  const { d, f } = S.tl;
  if (!d.length) return;
  const rect = svg.getBoundingClientRect();
  const W = Math.max(240, Math.round(rect.width));
  const H = Math.max(140, Math.round(rect.height));
  const L = 44, R = 12, T = 12, B = 24;
  const pw = W - L - R, ph = H - T - B;
  const n = Math.max(1, Math.min(HOUR, Math.floor(pw / 3)));
  const bd = new Array(n).fill(0), bf = new Array(n).fill(0);
  let sumD = 0, sumF = 0;
  for (let i = 0; i < HOUR; i++) {
    const b = Math.floor((i * n) / HOUR);
    if (d[i] > bd[b]) bd[b] = d[i];
    if (f[i] > bf[b]) bf[b] = f[i];
    sumD += d[i];
    sumF += f[i];
  }
  const top = niceCeil(Math.max(1, ...bd, ...bf));
  const x = (i) => (L + ((i + 0.5) * pw) / n).toFixed(1);
  const y = (v) => (T + ph - (v / top) * ph).toFixed(1);
  const path = (arr) => arr.map((v, i) => `${i ? 'L' : 'M'}${x(i)} ${y(v)}`).join('');

  const desc = svgEl('desc', { id: 'chart-desc' });
  const kids = [desc];
  for (const frac of [0, 0.5, 1]) {
    const yy = y(top * frac);
    kids.push(svgEl('line', { class: frac ? 'grid' : 'axis', x1: L, x2: W - R, y1: yy, y2: yy }));
    if (frac !== 0.5 || top >= 2) {
      kids.push(svgEl('text', { class: 'tick', x: L - 6, y: yy, 'text-anchor': 'end', 'dominant-baseline': 'middle' },
        frac === 1 ? `${nf.format(top)}/s` : nf.format(top * frac)));
    }
  }
  const marks = pw < 360 ? [60, 30, 0] : [60, 45, 30, 15, 0];
  for (const m of marks) {
    const xx = L + pw * (1 - m / 60);
    kids.push(svgEl('text', {
      class: 'tick', x: xx.toFixed(1), y: H - 6,
      'text-anchor': m === 60 ? 'start' : m === 0 ? 'end' : 'middle',
    }, m === 0 ? 'now' : `-${m} min`));
  }
  kids.push(svgEl('path', { class: 'area-delivered', d: `${path(bd)}L${x(n - 1)} ${y(0)}L${x(0)} ${y(0)}Z` }));
  kids.push(svgEl('path', { class: 'line-delivered', d: path(bd) }));
  kids.push(svgEl('path', { class: 'line-failed', d: path(bf) }));
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.replaceChildren(...kids);

  const last = (arr) => arr.slice(-10).reduce((a, b) => a + b, 0) / 10;
  const rate = (v) => (v >= 100 ? Math.round(v) : v.toFixed(1));
  const rd = rate(last(d)), rf = rate(last(f));
  fig.dataset.deliveredTotal = String(sumD);
  fig.dataset.failedTotal = String(sumF);
  $('chart-rates').replaceChildren(
    h('span', { class: 'rate' }, h('strong', {}, `${rd}/s`), ' delivered'),
    h('span', { class: 'rate' }, h('strong', { class: sumF && +rf ? 'bad' : '' }, `${rf}/s`), ' failed'),
    h('span', { class: 'muted' }, 'last 10 s'),
    h('span', { class: 'muted' }, `hour: ${nf.format(sumD)} delivered, ${nf.format(sumF)} failed`));
  desc.textContent = `Deliveries per second over the last hour, peak ${top} per second. ` +
    `${nf.format(sumD)} delivered and ${nf.format(sumF)} failed attempts; now ${rd} delivered and ${rf} failed per second.`;
}

function toggleEndpoint(ep) {
  const pause = !ep.paused;
  return act({
    title: `${pause ? 'Pause' : 'Resume'} endpoint ${ep.name}?`,
    text: pause
      ? 'Deliveries to it stop; its events are held (not failed) until it is resumed.'
      : ep.pause && ep.pause.reason !== 'operator'
        ? `Its ${ep.pause.reason === 'circuit' ? 'circuit breaker opened' : 'deliveries were disabled'} because it kept failing. Held events are sent to it again now; if it still fails, the breaker opens again.`
        : 'Held events are delivered to it again.',
    ok: pause ? 'Pause' : 'Resume',
    danger: pause,
    path: `/api/endpoints/${encodeURIComponent(ep.name)}/${pause ? 'pause' : 'resume'}`,
    body: {},
    done: (r) => `Endpoint ${r && r.name ? r.name : ep.name} ${r && r.paused ? 'paused' : 'resumed'}`,
  });
}

// Replay: count what the window holds (a dry run), then send those events to this endpoint
// again. The Replay button is enabled only by a count of the inputs as they are now.
function replayDialog(name) {
  const dlg = $('replay-dialog');
  const since = $('replay-since'), types = $('replay-type'), count = $('replay-count');
  const okBtn = $('replay-ok');
  $('replay-title').textContent = `Replay events to ${name}`;
  const path = `/api/endpoints/${encodeURIComponent(name)}/replay`;
  const body = (dryRun) => ({ since: since.value.trim(), type: types.value.trim() || '*', dry_run: dryRun });
  let counted = null; // the inputs the count was made for, and the count
  const stale = () => {
    counted = null;
    okBtn.disabled = true;
    okBtn.textContent = 'Replay';
  };
  const back = document.activeElement;
  const memo = focusMemo(back);
  const listeners = new AbortController();
  const on = (el, type, fn) => el.addEventListener(type, fn, { signal: listeners.signal });
  const finish = () => {
    listeners.abort();
    if (dlg.open) dlg.close();
    if (back && back.isConnected && typeof back.focus === 'function') back.focus();
    else refocus(document, memo);
  };
  stale();
  count.textContent = '';
  on(since, 'input', stale);
  on(types, 'input', stale);
  on($('replay-cancel'), 'click', finish);
  on(dlg, 'close', finish);
  on(dlg, 'cancel', (e) => { e.preventDefault(); finish(); });
  on($('replay-form'), 'submit', async (e) => {
    e.preventDefault();
    const asked = body(true);
    count.textContent = 'Counting…';
    let r;
    try { r = await api(path, asked); } catch (err) { count.textContent = err.message; return; }
    counted = { since: asked.since, type: asked.type, n: r.count };
    count.textContent = `${plural(r.count, 'event')} of type ${asked.type} created since ${asked.since} ` +
      `went to ${name}; replaying sends ${r.count === 1 ? 'it' : 'them'} again, to ${name} only.`;
    okBtn.disabled = r.count === 0;
    okBtn.textContent = `Replay ${plural(r.count, 'event')}`;
    if (r.count) okBtn.focus();
  });
  on(okBtn, 'click', async () => {
    if (!counted) return;
    let r;
    try { r = await api(path, { since: counted.since, type: counted.type, dry_run: false }); } catch (err) { report(err); return; }
    finish();
    notify(`${plural(r.count, 'event')} sent again to ${name}`);
    route(true);
  });
  dlg.showModal();
  since.focus();
  since.select();
}

// ---------------------------------------------------------------- actions

async function act({ title, text, ok, danger, path, body, done }) {
  if (!(await confirmDialog({ title, text, ok, danger }))) return;
  let res;
  try { res = await api(path, body); } catch (e) { report(e); return; }
  const [msg, kind] = [].concat(done(res));
  notify(msg, kind || 'ok');
  route(true);
}

// kind: 'retry' | 'skip'
function changeEvents(kind, ids, detail) {
  const retry = kind === 'retry';
  const n = ids.length;
  return act({
    title: `${retry ? 'Retry' : 'Skip'} ${plural(n, 'dead-letter event')}?`,
    text: detail || (retry
      ? 'They go back to PENDING and are delivered again to the endpoints that have not accepted them.'
      : 'The relay gives up on them for good; with ordering on, the events waiting behind them proceed.'),
    ok: retry ? 'Retry' : 'Skip',
    danger: !retry,
    path: `/api/events/${kind}`,
    body: { ids },
    done: (r) => {
      const verb = retry ? 'retried' : 'skipped';
      const ok = (r && r.done ? r.done.length : 0), no = (r && r.not_done ? r.not_done.length : 0);
      const parts = [];
      if (ok) parts.push(`${plural(ok, 'event')} ${verb}`);
      if (no) parts.push(`${nf.format(no)} not ${verb} (${retry ? 'not FAILED any more' : 'not FAILED or already skipped'})`);
      return [parts.join('. ') || `nothing ${verb}`, no ? 'warn' : 'ok'];
    },
  });
}

// ---------------------------------------------------------------- events list

function enterEvents(params, dead) {
  show('events');
  S.lastEventsHash = location.hash || '#/events';
  // Re-running the same search (after an action) keeps the old rows up until the new ones come.
  const prev = S.events && S.events.key === params.toString() ? S.events : null;
  S.events = {
    key: params.toString(), params, rows: prev ? prev.rows : [], next: null, more: false,
    loaded: !!(prev && prev.loaded), sel: new Set(), sig: '',
  };
  const form = $('search-form');
  for (const name of SEARCH_FIELDS) form.elements[name].value = params.get(name) || '';
  $('events-title').textContent = dead ? 'Dead letters' : 'Events';
  renderEvents();
  startPoll(async (p) => {
    const E = S.events;
    // Leave the list alone while the user works on it (more pages loaded, rows ticked).
    if (E.loaded && (E.more || E.sel.size)) return;
    const data = await api('/api/events?' + eventsQuery(params));
    if (p.dead) return;
    E.rows = data.events || [];
    E.next = data.next || null;
    E.loaded = true;
    renderEvents();
  }, 5000);
}

// The hash keeps the form's raw values (linkable); the API wants RFC 3339 for from/to.
function eventsQuery(params, before) {
  const q = new URLSearchParams();
  for (const name of SEARCH_FIELDS) {
    const v = (params.get(name) || '').trim();
    if (!v) continue;
    if (name === 'from' || name === 'to') {
      const t = new Date(v);
      if (!Number.isNaN(t.getTime())) q.set(name, t.toISOString());
    } else {
      q.set(name, v);
    }
  }
  if (before) q.set('before', before);
  q.set('limit', '50');
  return q.toString();
}

function onSearch(e) {
  e.preventDefault();
  const q = new URLSearchParams();
  for (const [k, v] of new FormData(e.currentTarget)) if (String(v).trim()) q.set(k, String(v).trim());
  const hash = '#/events' + (q.toString() ? '?' + q : '');
  if (location.hash === hash) route(true); // same search again: hashchange would not fire
  else location.hash = hash;
}

async function loadMore() {
  const E = S.events;
  if (!E || !E.next) return;
  const btn = $('events-more');
  btn.disabled = true;
  try {
    const data = await api('/api/events?' + eventsQuery(E.params, E.next));
    if (S.events !== E) return;
    const first = E.rows.length;
    E.rows = E.rows.concat(data.events || []);
    E.next = data.next || null;
    E.more = true;
    renderEvents();
    // The button may have gone (last page): continue from the first new row instead.
    if (!E.next) {
      const link = $('events-body').children[first]?.querySelector('a');
      if (link) link.focus();
    }
  } catch (err) {
    report(err);
  } finally {
    btn.disabled = false;
  }
}

function renderEvents() {
  const E = S.events;
  const minute = Math.floor(Date.now() / 60000); // coarse ages change once a minute
  const sig = JSON.stringify([E.rows, E.next, E.loaded, minute]);
  if (sig !== E.sig) {
    E.sig = sig;
    const body = $('events-body');
    keepFocus(body, () => body.replaceChildren(...E.rows.map(eventRow)));
  }
  const empty = $('events-empty');
  empty.hidden = E.rows.length > 0;
  empty.textContent = E.loaded ? 'No events match.' : 'Loading…';
  $('events-more').hidden = !E.next;
  updateSelection();
}

function eventRow(ev) {
  const E = S.events;
  let box = null;
  if (ev.status === 'FAILED') {
    box = h('input', { type: 'checkbox', 'aria-label': `Select event ${ev.id}`, data: { testid: 'event-select' } });
    box.checked = E.sel.has(ev.id);
    box.addEventListener('change', () => {
      if (box.checked) E.sel.add(ev.id); else E.sel.delete(ev.id);
      updateSelection();
    });
  }
  return h('tr', { class: 'event-row', data: { testid: 'event-row', id: ev.id, status: ev.status, key: ev.id } },
    h('td', { class: 'check-cell' }, box),
    h('td', {}, h('a', { href: eventHref(ev.id), class: 'mono', title: ev.id, 'aria-label': `Event ${ev.id}` }, shortId(ev.id))),
    h('td', { class: 'nowrap' }, timeCell(ev.created_at, true)),
    h('td', { class: 'mono small' }, ev.event_type),
    h('td', {}, ev.org_id),
    h('td', { class: 'small' }, entityKey(ev)),
    h('td', { class: 'nowrap' }, statusBadges(ev)),
    h('td', { class: 'num' }, fmtInt(ev.retry_count)),
    h('td', {}, ev.error_message ? h('span', { class: ev.status === 'COMPLETED' ? 'trunc muted' : 'trunc err', title: ev.error_message }, ev.error_message) : ''));
}

function updateSelection() {
  const E = S.events;
  const failed = E.rows.filter((r) => r.status === 'FAILED').map((r) => r.id);
  for (const id of [...E.sel]) if (!failed.includes(id)) E.sel.delete(id);
  const n = E.sel.size;
  const all = $('select-all');
  all.disabled = failed.length === 0;
  all.checked = failed.length > 0 && n === failed.length;
  all.indeterminate = n > 0 && n < failed.length;
  $('selection-count').textContent = n ? `${nf.format(n)} selected` : '';
  gate($('retry-selected'), n > 0);
  gate($('skip-selected'), n > 0);
}

function onSelectAll(e) {
  const E = S.events;
  E.sel.clear();
  if (e.currentTarget.checked) for (const r of E.rows) if (r.status === 'FAILED') E.sel.add(r.id);
  for (const box of $('events-body').querySelectorAll('[data-testid="event-select"]')) {
    box.checked = E.sel.has(box.closest('tr').dataset.id);
  }
  updateSelection();
}

// ---------------------------------------------------------------- one event

function enterEvent(id) {
  show('event');
  const same = S.ev && S.ev.id === id; // a refresh after an action: keep what is shown
  S.ev = { id, sig: '' };
  $('event-back').href = S.lastEventsHash;
  $('event-back').textContent = S.lastEventsHash.includes('status=FAILED') ? '← Dead letters' : '← Events';
  if (!same) clearEvent(id);
  startPoll((p) => pollEvent(p, id), 3000);
}

function clearEvent(id) {
  $('event-id').textContent = id;
  $('event-status').textContent = '…';
  $('event-status').className = 'badge';
  for (const el of ['event-flags', 'event-facts', 'event-endpoints', 'event-attempts', 'event-payload', 'event-envelope']) {
    $(el).replaceChildren();
  }
  for (const el of ['event-error', 'event-retry', 'event-skip', 'attempts-empty']) $(el).hidden = true;
  $('view-event').classList.remove('missing');
}

async function pollEvent(p, id) {
  let data;
  try {
    data = await api('/api/events/' + encodeURIComponent(id));
  } catch (e) {
    if (p.dead || e.status !== 404) throw e;
    $('event-error').textContent = e.message || 'No such event.';
    $('event-error').hidden = false;
    $('view-event').classList.add('missing');
    $('event-status').textContent = 'not found';
    return false;
  }
  if (p.dead || !data || !data.event) return false;
  renderEvent(data.event);
  // COMPLETED and skipped events do not change any more.
  return !(data.event.status === 'COMPLETED' || data.event.skipped);
}

function renderEvent(ev) {
  const sig = JSON.stringify([ev, Math.floor(Date.now() / 10000)]);
  if (sig === S.ev.sig) return;
  S.ev.sig = sig;
  const failed = ev.status === 'FAILED';
  const st = $('event-status');
  st.textContent = ev.status;
  st.className = `badge badge-${String(ev.status).toLowerCase()}`;
  $('event-flags').replaceChildren(ev.held ? badge('held') : '', ev.skipped ? badge('skipped') : '');

  const heldFor = Array.isArray(ev.held_for) && ev.held_for.length ? ev.held_for.join(', ') : 'a paused endpoint';
  const next = ev.held ? h('span', { class: 'badge badge-held' }, `held for ${heldFor}`) : timeCell(ev.next_attempt_at);
  $('event-facts').replaceChildren(
    fact('Type', h('span', { class: 'mono' }, ev.event_type)),
    fact('Org', ev.org_id),
    fact('Entity', entityKey(ev)),
    fact('Created', timeCell(ev.created_at)),
    fact('Processed', timeCell(ev.processed_at)),
    fact('Next attempt', next),
    fact('Retries', fmtInt(ev.retry_count)),
    fact('Delivered to', (ev.delivered_to || []).join(', ') || 'none yet'),
    ev.error_message ? errorFact(ev) : '');

  const retry = $('event-retry'), skip = $('event-skip');
  retry.hidden = !failed;
  skip.hidden = !(failed && !ev.skipped);
  gate(retry);
  gate(skip);

  const eps = $('event-endpoints');
  keepFocus(eps, () => eps.replaceChildren(...(ev.endpoints || []).map((e) => h('tr', {
    data: { testid: 'event-endpoint', name: e.name, accepted: String(!!e.accepted), key: e.name },
  },
  h('th', { scope: 'row' }, e.name),
  h('td', {}, e.wants ? 'yes' : h('span', { class: 'muted' }, 'no')),
  h('td', {}, e.accepted ? badge('accepted', 'ok') : e.wants ? badge('not yet', 'pending') : h('span', { class: 'muted' }, '-')),
  h('td', {}, e.paused ? badge('paused') : badge('active'))))));

  const attempts = ev.attempts || [];
  $('event-attempts').replaceChildren(...attempts.map((a) => h('tr', { data: { testid: 'attempt-row' } },
    h('td', { class: 'nowrap' }, timeCell(a.at)),
    h('td', {}, a.endpoint == null ? h('span', { class: 'muted' }, '-') : a.endpoint),
    h('td', {}, a.ok ? badge('ok') : badge('failed')),
    h('td', { class: 'num' }, a.status == null ? '-' : String(a.status)),
    h('td', { class: 'num' }, a.ms == null ? '-' : Number(a.ms).toFixed(1)),
    h('td', { class: 'err pre' }, a.error || ''))));
  $('attempts-empty').hidden = attempts.length > 0;

  // Only touch the JSON when it changed, so a selection or scroll position in it survives.
  setIfChanged($('event-payload'), prettyJson(ev.payload));
  setIfChanged($('event-envelope'), prettyJson(ev.envelope));
}

const prettyJson = (v) => (v === undefined ? '-' : JSON.stringify(v, null, 2));
function setIfChanged(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// ---------------------------------------------------------------- start

function init() {
  window.addEventListener('hashchange', () => route());
  $('login-form').addEventListener('submit', onLoginSubmit);
  $('login-cancel').addEventListener('click', () => route(true));
  $('auth-toggle').addEventListener('click', onAuthToggle);
  $('blocked-retry').addEventListener('click', () => route(true));
  $('search-form').addEventListener('submit', onSearch);
  $('select-all').addEventListener('change', onSelectAll);
  $('events-more').addEventListener('click', loadMore);
  $('notice').addEventListener('click', () => { $('notice').className = 'notice'; });
  $('retry-selected').addEventListener('click', guarded(() => changeEvents('retry', [...S.events.sel])));
  $('skip-selected').addEventListener('click', guarded(() => changeEvents('skip', [...S.events.sel])));
  $('event-retry').addEventListener('click', guarded(() => changeEvents('retry', [S.ev.id])));
  $('event-skip').addEventListener('click', guarded(() => changeEvents('skip', [S.ev.id])));
  for (const b of ['retry-selected', 'skip-selected', 'event-retry', 'event-skip']) gate($(b), false);

  // Redraw at the new size; the buckets depend on the width in pixels.
  let raf = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(raf);
    raf = requestAnimationFrame(() => { if (S.shown === 'overview') drawChart(); });
  }).observe($('chart-svg'));

  applyAdmin();
  route();
  S.booted = true;
}

init();
