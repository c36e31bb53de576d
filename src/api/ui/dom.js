// Building the page without inline HTML: elements from data, text always as text (never parsed),
// so nothing a job, target or error message holds can run or restyle the console.

/**
 * `h('a.btn', {href: '#/'}, 'text', child…)`: an element with classes after dots, attributes
 * (`on*` functions become listeners, `false`/null/undefined ones are left out) and children
 * (strings become text nodes; arrays are flattened; null is skipped).
 */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name || 'div');
  if (classes.length) el.className = classes.join(' ');
  // Anything but a plain object is the first child, falsy ones too: `h('td', 0)` shows 0.
  if (attrs !== null && attrs !== undefined
    && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * A table of `rows` with `columns` = [[heading, row => cell], …], in a wrapper that scrolls
 * sideways on a narrow screen; `empty` when there is no row.
 */
export function table(rows, columns, empty = 'Nothing here.') {
  if (!rows.length) return h('p.muted', empty);
  return h(
    'div.scroll',
    h(
      'table',
      h('thead', h('tr', columns.map(([name]) => h('th', { scope: 'col' }, name)))),
      h('tbody', rows.map((r) => h('tr', columns.map(([, cell]) => h('td', cell(r)))))),
    ),
  );
}

/** `key: value` pairs as a definition list. */
export function pairs(list) {
  return h(
    'dl.pairs',
    list.filter(([, v]) => v !== undefined).map(([k, v]) => [h('dt', k), h('dd', v ?? '—')]),
  );
}

/** An instant (RFC 3339) for people: `in 3m`, `12s ago`, with the instant as a tooltip. */
export function when(iso, now = Date.now()) {
  if (!iso) return h('span.muted', '—');
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  return h('time', { datetime: iso, title: iso }, relative(t - now));
}

export function relative(ms) {
  const s = Math.round(Math.abs(ms) / 1000);
  const text =
    s < 1 ? 'now'
      : s < 90 ? `${s}s`
        : s < 5400 ? `${Math.round(s / 60)}m`
          : s < 129600 ? `${Math.round(s / 3600)}h`
            : `${Math.round(s / 86400)}d`;
  if (text === 'now') return text;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

/** A status as a badge: `succeeded`, `failed`, `open`, …  */
export const badge = (s) => h(`span.badge.s-${String(s).replace(/[^a-z_]/g, '')}`, String(s));

/** Labels as `k=v` chips. */
export const labels = (l) =>
  Object.entries(l || {}).map(([k, v]) => h('span.chip', `${k}=${v}`));

const SVG = 'http://www.w3.org/2000/svg';

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c instanceof Node ? c : document.createTextNode(c));
  return el;
}

/**
 * A line plot of per-second `series` ([{name, values, cls}], values may hold nulls) under a
 * title, with the largest value on the axis; `unit` follows numbers.
 */
export function plot(title, series, unit = '') {
  const W = 600;
  const H = 140;
  const pad = { l: 44, r: 8, t: 8, b: 18 };
  const n = Math.max(1, ...series.map((x) => x.values.length));
  const max = Math.max(1e-9, ...series.flatMap((x) => x.values.filter((v) => v !== null)));
  const top = niceCeil(max);
  const x = (i) => pad.l + ((W - pad.l - pad.r) * i) / Math.max(1, n - 1);
  const y = (v) => H - pad.b - ((H - pad.t - pad.b) * v) / top;
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`,
    role: 'img',
    'aria-label': `${title}: ${series.map((x) => `${x.name} last ${fmt(last(x.values))}${unit}`).join(', ')}`,
    class: 'plot',
  });
  svg.append(
    s('line', { x1: pad.l, y1: y(0), x2: W - pad.r, y2: y(0), class: 'axis' }),
    s('line', { x1: pad.l, y1: y(top), x2: W - pad.r, y2: y(top), class: 'grid' }),
    s('text', { x: pad.l - 4, y: y(top) + 4, class: 'tick', 'text-anchor': 'end' }, `${fmt(top)}${unit}`),
    s('text', { x: pad.l - 4, y: y(0), class: 'tick', 'text-anchor': 'end' }, '0'),
    s('text', { x: pad.l, y: H - 2, class: 'tick' }, `−${Math.round(n / 60)}m`),
    s('text', { x: W - pad.r, y: H - 2, class: 'tick', 'text-anchor': 'end' }, 'now'),
  );
  for (const one of series) {
    let d = '';
    let pen = false;
    one.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.append(s('path', { d, class: `line ${one.cls}` }));
  }
  const legend = h(
    'p.legend',
    series.map((x) => h(`span.key.${x.cls}`, `${x.name} ${fmt(last(x.values))}${unit}`)),
  );
  return h('figure.card', h('figcaption', title), svg, legend);
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function fmt(v) {
  if (v === null || v === undefined) return '—';
  if (Math.abs(v) >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toFixed(1);
}
