// The console (SPEC §9): one page, views chosen by the URL's fragment (#/jobs?selector=…), each
// drawing from the public API and refreshing its figures every 2 s while the tab is visible.

import { api, ApiError, get, onReachability, query, seg, session, Unreachable } from './api.js';
import { badge, fill, h, labels, pairs, plot, table, when } from './dom.js';

const REFRESH_MS = 2000;
const EVENT_TYPES = [
  'run.succeeded', 'run.failed', 'run.skipped', 'target.circuit_opened',
  'target.circuit_closed', 'node.unreachable', 'node.recovered', 'leader.changed',
];

const view = document.getElementById('view');
const banner = document.getElementById('banner');
/** The view on screen: its `refresh` is called every REFRESH_MS. */
let current = null;
let refreshing = false;

// ---------------------------------------------------------------- routing and the frame

function route() {
  const [path, q] = location.hash.replace(/^#/, '').split('?');
  const params = Object.fromEntries(new URLSearchParams(q || ''));
  const parts = (path || '/').split('/').filter(Boolean).map(decodeURIComponent);
  if (session.needsToken && !session.token) return ['login', login, params];
  switch (parts[0]) {
    case undefined: return ['overview', overview, params];
    case 'jobs': return parts[1] ? ['jobs', (root) => job(root, parts[1]), params] : ['jobs', jobs, params];
    case 'runs': return ['runs', runs, params];
    case 'targets': return ['targets', targets, params];
    case 'notifications': return ['notifications', notifications, params];
    case 'cluster': return ['cluster', cluster, params];
    case 'login': return ['login', login, params];
    default: return ['', notFound, params];
  }
}

/** The view shown last, so that focus moves to the content only when the view changes. */
let shownName = null;

async function show() {
  const [name, render, params] = route();
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  current = null;
  const root = fill(view, h('p.muted', 'Loading…'));
  const moved = shownName !== null && shownName !== name;
  shownName = name;
  try {
    current = (await render(root, params)) || null;
  } catch (e) {
    failed(root, e);
  }
  // A keyboard user who followed a header link goes on in the new view, not in the header.
  if (moved && !view.contains(document.activeElement)) view.focus();
}

/** Shows why a view could not be drawn. */
function failed(root, e) {
  if (e instanceof ApiError && e.status === 401) {
    session.logout();
    location.hash = '#/login';
    return;
  }
  if (e instanceof Unreachable) return; // the banner says it
  fill(root, h('p.error', { role: 'alert' }, errorText(e)));
}

function errorText(e) {
  if (e instanceof ApiError) return `${e.message}${e.field ? ` (${e.field})` : ''}`;
  return String(e.message || e);
}

onReachability((ok, lastAnswer) => {
  view.classList.toggle('stale', !ok);
  if (ok) {
    banner.hidden = true;
    fill(banner);
    return;
  }
  const at = lastAnswer ? lastAnswer.toLocaleTimeString() : 'the start';
  fill(
    banner,
    h('strong', `${location.host} is not answering.`),
    ` The figures below are from ${at} and no longer current; they refresh once it answers again.`,
  );
  banner.hidden = false;
});

async function tick() {
  if (refreshing || document.hidden) return;
  refreshing = true;
  try {
    if (current?.refresh) await current.refresh();
    else if (current !== null || !banner.hidden) await get('/v1/cluster'); // notices a node back
  } catch (e) {
    // A token no longer accepted (rotated, removed): ask for one instead of showing stale figures.
    if (e instanceof ApiError && e.status === 401) failed(view, e);
    else if (!(e instanceof Unreachable)) console.warn('refresh:', errorText(e));
  } finally {
    refreshing = false;
  }
}

async function start() {
  window.addEventListener('hashchange', show);
  if (!session.needsToken || session.token) {
    try {
      await whoAmI();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) session.logout();
    }
  }
  drawWho();
  await show();
  setInterval(tick, REFRESH_MS);
}

/** Learns what the token may do (`access` of GET /v1/cluster). */
async function whoAmI() {
  const c = await get('/v1/cluster');
  session.access = c.access || 'all';
  return c;
}

function drawWho() {
  const who = document.getElementById('who');
  fill(
    who,
    h('span.muted', location.host),
    session.canWrite ? null : h('span.chip', 'read only'),
    session.token
      ? h('button.link', {
        type: 'button',
        onclick: () => {
          session.logout();
          session.access = 'all';
          drawWho();
          location.hash = '#/login';
        },
      }, 'Log out')
      : null,
  );
}

/** Sets the hash to `path` with `params` (empty ones left out). */
function go(path, params = {}) {
  const next = `#${path}${query(params)}`;
  if (location.hash === next) show();
  else location.hash = next;
}

// ---------------------------------------------------------------- forms

/** A labelled input; `name` is also the API field its errors are shown under. */
function field(label, name, attrs = {}) {
  const id = `f-${name.replace(/[^a-z0-9_-]/gi, '-')}`;
  return h(
    'p.field',
    { 'data-field': name },
    h('label', { for: id }, label),
    attrs.tag === 'select'
      ? h('select', { id, name }, attrs.options.map(([v, t]) => h('option', { value: v, selected: v === attrs.value }, t)))
      : attrs.tag === 'textarea'
        ? h('textarea', { id, name, rows: attrs.rows || 4, spellcheck: 'false' }, attrs.value || '')
        : h('input', { id, name, type: 'text', autocomplete: 'off', ...attrs }),
    h('span.error', { role: 'alert', hidden: true }),
  );
}

/** The form's named values (trimmed strings). */
function values(form) {
  const out = {};
  for (const el of form.elements) if (el.name) out[el.name] = el.value.trim();
  return out;
}

/** Clears the form's errors. */
function clearErrors(form) {
  for (const e of form.querySelectorAll('.error')) {
    e.hidden = true;
    e.textContent = '';
  }
}

/**
 * Shows `err` next to the field the API named (`headers.x-key` goes to `headers`), or at the
 * form's top when no field of the form matches.
 */
function showError(form, err) {
  clearErrors(form);
  const name = err instanceof ApiError ? err.field : '';
  let at = null;
  for (const p of form.querySelectorAll('[data-field]')) {
    const f = p.dataset.field;
    if (name && (name === f || name.startsWith(`${f}.`))) at = p;
  }
  const slot = at ? at.querySelector('.error') : form.querySelector('.form-error');
  // Next to its own field the message needs no field name; a sub-field (`headers.x-key`) keeps it.
  slot.textContent = at && name === at.dataset.field ? err.message : errorText(err);
  slot.hidden = false;
  (at?.querySelector('input,select,textarea') || slot).focus?.();
}

/** A form with a top error slot, `children`, and `onsubmit(values, form)` guarded. */
function form(children, onsubmit, attrs = {}) {
  const f = h('form', { novalidate: true, ...attrs },
    h('p.error.form-error', { role: 'alert', hidden: true }),
    children);
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(f);
    const button = f.querySelector('button[type=submit]');
    if (button) button.disabled = true;
    try {
      await onsubmit(values(f), f);
    } catch (e) {
      if (!(e instanceof Unreachable)) showError(f, e);
    } finally {
      if (button) button.disabled = false;
    }
  });
  return f;
}

/**
 * A confirmation in place (keyboard-friendly, no browser dialog): `question`, then `act()` on
 * Confirm; the panel replaces itself with what `act` returns.
 */
function confirmPanel(question, confirmLabel, act) {
  const panel = h('div.confirm', { role: 'group', 'aria-label': 'confirm' });
  const yes = h('button.danger', {
    type: 'button',
    onclick: async () => {
      yes.disabled = true;
      try {
        fill(panel, await act());
      } catch (e) {
        fill(panel, h('p.error', { role: 'alert' }, errorText(e)));
      }
    },
  }, confirmLabel);
  fill(panel, h('p', question), h('p.actions', yes,
    h('button', { type: 'button', onclick: () => panel.remove() }, 'Cancel')));
  setTimeout(() => yes.focus());
  return panel;
}

function section(title, ...children) {
  return h('section', h('h2', title), children);
}

const jobLink = (id) => h('a', { href: `#/jobs/${seg(id)}` }, id);

// ---------------------------------------------------------------- overview

async function overview(root) {
  const members = h('div');
  const plots = h('div.plots');
  const circuits = h('div');
  const failures = h('div');
  fill(root, h('h1', 'Overview'),
    section('Members', members), section('Last 15 minutes', plots),
    section('Open circuits', circuits), section('Recent failures', failures));
  // A node without /v1/stats (an older version) answers 404: said once, not asked again.
  let noStats = null;
  const refresh = async () => {
    const [c, stats, t, f] = await Promise.all([
      whoAmI(),
      noStats || get('/v1/stats?window=15m').catch((e) => e),
      get('/v1/targets?limit=1000'),
      get('/v1/runs?status=failed&limit=10'),
    ]);
    if (stats instanceof ApiError && stats.status === 404) noStats = stats;
    fill(members, memberTable(c));
    fill(plots, statsPlots(stats));
    fill(circuits, table(t.targets.filter((x) => x.circuit !== 'closed'), [
      ['target', (x) => x.target],
      ['circuit', (x) => badge(x.circuit)],
      ['until', (x) => when(x.open_until)],
      ['waiting', (x) => x.waiting],
      ['last error', (x) => x.last_error || ''],
    ], 'Every circuit is closed.'));
    fill(failures, runTable(f.runs, true));
  };
  await refresh();
  return { refresh };
}

function memberTable(c) {
  return [
    h('p', 'Leader: ', c.leader_id ? h('strong', `node ${c.leader_id}`) : h('strong.bad', 'none'),
      ` · term ${c.term} · commit index ${c.commit_index}`,
      c.format_version ? ` · format ${c.format_version}` : '',
      c.cluster_id ? ` · cluster ${c.cluster_id}` : ''),
    shardLine(c.shards),
    table(c.members, [
      ['node', (m) => (m.id === c.node_id ? `${m.id} (this one)` : String(m.id))],
      ['role', (m) => badge(m.role)],
      ['health', (m) => (m.health ? badge(m.health) : '—')],
      ['lag', (m) => (m.lag === undefined || m.lag === null ? '—' : `${m.lag} entries`)],
      ['voter', (m) => (m.voter ? 'yes' : 'no')],
      ['version', (m) => m.version || '—'],
      ['API', (m) => m.api_addr || '—'],
      ['peer', (m) => m.peer_addr],
    ]),
  ];
}

// Which node leads each shard (SPEC §8): one line, nothing for a cluster of one shard.
function shardLine(shards) {
  if (!Array.isArray(shards) || shards.length < 2) return null;
  const led = shards.map((s) => `${s.id} → ${s.leader_id ? `node ${s.leader_id}` : 'none'}`);
  return h('p.shards', `Shards (leader): ${led.join(' · ')}`);
}

function statsPlots(stats) {
  if (stats instanceof Error) {
    return h('p.muted', `No figures: ${errorText(stats)}`);
  }
  const s = stats.series || {};
  const z = (k) => s[k] || [];
  return [
    plot('Runs per second', [
      { name: 'due', values: z('due'), cls: 'c1' },
      { name: 'delivered', values: z('delivered'), cls: 'c2' },
      { name: 'failed', values: z('failed'), cls: 'c3' },
      { name: 'skipped', values: z('skipped'), cls: 'c4' },
    ]),
    plot('Lateness', [
      { name: 'p50', values: z('lateness_p50_ms'), cls: 'c2' },
      { name: 'p99', values: z('lateness_p99_ms'), cls: 'c3' },
    ], ' ms'),
    plot('Writes per second', [{ name: 'writes', values: z('writes'), cls: 'c1' }]),
  ];
}

// ---------------------------------------------------------------- jobs

const JOB_FILTERS = ['selector', 'state', 'target', 'prefix'];

async function jobs(root, params) {
  const filters = Object.fromEntries(JOB_FILTERS.map((k) => [k, params[k] || '']));
  const filtered = JOB_FILTERS.some((k) => filters[k]);
  const list = h('div');
  const bulk = h('div');
  const filterForm = form([
    field('Label selector', 'selector', { value: filters.selector, placeholder: 'team=payments,env!=dev' }),
    field('State', 'state', {
      tag: 'select', value: filters.state,
      options: [['', 'any'], ['active', 'active'], ['paused', 'paused'], ['completed', 'completed']],
    }),
    field('Target', 'target', { value: filters.target, placeholder: 'host:port' }),
    field('Id prefix', 'prefix', { value: filters.prefix }),
    h('p.actions', h('button', { type: 'submit' }, 'Filter'),
      h('a', { href: '#/jobs' }, 'Clear')),
  ], async (v) => {
    // Checked by the API first, so a bad selector is shown next to its field.
    await get(`/v1/jobs${query({ ...v, limit: 1 })}`);
    go('/jobs', v);
  }, { class: 'filters', 'aria-label': 'filters' });
  fill(root, h('h1', 'Jobs'), filterForm, bulk, list);
  if (session.canWrite) fill(bulk, bulkActions(filters, filtered));
  const refresh = async () => {
    const page = await get(`/v1/jobs${query({ ...filters, after: params.after, limit: 100 })}`);
    fill(list,
      table(page.jobs, [
        ['id', (j) => jobLink(j.id)],
        ['state', (j) => badge(j.state)],
        ['schedule', (j) => scheduleText(j.schedule)],
        ['next fire', (j) => when(j.next_fire_at)],
        ['target', (j) => hostOf(j.url)],
        ['labels', (j) => labels(j.labels)],
      ], filtered ? 'No job matches.' : 'No jobs yet.'),
      h('p.pager',
        params.after ? h('a', { href: `#/jobs${query(filters)}` }, 'First page') : null,
        page.next ? h('a', { href: `#/jobs${query({ ...filters, after: page.next })}` }, 'Next page') : null));
  };
  await refresh();
  return { refresh };
}

function bulkActions(filters, filtered) {
  const slot = h('div');
  const choose = h('select', { id: 'bulk-action', 'aria-label': 'bulk action' },
    ['pause', 'resume', 'trigger', 'delete'].map((a) => h('option', { value: a }, a)));
  const start = h('button', {
    type: 'button',
    disabled: !filtered,
    onclick: async () => {
      const action = choose.value;
      const body = { action, ...nonEmpty(filters) };
      try {
        const dry = (await api('POST', '/v1/jobs/bulk', { ...body, dry_run: true })).data;
        fill(slot, confirmPanel(
          `${cap(action)} ${dry.matched} job${dry.matched === 1 ? '' : 's'} matching this filter?`,
          `${cap(action)} ${dry.matched}`,
          async () => {
            const done = (await api('POST', '/v1/jobs/bulk', body)).data;
            current?.refresh?.();
            return h('p.ok', { role: 'status' }, `${cap(action)}: ${done.changed} of ${done.matched} changed.`);
          },
        ));
      } catch (e) {
        fill(slot, h('p.error', { role: 'alert' }, errorText(e)));
      }
    },
  }, 'Apply to all matching…');
  return h('div.bulk', h('label', { for: 'bulk-action' }, 'Bulk action'), choose, start,
    filtered ? null : h('span.muted', ' Filter first: a bulk action acts on every job the filter matches.'),
    slot);
}

const nonEmpty = (o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== '' && v != null));
const cap = (s) => s[0].toUpperCase() + s.slice(1);

/** A URL's target as the API names it: `host:port`, the port always given. */
function hostOf(url) {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || (u.protocol === 'https:' ? 443 : 80)}`;
  } catch {
    return url;
  }
}

/** An instant in a time zone (the browser's when none): `Tue 8 Dec 2026, 09:00`. */
function local(iso, timeZone) {
  try {
    return new Intl.DateTimeFormat(undefined, {
      timeZone, weekday: 'short', day: 'numeric', month: 'short', year: 'numeric',
      hour: '2-digit', minute: '2-digit', second: '2-digit',
    }).format(new Date(iso));
  } catch {
    return iso;
  }
}

/** A schedule as sent, in short words (the job view asks the API for full ones). */
function scheduleText(s) {
  if (!s) return '';
  const kind = s.cron ? `cron ${s.cron}${s.timezone ? ` (${s.timezone})` : ''}`
    : s.every ? `every ${s.every}` : s.at ? `at ${s.at}` : s.after ? `after ${s.after}` : JSON.stringify(s);
  return [kind, s.end_at ? `until ${s.end_at}` : '', s.max_runs ? `${s.max_runs} runs at most` : '']
    .filter(Boolean).join(', ');
}

// ---------------------------------------------------------------- one job

async function job(root, id) {
  const head = h('div');
  const def = h('div');
  const fires = h('div');
  const actions = h('div.actions-bar');
  const panel = h('div');
  const runsBox = h('div');
  fill(root, h('p', h('a', { href: '#/jobs' }, '← Jobs')), head, actions, panel,
    section('Definition', def), section('Next fires', fires), section('Recent runs', runsBox));
  let shown = null;
  const load = async () => {
    const r = await api('GET', `/v1/jobs/${seg(id)}`);
    return r.data;
  };
  const draw = (j) => {
    shown = j;
    fill(head, h('h1', j.id, ' ', badge(j.state)));
    fill(def, pairs([
      ['URL', `${j.method} ${j.url}`],
      ['Schedule', scheduleText(j.schedule)],
      ['Next fire', when(j.next_fire_at)],
      ['Labels', j.labels ? labels(j.labels) : undefined],
      ['Overlap', j.overlap],
      ['Jitter', j.jitter],
      ['Retry', `${j.retry.max_attempts} attempts, from ${j.retry.initial_backoff} up to ${j.retry.max_backoff}`],
      ['Timeout', j.timeout],
      ['Misfire', `${j.misfire.policy}, grace ${j.misfire.grace}`],
      ['On success', j.on_success ? j.on_success.url : undefined],
      ['On failure', j.on_failure ? j.on_failure.url : undefined],
      ['Version', String(j.version)],
      ['Created', when(j.created_at)],
      ['Updated', when(j.updated_at)],
    ]));
    if (session.canWrite) {
      fill(actions,
        h('button', { type: 'button', onclick: () => act('POST', `/v1/jobs/${seg(id)}/trigger`) }, 'Trigger now'),
        j.paused
          ? h('button', { type: 'button', onclick: () => act('POST', `/v1/jobs/${seg(id)}/resume`, { 'if-match': `"${j.version}"` }) }, 'Resume')
          : h('button', { type: 'button', onclick: () => act('POST', `/v1/jobs/${seg(id)}/pause`, { 'if-match': `"${j.version}"` }) }, 'Pause'),
        h('button', { type: 'button', onclick: () => fill(panel, editor(shown)) }, 'Edit'),
        h('button.danger', {
          type: 'button',
          onclick: () => fill(panel, confirmPanel(`Delete job ${id} and its runs?`, 'Delete', async () => {
            await api('DELETE', `/v1/jobs/${seg(id)}`, undefined, { 'if-match': `"${shown.version}"` });
            go('/jobs');
            return h('p', 'Deleted.');
          })),
        }, 'Delete'));
    }
  };
  const act = async (method, path, headers = {}) => {
    try {
      await api(method, path, undefined, headers);
      fill(panel);
      await refresh();
    } catch (e) {
      fill(panel, h('p.error', { role: 'alert' }, errorText(e)));
    }
  };
  const editor = (j) => {
    const editable = { ...j };
    for (const k of ['created_at', 'updated_at', 'next_fire_at', 'state', 'version']) delete editable[k];
    return form([
      h('p.muted', `Editing version ${j.version}. Saved only if the job is still at that version (If-Match). Secret values show as *** and are kept as they are.`),
      field('Job (JSON)', 'job', { tag: 'textarea', rows: 18, value: JSON.stringify(editable, null, 2) }),
      h('p.actions', h('button', { type: 'submit' }, 'Save'),
        h('button', { type: 'button', onclick: () => fill(panel) }, 'Cancel')),
    ], async (v, f) => {
      let body;
      try {
        body = JSON.parse(v.job);
      } catch (e) {
        throw new ApiError(400, { error: { message: `not JSON: ${e.message}`, field: 'job' } });
      }
      await api('PUT', `/v1/jobs/${seg(id)}`, body, { 'if-match': `"${j.version}"` });
      fill(panel, h('p.ok', { role: 'status' }, 'Saved.'));
      await refresh();
      return f;
    }, { 'aria-label': 'edit job' });
  };
  const drawFires = async (j) => {
    if (!j.next_fire_at) {
      fill(fires, h('p.muted', j.paused ? 'Paused: no fire until resumed.' : 'No fire left.'));
      return;
    }
    // From just before the next fire, so the preview lines up with the job's own cursor (an
    // `every` without `start_at` is anchored at that fire).
    const schedule = { ...j.schedule };
    if (schedule.every && !schedule.start_at) schedule.start_at = j.next_fire_at;
    if (schedule.after) {
      fill(fires, h('ol', h('li', when(j.next_fire_at))));
      return;
    }
    const from = new Date(Date.parse(j.next_fire_at) - 1).toISOString();
    const p = (await api('POST', '/v1/schedules/preview', { schedule, from, count: 10 })).data;
    fill(fires,
      p.description ? h('p', h('strong', p.description)) : null,
      h('p.muted', `Times in ${j.schedule.timezone || 'this browser\'s time zone'}.`),
      h('ol.fires', p.fires.map((t) => h('li',
        h('time', { datetime: t, title: t }, local(t, j.schedule.timezone)), ' (', when(t), ')'))));
  };
  const refresh = async () => {
    const before = shown;
    const [j, r] = await Promise.all([load(), get(`/v1/jobs/${seg(id)}/runs?limit=20`)]);
    draw(j);
    fill(runsBox, runList(r.runs));
    // Fired, paused, resumed or edited: the next fires moved too.
    if (j.version !== before?.version || j.next_fire_at !== before?.next_fire_at) {
      await drawFires(j).catch((e) => fill(fires, h('p.error', errorText(e))));
    }
  };
  const first = await load();
  draw(first);
  await Promise.all([
    drawFires(first).catch((e) => fill(fires, h('p.error', errorText(e)))),
    get(`/v1/jobs/${seg(id)}/runs?limit=20`).then((r) => fill(runsBox, runList(r.runs))),
  ]);
  return { refresh };
}

/** Runs with every attempt, each run a disclosure (keyboard-friendly). */
function runList(list) {
  if (!list.length) return h('p.muted', 'No run yet.');
  return h('ul.runs', list.map((r) => h('li',
    h('details',
      h('summary', badge(r.status), ' ', h('code', r.id), ' · due ', when(r.due_at || r.scheduled_at),
        ` · ${r.attempts.length} attempt${r.attempts.length === 1 ? '' : 's'}`,
        r.skip_reason ? ` · ${r.skip_reason}` : '', r.error ? ` · ${r.error}` : ''),
      table(r.attempts, [
        ['#', (a) => a.n],
        ['started', (a) => when(a.started_at)],
        ['took', (a) => `${a.duration_ms} ms`],
        ['status', (a) => (a.status_code ? String(a.status_code) : '—')],
        ['error', (a) => a.error || ''],
        ['node', (a) => a.node_id],
      ], 'Not attempted yet.'),
      r.status === 'failed' && session.canWrite ? retryButton(r.id) : null))));
}

function retryButton(runId) {
  const out = h('span');
  const b = h('button', {
    type: 'button',
    onclick: async () => {
      b.disabled = true;
      try {
        await api('POST', `/v1/runs/${seg(runId)}/retry`);
        fill(out, h('span.ok', { role: 'status' }, ' retrying'));
        current?.refresh?.();
      } catch (e) {
        fill(out, h('span.error', { role: 'alert' }, ` ${errorText(e)}`));
      }
    },
  }, 'Retry');
  out.append(b);
  return out;
}

// ---------------------------------------------------------------- runs

const RUN_FILTERS = ['status', 'job_id', 'job_selector', 'target', 'since', 'until'];

function runTable(list, withJob) {
  return table(list, [
    ['run', (r) => h('code', r.id)],
    withJob ? ['job', (r) => jobLink(r.job_id)] : null,
    ['status', (r) => badge(r.status)],
    ['due', (r) => when(r.due_at || r.scheduled_at)],
    ['attempts', (r) => attemptsText(r)],
    ['', (r) => (r.status === 'failed' && session.canWrite ? retryButton(r.id) : '')],
  ].filter(Boolean), 'No run.');
}

function attemptsText(r) {
  const last = r.attempts[r.attempts.length - 1];
  if (!last) return r.error || '0';
  const outcome = last.status_code ? `last ${last.status_code}` : last.error ? `last ${last.error}` : '';
  return `${r.attempts.length}${outcome ? ` (${outcome})` : ''}`;
}

async function runs(root, params) {
  const filters = Object.fromEntries(RUN_FILTERS.map((k) => [k, params[k] || '']));
  if (!filters.status) filters.status = 'failed';
  const list = h('div');
  const bulk = h('div');
  const filterForm = form([
    field('Status', 'status', {
      tag: 'select', value: filters.status,
      options: ['failed', 'succeeded', 'skipped', 'retrying', 'pending'].map((s) => [s, s]),
    }),
    field('Job id', 'job_id', { value: filters.job_id }),
    field('Job selector', 'job_selector', { value: filters.job_selector, placeholder: 'team=payments' }),
    field('Target', 'target', { value: filters.target, placeholder: 'host:port' }),
    field('Since', 'since', { value: filters.since, placeholder: '2026-12-07T00:00:00Z' }),
    field('Until', 'until', { value: filters.until }),
    h('p.actions', h('button', { type: 'submit' }, 'Filter'), h('a', { href: '#/runs' }, 'Clear')),
  ], async (v) => {
    await get(`/v1/runs${query({ ...v, limit: 1 })}`);
    go('/runs', v);
  }, { class: 'filters', 'aria-label': 'filters' });
  fill(root, h('h1', filters.status === 'failed' ? 'Failed runs (dead letters)' : 'Runs'), filterForm, bulk, list);
  if (session.canWrite && filters.status === 'failed') {
    const slot = h('div');
    const retryFilter = nonEmpty({ job_id: filters.job_id, job_selector: filters.job_selector,
      target: filters.target, since: filters.since, until: filters.until });
    fill(bulk, h('div.bulk', h('button', {
      type: 'button',
      onclick: async () => {
        try {
          const dry = (await api('POST', '/v1/runs/retry', { ...retryFilter, dry_run: true })).data;
          fill(slot, confirmPanel(`Retry ${dry.matched} failed run${dry.matched === 1 ? '' : 's'} matching this filter?`,
            `Retry ${dry.matched}`, async () => {
              const done = (await api('POST', '/v1/runs/retry', retryFilter)).data;
              current?.refresh?.();
              return h('p.ok', { role: 'status' }, `Retried ${done.retried} of ${done.matched}.`);
            }));
        } catch (e) {
          fill(slot, h('p.error', { role: 'alert' }, errorText(e)));
        }
      },
    }, 'Retry all matching…'), slot));
  }
  const refresh = async () => {
    const page = await get(`/v1/runs${query({ ...filters, after: params.after, limit: 100 })}`);
    fill(list, runTable(page.runs, true),
      h('p.pager',
        params.after ? h('a', { href: `#/runs${query(filters)}` }, 'First page') : null,
        page.next ? h('a', { href: `#/runs${query({ ...filters, after: page.next })}` }, 'Next page') : null));
  };
  await refresh();
  return { refresh };
}

// ---------------------------------------------------------------- targets

function policyText(p) {
  if (!p) return '—';
  return [p.rate_per_s !== undefined ? `${p.rate_per_s}/s${p.burst ? ` burst ${p.burst}` : ''}` : '',
    p.max_concurrency !== undefined ? `${p.max_concurrency} in flight` : ''].filter(Boolean).join(', ');
}

async function targets(root) {
  const list = h('div');
  const panel = h('div');
  const edit = (target, p = {}) => form([
    h('h3', target ? `Policy of ${target}` : 'Set a target\'s policy'),
    target ? h('input', { type: 'hidden', name: 'target', value: target })
      : field('Target (host:port)', 'target', { placeholder: 'example.com:443' }),
    field('Max concurrency', 'max_concurrency', { value: p.max_concurrency ?? '', inputmode: 'numeric' }),
    field('Rate per second', 'rate_per_s', { value: p.rate_per_s ?? '', inputmode: 'decimal' }),
    field('Burst', 'burst', { value: p.burst ?? '', inputmode: 'numeric' }),
    h('p.actions', h('button', { type: 'submit' }, 'Save'),
      target && p && Object.keys(p).length ? h('button.danger', {
        type: 'button',
        onclick: async () => {
          await api('DELETE', `/v1/targets/${seg(target)}/policy`);
          fill(panel, h('p.ok', { role: 'status' }, `Removed the policy of ${target}.`));
          await refresh();
        },
      }, 'Remove policy') : null,
      h('button', { type: 'button', onclick: () => fill(panel) }, 'Cancel')),
  ], async (v) => {
    const num = (k) => (v[k] === '' ? undefined : Number(v[k]));
    const body = nonEmpty({ max_concurrency: num('max_concurrency'), rate_per_s: num('rate_per_s'), burst: num('burst') });
    if (!v.target) throw new ApiError(422, { error: { message: 'a target is host:port', field: 'target' } });
    await api('PUT', `/v1/targets/${seg(v.target)}/policy`, body);
    fill(panel, h('p.ok', { role: 'status' }, `Saved the policy of ${v.target}.`));
    await refresh();
  }, { 'aria-label': 'target policy' });
  fill(root, h('h1', 'Targets'),
    h('p.muted', 'Per target host:port, as the dispatching leader sees it now.'),
    list, panel,
    session.canWrite ? h('p', h('button', { type: 'button', onclick: () => fill(panel, edit(null)) }, 'Set a policy…')) : null);
  const refresh = async () => {
    const t = await get('/v1/targets?limit=1000');
    fill(list, table(t.targets, [
      ['target', (x) => x.target],
      ['in flight', (x) => x.in_flight],
      ['waiting', (x) => x.waiting],
      ['circuit', (x) => [badge(x.circuit), x.open_until ? [' until ', when(x.open_until)] : null]],
      ['policy', (x) => policyText(x.policy)],
      ['last error', (x) => x.last_error || ''],
      session.canWrite ? ['', (x) => h('button', { type: 'button', onclick: () => fill(panel, edit(x.target, x.policy || {})) }, 'Edit policy')] : null,
    ].filter(Boolean), 'No target has work or state right now.'));
  };
  await refresh();
  return { refresh };
}

// ---------------------------------------------------------------- notifications

async function notifications(root) {
  const list = h('div');
  const panel = h('div');
  const edit = (n) => form([
    h('h3', n ? `Notification ${n.id}` : 'New notification'),
    n ? h('input', { type: 'hidden', name: 'id', value: n.id }) : field('Id', 'id', { placeholder: 'ops' }),
    field('URL', 'url', { value: n?.url || '', placeholder: 'https://ops.example.com/hookd' }),
    h('fieldset.field', { 'data-field': 'events' },
      h('legend', 'Events'),
      EVENT_TYPES.map((t) => h('label.check',
        h('input', { type: 'checkbox', name: `event:${t}`, value: t, checked: n?.events.includes(t) }), t)),
      h('span.error', { role: 'alert', hidden: true })),
    field('Label selector (run events only)', 'selector', { value: n?.selector || '', placeholder: 'team=payments' }),
    field('Headers (one "name: value" a line)', 'headers', {
      tag: 'textarea', rows: 3,
      value: Object.entries(n?.headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n'),
    }),
    field('Secret headers (names, comma-separated)', 'secret_headers', { value: (n?.secret_headers || []).join(', ') }),
    h('p.actions', h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', onclick: () => fill(panel) }, 'Cancel')),
  ], async (v, f) => {
    const events = [...f.querySelectorAll('input[type=checkbox]:checked')].map((c) => c.value);
    const headers = {};
    for (const line of v.headers.split('\n').map((l) => l.trim()).filter(Boolean)) {
      const i = line.indexOf(':');
      if (i < 1) throw new ApiError(422, { error: { message: `"${line}" is not name: value`, field: 'headers' } });
      headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    const secret = v.secret_headers.split(',').map((x) => x.trim()).filter(Boolean);
    if (!v.id) throw new ApiError(422, { error: { message: 'an id is needed', field: 'id' } });
    const body = { url: v.url, events, headers, secret_headers: secret };
    if (v.selector) body.selector = v.selector;
    const r = await api('PUT', `/v1/notifications/${seg(v.id)}`, body);
    fill(panel, h('p.ok', { role: 'status' }, `${r.status === 201 ? 'Created' : 'Saved'} ${v.id}.`));
    await refresh();
  }, { 'aria-label': 'notification' });
  fill(root, h('h1', 'Notifications'),
    h('p.muted', 'Where events go: run outcomes of the jobs a selector matches, circuits, members, leaders.'),
    list, panel,
    session.canWrite ? h('p', h('button', { type: 'button', onclick: () => fill(panel, edit(null)) }, 'New notification…')) : null);
  const refresh = async () => {
    const page = await get('/v1/notifications?limit=100');
    fill(list, table(page.notifications, [
      ['id', (n) => n.id],
      ['events', (n) => n.events.join(', ')],
      ['selector', (n) => n.selector || '—'],
      ['URL', (n) => n.url],
      session.canWrite ? ['', (n) => [
        h('button', { type: 'button', onclick: () => fill(panel, edit(n)) }, 'Edit'), ' ',
        h('button.danger', {
          type: 'button',
          onclick: () => fill(panel, confirmPanel(`Delete notification ${n.id}?`, 'Delete', async () => {
            await api('DELETE', `/v1/notifications/${seg(n.id)}`);
            await refresh();
            return h('p.ok', { role: 'status' }, `Deleted ${n.id}.`);
          })),
        }, 'Delete')]] : null,
    ].filter(Boolean), 'No notification yet.'));
  };
  await refresh();
  return { refresh };
}

// ---------------------------------------------------------------- cluster, login

async function cluster(root) {
  const box = h('div');
  fill(root, h('h1', 'Cluster'), box,
    h('p.muted', 'One Raft group: every job lives in it and its leader dispatches them all.'));
  const refresh = async () => fill(box, memberTable(await whoAmI()));
  await refresh();
  return { refresh };
}

async function login(root) {
  fill(root, h('h1', 'Log in'),
    h('p', 'This cluster wants a token. It is kept for this tab only and sent to this node alone.'),
    form([
      field('Token', 'token', { type: 'password', autocomplete: 'current-password' }),
      h('p.actions', h('button', { type: 'submit' }, 'Log in')),
    ], async (v) => {
      session.login(v.token);
      try {
        await whoAmI();
      } catch (e) {
        session.logout();
        if (e instanceof ApiError && e.status === 401) {
          throw new ApiError(401, { error: { message: 'this token is not accepted', field: 'token' } });
        }
        throw e;
      }
      drawWho();
      go('/');
    }, { 'aria-label': 'log in' }));
  root.querySelector('input')?.focus();
  return null;
}

async function notFound(root) {
  fill(root, h('h1', 'Not found'), h('p', h('a', { href: '#/' }, 'Overview')));
}

start();
