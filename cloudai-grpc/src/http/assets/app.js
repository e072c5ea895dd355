// The CloudAI-rs dashboard: plain JavaScript over the master's JSON API,
// live through its event stream (server-sent events). No build step.
'use strict';

let csrf = null;

// ---- helpers ---------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

async function api(path, method) {
  const headers = {};
  if (method && method !== 'GET' && csrf) headers['X-CSRF-Token'] = csrf;
  const r = await fetch(path, { method: method || 'GET', headers, credentials: 'same-origin' });
  if (r.status === 401) {
    location.href = '/login';
    throw new Error('logged out');
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function showError(e) {
  const p = document.getElementById('error');
  p.textContent = e ? String(e.message || e) : '';
  p.hidden = !e;
}

function ago(ms) {
  if (!ms) return '-';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return s + 's ago';
  if (s < 7200) return Math.round(s / 60) + 'm ago';
  return Math.round(s / 3600) + 'h ago';
}

function bar(used, total, unit) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const fill = h('span');
  fill.style.width = pct + '%';
  return [h('span', { class: 'bar', title: pct.toFixed(0) + '%' }, fill),
    h('small', {}, `${+used.toFixed(2)} / ${+total.toFixed(2)}${unit}`)];
}

const enc = encodeURIComponent;

function command(spec) {
  return [spec.image, ...(spec.command || [])].join(' ');
}

async function act(path, what) {
  try {
    await api(path, 'POST');
    showError(null);
  } catch (e) {
    showError(new Error(what + ': ' + e.message));
  }
  refresh();
}

// ---- times, exits -----------------------------------------------------------

// A time of day (with the date if not today's), in the browser's zone.
function clock(ms) {
  if (!ms) return '-';
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour12: false });
  if (d.toDateString() === new Date().toDateString()) return time;
  return d.toLocaleDateString([], { month: '2-digit', day: '2-digit' }) + ' ' + time.slice(0, 5);
}

// A run time: 0.4s, 42s, 3m07s, 2h05m, 3d04h.
function span(ms) {
  if (ms === null || ms === undefined || ms < 0) return '-';
  const s = Math.floor(ms / 1000);
  const two = (n) => String(n).padStart(2, '0');
  if (s < 10) return (ms / 1000).toFixed(1) + 's';
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm' + two(s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h' + two(Math.floor((s % 3600) / 60)) + 'm';
  return Math.floor(s / 86400) + 'd' + two(Math.floor((s % 86400) / 3600)) + 'h';
}

// How long a run took: to its end, or until now while it runs.
function took(run) {
  if (!run || !run.started_at) return '-';
  return span((run.ended_at || Date.now()) - run.started_at);
}

const SIGNALS = { 1: 'HUP', 2: 'INT', 3: 'QUIT', 4: 'ILL', 5: 'TRAP', 6: 'ABRT', 7: 'BUS', 8: 'FPE', 9: 'KILL',
  10: 'USR1', 11: 'SEGV', 12: 'USR2', 13: 'PIPE', 14: 'ALRM', 15: 'TERM', 24: 'XCPU', 25: 'XFSZ' };

// An exit: the code (0, 1), or the signal (SIGKILL); '-' if neither.
function exitText(code, signal) {
  if (code !== null && code !== undefined) return String(code);
  if (signal) return SIGNALS[signal] ? 'SIG' + SIGNALS[signal] : 'signal ' + signal;
  return '-';
}

function request(r) {
  return r ? `${r.cpu} cpu, ${r.memory_gb} GB` + (r.gpus ? `, ${r.gpus} gpu` : '') : '-';
}

function labelText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(',');
}

const STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

// An array's counts: "40 tasks: 12 running, 25 completed, 3 failed".
function countsText(c) {
  const total = STATUSES.reduce((n, s) => n + (c[s] || 0), 0);
  const each = STATUSES.filter((s) => c[s] > 0).map((s) => `${c[s]} ${s}`);
  return `${total} task${total === 1 ? '' : 's'}` + (each.length ? ': ' + each.join(', ') : '');
}

// ---- the overview: counts, workers, tasks ----------------------------------

// The list's filters live in the address (#/?array=...&name=...), so a
// filtered list can be linked to; `pages` are the keys of the pages seen.
const FILTERS = ['status', 'worker', 'array', 'name', 'label'];
const list = { key: null, pages: [null], open: new Set() };

function listFilters() {
  const q = new URLSearchParams((location.hash.match(/^#\/\?(.*)$/) || [])[1] || '');
  const f = {};
  for (const k of FILTERS) f[k] = (q.get(k) || '').trim();
  return f;
}

function filterHash(f) {
  const q = new URLSearchParams();
  for (const k of FILTERS) if (f[k]) q.set(k, f[k]);
  const s = q.toString();
  return s ? '#/?' + s : '#/';
}

async function renderCounts() {
  const o = await api('/api/overview');
  const c = o.counts;
  const counts = document.getElementById('counts');
  counts.replaceChildren(...STATUSES.flatMap((s) => [h('b', {}, c[s]), ` ${s}  `]));
  return o;
}

function workersTable(workers) {
  return h('table', { id: 'workers' },
    h('tr', {}, ['worker', 'health', 'drain', 'CPU', 'memory', 'GPUs', 'tasks', 'labels', 'last heartbeat', ''].map((t) => h('th', {}, t))),
    workers.map((w) => h('tr', { 'data-worker': w.id },
      h('td', {}, h('code', {}, w.id), h('br'), h('small', { class: 'muted' }, w.address || '')),
      h('td', { class: 'health ' + w.health }, w.health),
      h('td', { class: 'drain' }, w.drain || '-'),
      h('td', {}, bar(w.cpu[0], w.cpu[1], ' cores')),
      h('td', {}, bar(w.memory_gb[0], w.memory_gb[1], ' GB')),
      h('td', { class: 'gpus' }, w.gpu_devices.length === 0 ? '-'
        : w.gpu_devices.map((g) => h('div', {}, `${g.index}: `, g.task ? h('code', {}, g.task) : 'free'))),
      h('td', { class: 'num' }, w.tasks),
      h('td', { class: 'labels', title: labelText(w.labels) }, labelText(w.labels) || '-'),
      h('td', {}, ago(w.last_heartbeat)),
      h('td', {}, w.drain
        ? h('button', { class: 'undrain', onclick: () => act(`/api/workers/${enc(w.id)}/undrain`, 'undrain') }, 'Undrain')
        : h('button', { class: 'drain', onclick: () => act(`/api/workers/${enc(w.id)}/drain`, 'drain') }, 'Drain')))));
}

// What is typed in the filters but not yet applied: a live update
// repaints the list, and keeps it.
let draft = {};

function filters(f) {
  const status = h('select', { name: 'status' },
    ['', ...STATUSES].map((s) => h('option', { value: s, selected: s === f.status }, s || 'any status')));
  const input = (name, placeholder) => h('input', {
    name, placeholder, value: draft[name] ?? f[name], oninput: (e) => { draft[name] = e.target.value; },
  });
  const worker = input('worker', 'worker');
  const array = input('array', 'array');
  const name = input('name', 'name');
  const label = input('label', 'label k=v');
  return h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      const wanted = filterHash({ status: status.value, worker: worker.value.trim(), array: array.value.trim(),
        name: name.value.trim(), label: label.value.trim() });
      draft = {};
      if (location.hash === wanted) refresh();
      else location.hash = wanted;
    },
  }, status, worker, array, name, label, h('button', { type: 'submit' }, 'Filter'),
  FILTERS.some((k) => f[k]) ? h('a', { href: '#/', class: 'clear' }, 'clear') : null);
}

const TASK_COLUMNS = ['task', 'name', 'index', 'status', 'worker', 'requested', 'start', 'end', 'run', 'exit', 'reason', ''];

// Why a task is where it is: the word while it waits, the reason it
// failed or was cancelled.
function reasonCell(t) {
  if (t.status === 'failed' || t.status === 'cancelled') {
    const why = t.reason || '';
    return h('td', { class: 'reason', title: why }, why);
  }
  return h('td', { class: 'reason', title: t.waiting || '' }, t.reason_word || '');
}

function taskRow(t, member) {
  const run = t.run || {};
  return h('tr', { 'data-task': t.id, class: member ? 'member' : null },
    h('td', {}, h('a', { href: '#/task/' + enc(t.id), title: command(t.spec) }, h('code', {}, t.id))),
    h('td', { class: 'name' }, t.spec.name || '-'),
    h('td', { class: 'index' }, t.array ? `[${t.array.index}]` : '-'),
    h('td', { class: 'status ' + t.status }, t.status),
    h('td', {}, t.worker || '-'),
    h('td', {}, request(t.requested)),
    h('td', { class: 'start' }, clock(run.started_at)),
    h('td', { class: 'end' }, clock(run.ended_at)),
    h('td', { class: 'num run' }, took(t.run)),
    h('td', { class: 'num exit' }, exitText(run.exit_code, run.signal)),
    reasonCell(t),
    h('td', {}, (t.status === 'pending' || t.status === 'running')
      ? h('button', { class: 'cancel danger', onclick: () => act(`/api/tasks/${enc(t.id)}/cancel`, 'cancel') }, 'Cancel')
      : ''));
}

// An array's tasks read as one row: a click shows them below it.
function arrayRow(a) {
  const open = list.open.has(a.id);
  const toggle = () => {
    if (list.open.has(a.id)) list.open.delete(a.id);
    else list.open.add(a.id);
    refresh();
  };
  const workers = a.workers.length === 0 ? '-' : a.workers.length === 1 ? a.workers[0] : `${a.workers.length} workers`;
  return h('tr', { 'data-array': a.id, class: 'array' + (open ? ' open' : ''), onclick: toggle, title: open ? 'hide its tasks' : 'show its tasks' },
    h('td', {}, h('span', { class: 'toggle' }, open ? '\u25be ' : '\u25b8 '), h('code', {}, `${a.id}_[${a.indices}]`)),
    h('td', { class: 'name' }, a.name || '-'),
    h('td', {}, h('a', { href: filterHash({ array: a.id }), class: 'all', onclick: (e) => e.stopPropagation() }, 'list all')),
    h('td', { class: 'counts' }, countsText(a.counts)),
    h('td', {}, workers),
    h('td', {}, request(a.requested)),
    h('td', { class: 'start' }, clock(a.started_at)),
    h('td', { class: 'end' }, clock(a.ended_at)),
    h('td', { class: 'num run' }, a.started_at ? span((a.ended_at || Date.now()) - a.started_at) : '-'),
    h('td', {}, ''),
    h('td', { class: 'reason', title: a.failure || '' }, a.reason_word || a.failure || ''),
    h('td', {}, ''));
}

function tasksTable(rows) {
  return h('table', { id: 'tasks' }, h('tr', {}, TASK_COLUMNS.map((t) => h('th', {}, t))), rows);
}

// Tasks an opened array row shows below it (the list's other filters apply).
const OPENED = 100;

async function renderOverview(app) {
  const o = await renderCounts();
  const f = listFilters();
  const key = filterHash(f);
  if (list.key !== key) {
    Object.assign(list, { key, pages: [null] });
    draft = {};
  }
  const after = list.pages[list.pages.length - 1];
  // An array asked for is listed task by task; otherwise each array is a row.
  const collapse = !f.array;
  const q = new URLSearchParams({ ...f, after: after || '', collapse });
  const page = await api('/api/tasks?' + q);
  let rows;
  if (collapse) {
    const opened = page.rows.filter((r) => r.array && list.open.has(r.array.id)).map((r) => r.array.id);
    const members = {};
    await Promise.all(opened.map(async (id) => {
      const m = new URLSearchParams({ ...f, array: id, limit: OPENED });
      members[id] = await api('/api/tasks?' + m);
    }));
    rows = page.rows.flatMap((r) => {
      if (r.task) return [taskRow(r.task)];
      const m = members[r.array.id];
      if (!m) return [arrayRow(r.array)];
      const more = m.next ? [h('tr', { class: 'member more' }, h('td', { colspan: TASK_COLUMNS.length },
        h('a', { href: filterHash({ ...f, array: r.array.id }) }, `the first ${m.tasks.length} shown: list all`)))] : [];
      return [arrayRow(r.array), ...m.tasks.map((t) => taskRow(t, true)), ...more];
    });
  } else {
    rows = page.tasks.map((t) => taskRow(t));
  }
  const pager = h('div', { class: 'pager' },
    h('button', { disabled: list.pages.length === 1, onclick: () => { list.pages.pop(); refresh(); } }, 'Newer'),
    h('button', { disabled: !page.next, onclick: () => { list.pages.push(page.next); refresh(); } }, 'Older'));
  app.replaceChildren(
    h('h2', {}, `Workers (${o.workers.length})`), workersTable(o.workers),
    h('h2', {}, f.array ? ['Tasks of array ', h('code', {}, f.array)] : 'Tasks'), filters(f), tasksTable(rows), pager);
}

// ---- a task: details, result, live output ----------------------------------

let output = null;

// The task page's output: one <pre> per task followed, kept across renders.
function followOutput(id) {
  if (output && output.id === id) return output.pre;
  if (output) output.source.close();
  const pre = h('pre', { id: 'logs' });
  const decoders = {};
  // Where each attempt's shown output ends: a reconnected stream may send
  // bytes again, and they are shown once.
  const shown = {};
  const source = new EventSource(`/api/tasks/${enc(id)}/output`);
  output = { id, source, pre };
  let attempt = null;
  source.onmessage = (m) => {
    const c = JSON.parse(m.data);
    if (attempt !== null && c.attempt !== attempt) pre.append(h('span', { class: 'muted' }, `\n--- attempt ${c.attempt} ---\n`));
    attempt = c.attempt;
    const all = Uint8Array.from(atob(c.data), (ch) => ch.charCodeAt(0));
    const seen = Math.max(0, (shown[c.attempt] || 0) - c.offset);
    if (seen >= all.length) return;
    const bytes = all.subarray(seen);
    shown[c.attempt] = c.offset + all.length;
    const key = c.attempt + c.stream;
    decoders[key] = decoders[key] || new TextDecoder();
    pre.append(h('span', { class: c.stream }, decoders[key].decode(bytes, { stream: true })));
    pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener('end', () => { source.close(); pre.dataset.ended = 'true'; });
  source.addEventListener('failed', (m) => { source.close(); pre.append(h('span', { class: 'stderr' }, `\n[output: ${m.data}]\n`)); });
  return pre;
}

// One term of the task page: its name, and its value (with an id for tests).
function field(name, id, ...value) {
  return [h('dt', {}, name), h('dd', { id }, ...value)];
}

async function renderTask(app, id) {
  await renderCounts();
  const t = await api('/api/tasks/' + enc(id));
  const r = t.result;
  const live = t.status === 'pending' || t.status === 'running';
  // The result's run is the last attempt's, as its worker saw it.
  const run = r ? { started_at: r.started_at, ended_at: r.finished_at, exit_code: r.exit_code, signal: r.signal } : (t.run || {});
  const a = t.array;
  const labels = labelText(t.spec.labels);
  app.replaceChildren(...[
    h('p', {}, h('a', { href: '#/' }, '\u2190 all tasks')),
    h('h2', {}, 'Task ', h('code', {}, t.id), ' ', h('span', { id: 'status', class: 'status ' + t.status }, t.status)),
    h('dl', {},
      field('name', 'name', t.spec.name || '-'),
      a ? field('array', 'array', h('a', { href: filterHash({ array: a.id }) }, h('code', {}, a.id)),
        ` index ${a.index}`, a.limit ? `, at most ${a.limit} at once` : '') : null,
      labels ? field('labels', 'labels', labels) : null,
      field('priority', 'priority', t.spec.priority || 0),
      field('command', 'command', h('code', {}, command(t.spec))),
      field('requested', 'requested', request(t.requested)),
      (t.constraints_text || []).length ? field('constraints', 'constraints', t.constraints_text.join(', ')) : null,
      (t.dependencies || []).length ? field('after', 'after', ...t.dependencies.slice(0, 20).map((d) =>
        h('div', {}, d.condition + ' ', h('a', { href: '#/task/' + enc(d.task) }, h('code', {}, d.task)))),
      t.dependencies.length > 20 ? h('div', { class: 'muted' }, `... and ${t.dependencies.length - 20} more`) : null) : null,
      field('worker', 'worker', t.worker || '-'),
      field('attempt', 'attempt', t.attempt),
      field('submitted', 'submitted', `${clock(t.created_at)} (${ago(t.created_at)})`),
      field('start', 'start', clock(run.started_at)),
      field('end', 'end', clock(run.ended_at)),
      field('run time', 'run-time', took(run)),
      t.waiting ? field('waiting', 'waiting', t.waiting) : null,
      !live && t.reason ? field('reason', 'reason', t.reason) : null,
      r || run.exit_code !== undefined ? field('exit code', 'exit-code', exitText(run.exit_code, run.signal)) : null,
      r && r.message ? field('message', 'message', r.message) : null),
    live ? h('p', {}, h('button', { id: 'cancel', class: 'cancel danger', onclick: () => act(`/api/tasks/${enc(t.id)}/cancel`, 'cancel') }, 'Cancel')) : null,
    (t.history || []).length ? attempts(t.history) : null,
    h('h2', {}, 'Output'), h('div', { id: 'logs-slot' })].flat().filter(Boolean));
}

// Each ended attempt of a task: where it ran, when, and how it ended.
function attempts(history) {
  return [h('h2', {}, 'Attempts'), h('table', { id: 'attempts' },
    h('thead', {}, h('tr', {}, ...['attempt', 'worker', 'start', 'end', 'run', 'cause', 'exit', 'message'].map((c) => h('th', {}, c)))),
    h('tbody', {}, ...history.map((a) => h('tr', {},
      h('td', {}, a.attempt), h('td', {}, a.worker), h('td', {}, clock(a.started_at)), h('td', {}, clock(a.ended_at)),
      h('td', {}, a.started_at ? span(a.ended_at - a.started_at) : '-'),
      h('td', {}, a.cause), h('td', {}, exitText(a.exit_code, a.signal)), h('td', {}, a.message || '')))))];
}

// ---- routing and live updates ----------------------------------------------

// At most one render a tenth of a second, however fast events come (a
// busy cluster must still repaint); a render that a newer one overtook is
// not painted.
let pending = null;
let generation = 0;

function refresh() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    const mine = ++generation;
    const app = h('main', { id: 'app' });
    const m = location.hash.match(/^#\/task\/(.+)$/);
    try {
      if (m) await renderTask(app, decodeURIComponent(m[1]));
      else {
        if (output) { output.source.close(); output = null; }
        await renderOverview(app);
      }
      if (mine !== generation) return;
      const slot = app.querySelector('#logs-slot');
      if (slot && m) slot.replaceWith(followOutput(decodeURIComponent(m[1])));
      // Typing in a filter goes on in the repainted one.
      const typing = document.activeElement && document.activeElement.closest('form.filters') && document.activeElement.name;
      document.getElementById('app').replaceWith(app);
      if (typing) {
        const again = app.querySelector(`form.filters [name="${typing}"]`);
        if (again) again.focus();
      }
      showError(null);
    } catch (e) {
      if (mine === generation) showError(e);
    }
  }, 100);
}

function listen() {
  const live = document.getElementById('live');
  const events = new EventSource('/api/events');
  events.onopen = () => live.classList.add('on');
  events.onerror = () => live.classList.remove('on');
  events.onmessage = () => refresh();
  // The master restarted or the stream fell too far behind: start over.
  events.addEventListener('resync', () => { events.close(); refresh(); setTimeout(listen, 1000); });
}

document.getElementById('logout').addEventListener('click', async () => {
  await fetch('/logout', { method: 'POST', headers: { 'X-CSRF-Token': csrf || '' }, credentials: 'same-origin' });
  location.href = '/login';
});

window.addEventListener('hashchange', refresh);
(async () => {
  try {
    csrf = (await api('/api/session')).csrf;
  } catch (e) {
    showError(e);
  }
  listen();
  refresh();
})();
