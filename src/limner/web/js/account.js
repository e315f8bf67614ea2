// Account: who is signed in, sign out, API keys (a new key is shown once), users (admins).
import { get, post, del } from "./api.js";
import { h, replace, field, setOptions, Status, when, ask } from "./dom.js";

let S = null;

export function mount(section, ctx) {
  S = { ctx };
  S.who = h("p", {});
  S.keys = h("ul", { class: "keys", "aria-label": "API keys" });
  S.keysStatus = new Status();
  S.newKey = h("div", { class: "new-key", "aria-live": "polite" });
  const keyName = field("Key name", "text", { required: true, maxlength: 100, autocomplete: "off", placeholder: "laptop script" });
  const keyForm = h("form", { class: "row grow", onsubmit: async (e) => {
    e.preventDefault();
    S.keysStatus.loading("Creating…");
    try {
      const key = await post("/api/keys", { name: keyName.input.value });
      keyName.input.value = "";
      S.keysStatus.clear();
      const box = h("input", { type: "text", readonly: true, value: key.key, "aria-label": "New API key", class: "mono" });
      replace(S.newKey, h("div", { class: "status ok", role: "status" },
        h("p", { text: `Key “${key.name}” created. Copy it now: it is shown only once.` }), box,
        h("button", { type: "button", class: "secondary", text: "Copy", onclick: async () => {
          box.select();
          try { await navigator.clipboard.writeText(key.key); } catch { document.execCommand("copy"); }
        } })));
      box.focus();
      box.select();
      loadKeys();
    } catch (err) { S.keysStatus.error(err); }
  } }, keyName.wrap, h("button", { type: "submit", text: "Create key" }));
  S.users = h("ul", { class: "users", "aria-label": "Users" });
  S.usersStatus = new Status();
  const uname = field("Username", "text", { required: true, autocomplete: "off" });
  const upass = field("Password", "password", { required: true, autocomplete: "new-password", minlength: 8 });
  const urole = field("Role", "select", {});
  setOptions(urole.input, ["user", "admin"]);
  const userForm = h("form", { onsubmit: async (e) => {
    e.preventDefault();
    S.usersStatus.loading("Adding…");
    try {
      await post("/api/users", { username: uname.input.value, password: upass.input.value, role: urole.input.value });
      S.usersStatus.ok(`Added ${uname.input.value}.`);
      uname.input.value = "";
      upass.input.value = "";
      loadUsers();
    } catch (err) { S.usersStatus.error(err); }
  } }, h("div", { class: "grid2" }, uname.wrap, upass.wrap, urole.wrap), h("button", { type: "submit", text: "Add user" }));
  S.adminCard = h("div", { class: "card", hidden: true, "aria-labelledby": "users-title" },
    h("h2", { id: "users-title", text: "Users" }), S.users, S.usersStatus.el, userForm);
  replace(section,
    h("div", { class: "card" }, h("h2", { id: "account-title", text: "Account" }), S.who,
      S.signOut = h("button", { type: "button", class: "secondary", text: "Sign out", onclick: () => ctx.logout() })),
    h("div", { class: "card", "aria-labelledby": "keys-title" }, h("h2", { id: "keys-title", text: "API keys" }),
      h("p", { class: "muted", text: "For scripts and limner.client: send it as Authorization: Bearer <key>." }),
      S.keys, S.keysStatus.el, keyForm, S.newKey),
    S.adminCard);
}

export function show(params, ctx) {
  const me = ctx.me || {};
  S.who.textContent = me.implicit
    ? "No accounts yet: on this machine you are the local admin. Adding the first user (an admin) below turns sign-in on."
    : `Signed in as ${me.username} (${me.role}).`;
  S.signOut.hidden = Boolean(me.implicit);
  S.adminCard.hidden = me.role !== "admin";
  loadKeys();
  if (me.role === "admin") loadUsers();
}

async function loadKeys() {
  S.keysStatus.loading("Loading keys…");
  try {
    const keys = await get("/api/keys");
    S.keysStatus.clear();
    const live = keys.filter((k) => !k.revoked);
    replace(S.keys, live.length ? live.map((k) => h("li", { class: "row between" },
      h("span", { text: `${k.name}${k.prefix ? ` (${k.prefix}…)` : ""}${k.created ? ` · created ${when(k.created)}` : ""}${k.last_used ? ` · last used ${when(k.last_used)}` : " · never used"}` }),
      h("button", { type: "button", class: "danger small", "aria-label": `Revoke key ${k.name}`, text: "Revoke", onclick: async () => {
        if (!(await ask(`Revoke the key “${k.name}”?`, { yes: "Revoke", detail: "Scripts using it stop working." }))) return;
        try { await del(`/api/keys/${k.id}`); loadKeys(); } catch (err) { S.keysStatus.error(err); }
      } }))) : h("li", { class: "muted", text: "No keys." }));
  } catch (err) { S.keysStatus.error(err); }
}

async function loadUsers() {
  S.usersStatus.loading("Loading users…");
  try {
    const users = await get("/api/users");
    S.usersStatus.clear();
    replace(S.users, users.map((u) => h("li", { text: `${u.username} (${u.role})` })));
  } catch (err) { S.usersStatus.error(err); }
}
