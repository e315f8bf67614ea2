// DOM helpers for the studio page. Every piece of user text (prompts, tags, board names,
// usernames, error messages) reaches the page through textContent or attribute setters here;
// nothing in the page assigns HTML strings (tests/web/test_static.py checks the source).

/** Create an element. attrs: class, text, on<event> handlers, dataset, and plain attributes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (key === "checked" || key === "disabled" || key === "selected" || key === "hidden") el[key] = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of el. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let idCounter = 0;
/** A unique id for label/input pairs. */
export function uid(prefix = "f") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A labelled control: returns {wrap, input}. kind: input type, "select", or "textarea". */
export function field(label, kind = "text", attrs = {}, help = "") {
  const id = attrs.id || uid();
  let input;
  if (kind === "select") input = h("select", { ...attrs, id });
  else if (kind === "textarea") input = h("textarea", { ...attrs, id });
  else input = h("input", { type: kind, ...attrs, id });
  const helpEl = help ? h("small", { class: "help", id: `${id}-help`, text: help }) : null;
  if (helpEl) input.setAttribute("aria-describedby", helpEl.id);
  const wrap = h("div", { class: kind === "checkbox" ? "field check" : "field" },
    kind === "checkbox" ? [input, h("label", { for: id, text: label })] : [h("label", { for: id, text: label }), input],
    helpEl);
  return { wrap, input };
}

/** Fill a <select> with options [{value, label}] or plain strings; keeps the value if it still exists. */
export function setOptions(select, options, keep = true) {
  const previous = select.value;
  select.replaceChildren(...options.map((o) => {
    const opt = typeof o === "object" ? o : { value: o, label: o };
    return h("option", { value: String(opt.value), text: opt.label ?? String(opt.value) });
  }));
  if (keep && options.some((o) => String(typeof o === "object" ? o.value : o) === previous)) select.value = previous;
}

/** A status line for one request: loading, error (role=alert) or cleared. */
export class Status {
  constructor(el) {
    this.el = el || h("p", { class: "status", role: "status", "aria-live": "polite" });
  }
  loading(text = "Loading…") { this.set("loading", text); }
  ok(text) { this.set("ok", text); }
  error(err) {
    const text = err && err.message ? err.message : String(err);
    this.set("error", text);
    this.el.setAttribute("role", "alert");
  }
  clear() { this.set("", ""); }
  set(kind, text) {
    this.el.className = `status ${kind}`;
    this.el.setAttribute("role", "status");
    this.el.textContent = text;
    this.el.hidden = !text;
  }
}

/** Run an async request with a Status: shows loading, then the error (and rethrows) or clears. */
export async function withStatus(status, promise, loadingText) {
  status.loading(loadingText);
  try {
    const result = await promise;
    status.clear();
    return result;
  } catch (err) {
    status.error(err);
    throw err;
  }
}

const toastRegion = () => document.getElementById("toasts");

/** A short message at the bottom of the screen, optionally with one action button (e.g. Undo). */
export function toast(text, { action, onAction, kind = "info", timeout = 6000 } = {}) {
  const msg = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, h("span", { text }));
  let timer;
  const close = () => { clearTimeout(timer); msg.remove(); };
  if (action) {
    msg.append(h("button", { type: "button", text: action, onclick: () => { close(); onAction(); } }));
  }
  msg.append(h("button", { type: "button", class: "icon", "aria-label": "Dismiss", text: "×", onclick: close }));
  toastRegion().append(msg);
  timer = setTimeout(close, timeout);
  return msg;
}

/** Ask a yes/no question in a modal <dialog>; resolves true for the confirm button. */
export function ask(question, { yes = "OK", no = "Cancel", detail = "" } = {}) {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: "ask", "aria-labelledby": "ask-title" },
      h("h2", { id: "ask-title", text: question }),
      detail ? h("p", { text: detail }) : null,
      h("div", { class: "row end" },
        h("button", { type: "button", class: "secondary", "data-answer": "no", text: no }),
        h("button", { type: "button", "data-answer": "yes", text: yes })));
    dlg.addEventListener("click", (e) => {
      const answer = e.target.closest && e.target.closest("button")?.dataset.answer;
      if (answer) { dlg.close(); resolve(answer === "yes"); }
    });
    dlg.addEventListener("cancel", () => resolve(false));
    dlg.addEventListener("close", () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** A safe image source: http(s) same-origin paths and PNG/JPEG/WebP data URLs only. */
export function safeSrc(url) {
  if (typeof url !== "string") return "";
  if (/^data:image\/(png|jpeg|webp);base64,[A-Za-z0-9+/=]+$/.test(url)) return url;
  if (url.startsWith("/") && !url.startsWith("//")) return url;
  try {
    const u = new URL(url, location.href);
    return u.origin === location.origin ? u.href : "";
  } catch { return ""; }
}

/** Format an ISO time (or epoch seconds) for people. */
export function when(value) {
  if (value === null || value === undefined || value === "") return "";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}
