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

// ---- the overview: counts, workers, tasks ----------------------------------

const list = { status: '', worker: '', array: '', pages: [null] };

async function renderCounts() {
  const o = await api('/api/overview');
  const c = o.counts;
  const counts = document.getElementById('counts');
  counts.replaceChildren(...['pending', 'running', 'completed', 'failed', 'cancelled']
    .flatMap((s) => [h('b', {}, c[s]), ` ${s}  `]));
  return o;
}

function workersTable(workers) {
  return h('table', { id: 'workers' },
    h('tr', {}, ['worker', 'health', 'drain', 'CPU', 'memory', 'GPUs', 'tasks', 'last heartbeat', ''].map((t) => h('th', {}, t))),
    workers.map((w) => h('tr', { 'data-worker': w.id },
      h('td', {}, h('code', {}, w.id), h('br'), h('small', { class: 'muted' }, w.address || '')),
      h('td', { class: 'health ' + w.health }, w.health),
      h('td', { class: 'drain' }, w.drain || '-'),
      h('td', {}, bar(w.cpu[0], w.cpu[1], ' cores')),
      h('td', {}, bar(w.memory_gb[0], w.memory_gb[1], ' GB')),
      h('td', { class: 'gpus' }, w.gpu_devices.length === 0 ? '-'
        : w.gpu_devices.map((g) => h('div', {}, `${g.index}: `, g.task ? h('code', {}, g.task) : 'free'))),
      h('td', { class: 'num' }, w.tasks),
      h('td', {}, ago(w.last_heartbeat)),
      h('td', {}, w.drain
        ? h('button', { class: 'undrain', onclick: () => act(`/api/workers/${enc(w.id)}/undrain`, 'undrain') }, 'Undrain')
        : h('button', { class: 'drain', onclick: () => act(`/api/workers/${enc(w.id)}/drain`, 'drain') }, 'Drain')))));
}

function filters() {
  const status = h('select', { name: 'status' },
    ['', 'pending', 'running', 'completed', 'failed', 'cancelled'].map((s) =>
      h('option', { value: s, selected: s === list.status }, s || 'any status')));
  const worker = h('input', { name: 'worker', placeholder: 'worker', value: list.worker });
  const array = h('input', { name: 'array', placeholder: 'array', value: list.array });
  return h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      Object.assign(list, { status: status.value, worker: worker.value.trim(), array: array.value.trim(), pages: [null] });
      refresh();
    },
  }, status, worker, array, h('button', { type: 'submit' }, 'Filter'));
}

function tasksTable(tasks) {
  return h('table', { id: 'tasks' },
    h('tr', {}, ['task', 'status', 'waiting', 'worker', 'command', 'submitted', ''].map((t) => h('th', {}, t))),
    tasks.map((t) => h('tr', { 'data-task': t.id },
      h('td', {}, h('a', { href: '#/task/' + enc(t.id) }, h('code', {}, t.id))),
      h('td', { class: 'status ' + t.status }, t.status),
      h('td', { class: 'reason', title: t.waiting || '' }, t.reason_word || ''),
      h('td', {}, t.worker || '-'),
      h('td', {}, h('code', {}, command(t.spec))),
      h('td', {}, ago(t.created_at)),
      h('td', {}, (t.status === 'pending' || t.status === 'running')
        ? h('button', { class: 'cancel danger', onclick: () => act(`/api/tasks/${enc(t.id)}/cancel`, 'cancel') }, 'Cancel')
        : ''))));
}

async function renderOverview(app) {
  const o = await renderCounts();
  const after = list.pages[list.pages.length - 1];
  const q = new URLSearchParams({ status: list.status, worker: list.worker, array: list.array, after: after || '' });
  const page = await api('/api/tasks?' + q);
  const pager = h('div', { class: 'pager' },
    h('button', { disabled: list.pages.length === 1, onclick: () => { list.pages.pop(); refresh(); } }, 'Newer'),
    h('button', { disabled: !page.next, onclick: () => { list.pages.push(page.next); refresh(); } }, 'Older'));
  app.replaceChildren(
    h('h2', {}, `Workers (${o.workers.length})`), workersTable(o.workers),
    h('h2', {}, 'Tasks'), filters(), tasksTable(page.tasks), pager);
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

async function renderTask(app, id) {
  await renderCounts();
  const t = await api('/api/tasks/' + enc(id));
  const r = t.result;
  const live = t.status === 'pending' || t.status === 'running';
  app.replaceChildren(...[
    h('p', {}, h('a', { href: '#/' }, '\u2190 all tasks')),
    h('h2', {}, 'Task ', h('code', {}, t.id), ' ', h('span', { id: 'status', class: 'status ' + t.status }, t.status)),
    h('dl', {},
      h('dt', {}, 'command'), h('dd', {}, h('code', {}, command(t.spec))),
      h('dt', {}, 'worker'), h('dd', {}, t.worker || '-'),
      h('dt', {}, 'attempt'), h('dd', {}, t.attempt),
      h('dt', {}, 'submitted'), h('dd', {}, ago(t.created_at)),
      t.waiting ? [h('dt', {}, 'waiting'), h('dd', { id: 'waiting' }, t.waiting)] : null,
      r ? [h('dt', {}, 'exit code'), h('dd', { id: 'exit-code' }, r.exit_code ?? (r.signal ? 'signal ' + r.signal : '-'))] : null,
      r && r.message ? [h('dt', {}, 'message'), h('dd', {}, r.message)] : null),
    live ? h('p', {}, h('button', { id: 'cancel', class: 'cancel danger', onclick: () => act(`/api/tasks/${enc(t.id)}/cancel`, 'cancel') }, 'Cancel')) : null,
    (t.history || []).length ? attempts(t.history) : null,
    h('h2', {}, 'Output'), h('div', { id: 'logs-slot' })].flat().filter(Boolean));
}

// Each ended attempt of a task: where it ran and how it ended.
function attempts(history) {
  const exit = (a) => a.exit_code ?? (a.signal ? 'signal ' + a.signal : '-');
  return [h('h2', {}, 'Attempts'), h('table', { id: 'attempts' },
    h('thead', {}, h('tr', {}, ...['attempt', 'worker', 'ended', 'cause', 'exit', 'message'].map((c) => h('th', {}, c)))),
    h('tbody', {}, ...history.map((a) => h('tr', {},
      h('td', {}, a.attempt), h('td', {}, a.worker), h('td', {}, ago(a.ended_at)),
      h('td', {}, a.cause), h('td', {}, exit(a)), h('td', {}, a.message || '')))))];
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
      document.getElementById('app').replaceWith(app);
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
