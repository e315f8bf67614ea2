// limner studio page: boot, login, hash router and the state the pages share.
import { api, get, post, events, onUnauthorized } from "./api.js";
import { h, replace, field, Status } from "./dom.js";
import * as generate from "./generate.js";
import * as gallery from "./gallery.js";
import * as train from "./train.js";
import * as learn from "./learn.js";
import * as account from "./account.js";

const pages = { generate, gallery, train, learn, account };
const mounted = new Set();

/** What the pages share: the signed-in user, cached lists and navigation. */
export const ctx = {
  me: null,
  _models: null,
  _boards: null,
  /** The models (runs and bundled), cached; force=true reloads. */
  async models(force = false) {
    if (!this._models || force) this._models = get("/api/models").catch((e) => { this._models = null; throw e; });
    return this._models;
  },
  async boards(force = false) {
    if (!this._boards || force) this._boards = get("/api/boards").catch((e) => { this._boards = null; throw e; });
    return this._boards;
  },
  go(page, params = {}) {
    const q = new URLSearchParams(params).toString();
    location.hash = `#/${page}${q ? `?${q}` : ""}`;
  },
  /** Put an image's record into Generate (the page asks before replacing unsaved input). */
  async recall(image) {
    ensureMounted("generate");
    const done = await generate.recall(image, ctx);
    if (done) ctx.go("generate");
    return done;
  },
};

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, q] = raw.split("?");
  return { name: pages[name] ? name : "generate", params: Object.fromEntries(new URLSearchParams(q || "")) };
}

function ensureMounted(name) {
  if (mounted.has(name)) return;
  mounted.add(name);
  pages[name].mount(document.getElementById(`page-${name}`), ctx);
}

function showPage(name, params) {
  for (const section of document.querySelectorAll("main > section.page")) section.hidden = section.id !== `page-${name}`;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  ensureMounted(name);
  pages[name].show(params || {}, ctx);
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · limner studio`;
}

function route() {
  if (!ctx.me) return;
  const { name, params } = parseHash();
  showPage(name, params);
}

function showLogin(message = "") {
  ctx.me = null;
  events.stop();
  document.getElementById("nav").hidden = true;
  for (const section of document.querySelectorAll("main > section.page")) section.hidden = section.id !== "page-login";
  const section = document.getElementById("page-login");
  const user = field("Username", "text", { autocomplete: "username", required: true, name: "username" });
  const pass = field("Password", "password", { autocomplete: "current-password", required: true, name: "password" });
  const status = new Status();
  if (message) status.error(message);
  const form = h("form", { class: "card narrow", onsubmit: async (e) => {
    e.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    status.loading("Signing in…");
    try {
      await post("/api/auth/login", { username: user.input.value, password: pass.input.value });
      status.clear();
      await start();
    } catch (err) {
      status.error(err.status === 401 ? "Wrong username or password." : err);
    } finally {
      button.disabled = false;
    }
  } }, h("h2", { id: "login-title", text: "Sign in" }), user.wrap, pass.wrap, status.el,
  h("button", { type: "submit", text: "Sign in" }));
  replace(section, form);
  document.title = "Sign in · limner studio";
  user.input.focus();
}

async function start() {
  const boot = document.getElementById("boot");
  boot.hidden = false;
  boot.className = "status loading";
  boot.textContent = "Loading the studio…";
  let me;
  try {
    me = await get("/api/me");
  } catch (err) {
    boot.hidden = true;
    if (err.status === 401) { showLogin(); return; }
    boot.hidden = false;
    boot.className = "status error";
    boot.setAttribute("role", "alert");
    boot.textContent = `Could not reach the studio: ${err.message}`;
    return;
  }
  boot.hidden = true;
  ctx.me = me;
  ctx._models = null;
  ctx._boards = null;
  document.getElementById("nav").hidden = false;
  document.body.dataset.role = me.role || "user";
  events.start();
  route();
}

function connectionIndicator() {
  const conn = document.getElementById("conn");
  events.on("open", () => { conn.textContent = "live"; conn.className = "conn live"; });
  events.on("close", () => {
    if (ctx.me) { conn.textContent = "reconnecting…"; conn.className = "conn down"; }
  });
}

onUnauthorized(() => { if (ctx.me) showLogin("Your session ended; sign in again."); });
window.addEventListener("hashchange", route);
connectionIndicator();
start();

// For the account page: sign out returns to the login form.
ctx.logout = async function logout() {
  try { await api("POST", "/api/auth/logout", {}); } finally {
    mounted.clear();
    for (const name of Object.keys(pages)) replace(document.getElementById(`page-${name}`));
    showLogin();
  }
};
