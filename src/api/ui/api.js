// The console's only way to the cluster: the public API of the node that served the page
// (same origin), with the token the user gave, kept for this tab only (sessionStorage).

const TOKEN_KEY = 'hookd.token';

export const session = {
  // Whether the nodes want a token (told by the page itself, so no request fails to find out).
  needsToken: document.querySelector('meta[name="hookd-auth"]')?.content === 'token',
  token: sessionStorage.getItem(TOKEN_KEY),
  // What the token may do, from GET /v1/cluster's `access`: 'all' or 'read'.
  access: 'all',
  get canWrite() {
    return this.access === 'all';
  },
  login(token) {
    this.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  logout() {
    this.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An answer other than 2xx: `status`, and the API's error code, message and field. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || '';
    this.field = e.field || '';
  }
}

/** No answer at all: the node is down or cut off. */
export class Unreachable extends Error {}

const listeners = new Set();
let reachable = true;
let lastAnswer = null;

/** Calls `f(reachable, lastAnswerDate)` whenever the node starts or stops answering. */
export function onReachability(f) {
  listeners.add(f);
}

function setReachable(ok) {
  if (ok) lastAnswer = new Date();
  if (ok === reachable) return;
  reachable = ok;
  for (const f of listeners) f(ok, lastAnswer);
}

/**
 * One request: `body` (an object) is sent as JSON; `headers` are added. Resolves to
 * `{data, headers, status}`; rejects with ApiError or Unreachable.
 */
export async function api(method, path, body, headers = {}) {
  const h = { ...headers };
  if (session.token) h.authorization = `Bearer ${session.token}`;
  const init = { method, headers: h, cache: 'no-store' };
  if (body !== undefined) {
    h['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    setReachable(false);
    throw new Unreachable(`${location.host} does not answer`);
  }
  setReachable(true);
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return { data, headers: resp.headers, status: resp.status };
}

export const get = (path) => api('GET', path).then((r) => r.data);

/** A query string of the given values that are set: `?a=1&b=x`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(s);
