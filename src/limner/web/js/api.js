// The studio HTTP API (docs/studio-api.md) and its progress-event WebSocket, as the page uses them.

export class ApiError extends Error {
  constructor(status, detail, fieldName, retryAfter) {
    const where = fieldName ? ` (${fieldName})` : "";
    super(`${detail || `request failed with HTTP ${status}`}${where}`);
    this.status = status;
    this.detail = detail;
    this.field = fieldName || null;
    this.retryAfter = retryAfter || null;
  }
}

const listeners = { unauthorized: new Set() };

/** Called with no arguments whenever a request answers 401 (the session ended). */
export function onUnauthorized(fn) { listeners.unauthorized.add(fn); }

function describe(body, status) {
  if (!body) return `HTTP ${status}`;
  if (typeof body.detail === "string") return body.detail;
  // FastAPI's own validation errors: [{loc: [...], msg}]
  if (Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

function fieldOf(body) {
  if (!body) return null;
  if (body.field) return body.field;
  if (Array.isArray(body.detail) && body.detail[0] && body.detail[0].loc) {
    return body.detail[0].loc.filter((x) => x !== "body").join(".");
  }
  return null;
}

/**
 * One request. body: an object (sent as JSON) or FormData. Resolves to the parsed JSON
 * (or null for 204); rejects with an ApiError carrying the server's detail and field.
 */
export async function api(method, path, body, { headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin", signal };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the studio server did not answer (is it running?)");
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 200) }; }
  }
  if (!res.ok) {
    if (res.status === 401 && !path.startsWith("/api/auth/login")) listeners.unauthorized.forEach((fn) => fn());
    const retry = res.headers.get("Retry-After");
    let detail = describe(data, res.status);
    if (res.status === 429) detail = `the queue is full; try again${retry ? ` in ${retry} s` : " shortly"}`;
    throw new ApiError(res.status, detail, fieldOf(data), retry);
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body === undefined ? {} : body, opts);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** A key that makes a retried submit return the same job (Idempotency-Key header). */
export function idempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The progress-event stream (WS /api/events): one socket, reconnected with backoff.
 * on(type, fn) subscribes to one message type ("job", "progress", "preview", "image",
 * "checkpoint", "board_image") or "*" for all, and "open"/"close" for the connection state.
 */
class Events {
  constructor() {
    this.handlers = new Map();
    this.socket = null;
    this.delay = 500;
    this.wanted = false;
    this.connected = false;
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }

  emit(type, msg) {
    for (const fn of this.handlers.get(type) || []) {
      try { fn(msg); } catch (err) { console.error(err); }
    }
  }

  start() {
    this.wanted = true;
    if (this.socket) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/events`;
    const ws = new WebSocket(url);
    this.socket = ws;
    ws.onopen = () => { this.delay = 500; this.connected = true; this.emit("open", {}); };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (!msg || typeof msg.type !== "string") return;
      this.emit(msg.type, msg);
      this.emit("*", msg);
    };
    ws.onclose = () => {
      this.socket = null;
      this.connected = false;
      this.emit("close", {});
      if (this.wanted) {
        setTimeout(() => this.start(), this.delay);
        this.delay = Math.min(this.delay * 2, 10000);
      }
    };
  }

  stop() {
    this.wanted = false;
    if (this.socket) this.socket.close();
  }
}

export const events = new Events();
