// Gallery: one search box (words and meaning, hybrid-ranked by the server), filters, a grid with
// infinite scroll over the keyset cursor, star ratings, boards (shared ones update live over the
// event socket), and a detail panel with the full record, recall, regenerate, download and
// delete with undo.
import { get, post, patch, del, query, events, idempotencyKey } from "./api.js";
import { h, replace, field, setOptions, Status, toast, safeSrc, when } from "./dom.js";

let S = null;
let subscribed = false;
const PAGE = 40;

export function mount(section, ctx) {
  S = { ctx, cursor: null, loading: null, done: false, seen: new Set(), generation: 0 };
  S.status = new Status();
  S.q = field("Search by words or meaning", "search", { name: "q", placeholder: "e.g. red heart, or: a sad face", autocomplete: "off" });
  S.mode = field("Search mode", "select", { name: "mode" });
  // "" lets the server choose: words + meaning, or words alone where it has no embedder.
  setOptions(S.mode.input, [{ value: "", label: "words + meaning" }, { value: "text", label: "words only" }, { value: "semantic", label: "meaning only" }]);
  S.model = field("Model", "select", { name: "model" });
  S.family = field("Family", "select", { name: "family" });
  S.seed = field("Seed", "number", { name: "seed", min: 0, inputmode: "numeric" });
  S.sampler = field("Sampler", "text", { name: "sampler", autocomplete: "off" });
  S.rating = field("Rating at least", "select", { name: "rating_min" });
  setOptions(S.rating.input, [{ value: "", label: "any" }, ...[1, 2, 3, 4, 5].map((n) => ({ value: n, label: "★".repeat(n) }))]);
  S.board = field("Board", "select", { name: "board" });
  S.since = field("From", "date", { name: "since" });
  S.until = field("To", "date", { name: "until" });
  S.trash = field("Show deleted images (trash)", "checkbox", { name: "deleted" });
  const filters = h("details", { class: "filters" }, h("summary", { text: "Filters" }),
    h("div", { class: "grid2" }, S.mode.wrap, S.model.wrap, S.family.wrap, S.seed.wrap, S.sampler.wrap, S.rating.wrap, S.board.wrap, S.since.wrap, S.until.wrap),
    S.trash.wrap,
    h("button", { type: "button", class: "secondary", text: "Clear filters", onclick: clearFilters }));
  S.form = h("form", { class: "card search", role: "search", onsubmit: (e) => { e.preventDefault(); reload(); } },
    h("h2", { id: "gallery-title", text: "Gallery" }),
    h("div", { class: "row grow" }, S.q.wrap, h("button", { type: "submit", text: "Search" })), filters);
  S.form.addEventListener("change", (e) => { if (e.target !== S.q.input) reload(); });

  S.grid = h("ul", { class: "grid gallery-grid", "aria-label": "Images" });
  S.more = h("button", { type: "button", class: "secondary", text: "Load more", hidden: true, onclick: () => loadMore() });
  S.sentinel = h("div", { class: "sentinel", "aria-hidden": "true" });
  S.observer = new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); }, { rootMargin: "400px" });
  S.observer.observe(S.sentinel);
  S.boards = boardsPanel();
  replace(section, h("div", { class: "split gallery" },
    h("div", {}, S.form, S.status.el, S.grid, S.sentinel, S.more),
    S.boards.el));
  if (!subscribed) {
    subscribed = true;
    events.on("board_image", onBoardImage);
    events.on("image", (m) => onNewImage(m.image));
  }
}

export async function show(params) {
  await loadChoices();
  if (params.board) S.board.input.value = params.board;
  if (!S.loadedOnce || params.board) { S.loadedOnce = true; await reload(); }
  if (params.image) {
    // The address opens the panel once; the next visit to the same address opens it again.
    history.replaceState(null, "", "#/gallery");
    openDetail(Number(params.image));
  }
}

async function loadChoices() {
  try {
    const [models, boards] = await Promise.all([S.ctx.models(), S.ctx.boards(true)]);
    const families = [...new Set(models.map((m) => m.family).filter(Boolean))];
    setOptions(S.family.input, [{ value: "", label: "any" }, ...families]);
    // Images carry their model's run id; two folders holding one run (a copy) share it.
    const byId = new Map();
    for (const m of models) if (m.run_id) byId.set(m.run_id, [...(byId.get(m.run_id) || []), m.name]);
    setOptions(S.model.input, [{ value: "", label: "any" },
      ...[...byId].map(([id, names]) => ({ value: id, label: `${names.join(", ")} (${id})` }))]);
    renderBoards(boards);
  } catch (err) { S.status.error(err); }
}

/** A date input's day as epoch seconds: its first second, or (end) the first of the next day. */
function epoch(input, end = false) {
  if (!input.value) return "";
  const [y, m, d] = input.value.split("-").map(Number);
  return String(new Date(y, m - 1, d + (end ? 1 : 0)).getTime() / 1000);
}

function filters() {
  return {
    q: S.q.input.value.trim(), mode: S.q.input.value.trim() ? S.mode.input.value : "",
    model: S.model.input.value, family: S.family.input.value, seed: S.seed.input.value, sampler: S.sampler.input.value.trim(),
    rating_min: S.rating.input.value, board: S.board.input.value,
    since: epoch(S.since.input), until: epoch(S.until.input, true), deleted: S.trash.input.checked ? "true" : "",
  };
}

function filtered() {
  const f = filters();
  return Object.entries(f).some(([k, v]) => v !== "" && k !== "mode");
}

function clearFilters() {
  for (const f of [S.model, S.family, S.seed, S.sampler, S.rating, S.board, S.since, S.until]) f.input.value = "";
  S.trash.input.checked = false;
  reload();
}

async function reload() {
  S.generation += 1;
  S.cursor = null;
  S.done = false;
  S.more.hidden = true;
  S.seen.clear();
  replace(S.grid);
  await loadMore(true);
}

async function loadMore(first = false) {
  const generation = S.generation;
  if (!S.loadedOnce || S.loading === generation || S.done) return;
  S.loading = generation;
  S.status.loading(first ? "Searching…" : "Loading more…");
  let failed = false;
  try {
    const page = await get(`/api/images${query({ ...filters(), cursor: S.cursor, limit: PAGE })}`);
    if (generation !== S.generation) return;
    for (const item of page.items || []) S.grid.append(card(item));
    S.cursor = page.next_cursor || null;
    S.done = !S.cursor;
    S.more.hidden = S.done;
    if (!S.grid.children.length) S.status.ok(filtered() ? "No images match." : "No images yet: make some on the Generate page.");
    else S.status.ok(`${S.grid.children.length} image${S.grid.children.length === 1 ? "" : "s"}${S.done ? "" : " so far"}.`);
  } catch (err) {
    failed = true;
    if (generation === S.generation) { S.status.error(err); S.more.hidden = false; }
  } finally {
    if (S.loading === generation) S.loading = null;
  }
  // A short first page may not fill the screen: keep loading while the sentinel is visible.
  if (!failed && !S.done && generation === S.generation && S.sentinel.getBoundingClientRect().top < innerHeight + 400) loadMore();
}

function stars(image, onRated) {
  const group = h("div", { class: "stars", role: "group", "aria-label": "Rating" });
  const paint = (rating) => {
    [...group.children].forEach((b, i) => {
      b.textContent = i < rating ? "★" : "☆";
      b.setAttribute("aria-pressed", String(i + 1 === rating));
    });
  };
  for (let n = 1; n <= 5; n += 1) {
    group.append(h("button", { type: "button", class: "star", "aria-label": `Rate ${n} star${n > 1 ? "s" : ""}`,
      onclick: async () => {
        const rating = image.rating === n ? 0 : n;
        try {
          await patch(`/api/images/${image.id}`, { rating });
          image.rating = rating;
          paint(rating);
          if (onRated) onRated(rating);
        } catch (err) { toast(`Rating not saved: ${err.message}`, { kind: "error" }); }
      } }));
  }
  paint(image.rating || 0);
  return group;
}

function card(image) {
  S.seen.add(image.id);
  return h("li", { class: "gallery-card", dataset: { imageId: image.id } },
    h("button", { type: "button", class: "thumb", "aria-label": `Open image ${image.id}: ${image.prompt || "no prompt"}`,
      onclick: () => openDetail(image.id) },
    h("img", { src: safeSrc(image.thumb_url || image.file_url), alt: "", loading: "lazy", width: 128, height: 128 })),
    h("p", { class: "prompt", text: image.prompt || "(no prompt)" }),
    image.deleted ? h("button", { type: "button", class: "secondary small", text: "Restore", onclick: () => restore(image) }) : stars(image));
}

function onNewImage(image) {
  if (!S || !image || S.seen.has(image.id) || filtered()) return;
  S.grid.prepend(card(image));
}

function onBoardImage(m) {
  if (!S || !m.image) return;
  const board = (S.boardList || []).find((b) => String(b.id) === String(m.board_id));
  if (String(S.board.input.value) === String(m.board_id) && !S.seen.has(m.image.id)) S.grid.prepend(card(m.image));
  toast(`New image on board “${board ? board.name : m.board_id}”.`);
}

// ---------------------------------------------------------------- boards

function boardsPanel() {
  const list = h("ul", { class: "boards", "aria-label": "Boards" });
  const name = field("New board", "text", { name: "board_name", maxlength: 200, required: true, autocomplete: "off" });
  const status = new Status();
  const form = h("form", { class: "row grow", onsubmit: async (e) => {
    e.preventDefault();
    status.loading("Creating…");
    try {
      await post("/api/boards", { name: name.input.value });
      name.input.value = "";
      status.clear();
      renderBoards(await S.ctx.boards(true));
    } catch (err) { status.error(err); }
  } }, name.wrap, h("button", { type: "submit", text: "Create" }));
  const el = h("aside", { class: "card", "aria-labelledby": "boards-title" }, h("h2", { id: "boards-title", text: "Boards" }), list, form, status.el);
  return { el, list, status };
}

function renderBoards(boards) {
  S.boardList = boards;
  setOptions(S.board.input, [{ value: "", label: "any" }, ...boards.map((b) => ({ value: b.id, label: b.name }))]);
  replace(S.boards.list, boards.length ? boards.map(boardItem) : h("li", { class: "muted", text: "No boards yet." }));
}

function boardItem(board) {
  const status = new Status();
  const user = field("Share with (username)", "text", { autocomplete: "off", required: true });
  const role = field("Role", "select", {});
  setOptions(role.input, ["viewer", "editor"]);
  const share = h("details", {}, h("summary", { text: "Share" }),
    h("form", { onsubmit: async (e) => {
      e.preventDefault();
      status.loading("Sharing…");
      try {
        await post(`/api/boards/${board.id}/members`, { username: user.input.value, role: role.input.value });
        status.ok(`Shared with ${user.input.value}.`);
        user.input.value = "";
      } catch (err) { status.error(err); }
    } }, user.wrap, role.wrap, h("button", { type: "submit", text: "Share" })));
  // role: owner, editor or viewer (a board shared with you), or admin.
  const shared = board.role === "editor" || board.role === "viewer" ? ` (shared with you: ${board.role})` : "";
  return h("li", { class: "board", dataset: { boardId: board.id } },
    h("div", { class: "row" },
      h("button", { type: "button", class: "link", text: `${board.name}${shared}`,
        onclick: () => { S.board.input.value = String(board.id); reload(); } }),
      shared ? null : h("button", { type: "button", class: "secondary small", "aria-label": `Delete board ${board.name}`, text: "Delete",
        onclick: async () => {
          status.loading("Deleting…");
          try { await del(`/api/boards/${board.id}`); renderBoards(await S.ctx.boards(true)); } catch (err) { status.error(err); }
        } })),
    shared ? null : share, status.el);
}

// ---------------------------------------------------------------- detail panel

async function openDetail(id) {
  const status = new Status();
  const body = h("div", { class: "detail-body" }, status.el);
  const dlg = h("dialog", { class: "detail", "aria-labelledby": "detail-title" },
    h("div", { class: "row between" }, h("h2", { id: "detail-title", text: `Image ${id}` }),
      h("button", { type: "button", class: "icon", "aria-label": "Close", text: "×", onclick: () => dlg.close() })),
    body);
  dlg.addEventListener("close", () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  let image;
  let models = [];
  try {
    status.loading("Loading the record…");
    [image, models] = await Promise.all([get(`/api/images/${id}`), S.ctx.models().catch(() => [])]);
    status.clear();
  } catch (err) { status.error(err); return; }
  replace(body, detailView(image, dlg, modelOf(image, models)), status.el);
}

/** The listed model (run or bundled) that made an image, by the run id its row carries. */
function modelOf(image, models) {
  return (models || []).find((m) => m.run_id && m.run_id === image.model) || null;
}

function recordList(image, model) {
  const record = image.record || {};
  const modelText = model ? `${model.name} (id ${image.model})` : image.model;
  const rows = [["prompt", image.prompt], ["negative", image.negative], ["model", modelText], ["seed", image.seed],
    ["sampler", image.sampler], ["steps", image.steps], ["guidance", image.cfg], ["size", image.width && `${image.width}×${image.height}`],
    ["created", when(image.created)], ["tags", (image.tags || []).join(", ")]];
  return h("dl", { class: "record" }, rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })]),
  h("dt", { text: "full record" }),
  h("dd", {}, h("details", {}, h("summary", { text: "JSON" }), h("pre", { class: "json", text: JSON.stringify(record, null, 2) }))));
}

/** "How was this made": the Learn page's filmstrip of this image (its record replayed step by
 * step by the model that made it); only possible with one of your models or a bundled one. */
function howMade(image, model, dlg, status) {
  return h("button", { type: "button", class: "secondary", text: "How was this made", onclick: () => {
    if (!model) {
      status.error(`The model that made image ${image.id} (id ${image.model || "unknown"}) is not one of yours, so it cannot be replayed here.`);
      return;
    }
    dlg.close();
    S.ctx.go("learn", { run: model.name, view: "filmstrip", image: image.id });
  } });
}

function detailView(image, dlg, model) {
  const status = new Status();
  const versions = image.parent_id ? h("p", {}, "Made from ", h("button", { type: "button", class: "link",
    text: `image ${image.parent_id}`, onclick: () => { dlg.close(); openDetail(image.parent_id); } })) : null;
  const tags = field("Tags (comma-separated)", "text", { value: (image.tags || []).join(", "), autocomplete: "off" });
  const tagForm = h("form", { class: "row grow", onsubmit: async (e) => {
    e.preventDefault();
    const list = tags.input.value.split(",").map((t) => t.trim()).filter(Boolean);
    status.loading("Saving tags…");
    try { await patch(`/api/images/${image.id}`, { tags: list }); image.tags = list; status.ok("Tags saved."); } catch (err) { status.error(err); }
  } }, tags.wrap, h("button", { type: "submit", class: "secondary", text: "Save tags" }));
  return h("div", { class: "detail-grid" },
    h("img", { class: "full", src: safeSrc(image.file_url), alt: image.prompt || `Image ${image.id}`, width: image.width || 256, height: image.height || 256 }),
    h("div", {},
      stars(image, () => updateCard(image)),
      recordList(image, model), versions, tagForm,
      h("div", { class: "row wrap" },
        h("button", { type: "button", text: "Recall into Generate", onclick: async () => {
          if (await S.ctx.recall(image)) dlg.close();
        } }),
        h("button", { type: "button", class: "secondary", text: "Regenerate identical", onclick: () => regenerate(image, status) }),
        howMade(image, model, dlg, status),
        h("a", { class: "button secondary", href: safeSrc(`/api/images/${image.id}/file?download=1`), download: `limner-${image.id}.png`, text: "Download PNG" }),
        h("button", { type: "button", class: "danger", text: "Delete", onclick: () => { dlg.close(); remove(image); } })),
      status.el));
}

function updateCard(image) {
  const old = S.grid.querySelector(`[data-image-id="${image.id}"]`);
  if (old) { S.seen.delete(image.id); old.replaceWith(card(image)); }
}

async function regenerate(image, status) {
  status.loading("Regenerating…");
  try {
    const res = await post(`/api/images/${image.id}/regenerate`, {}, { headers: { "Idempotency-Key": idempotencyKey() } });
    const job = res.job || res;
    for (;;) {
      const now = await get(`/api/jobs/${job.id}`);
      if (now.state === "done") {
        const ids = (now.result && now.result.image_ids) || [];
        // Identical pixels are stored once: getting this image's own id back means a bitwise match.
        status.ok(ids.length === 1 && ids[0] === image.id ? "Regenerated: the pixels are identical to this image's (stored once)."
          : `Regenerated: image ${ids.join(", ")}.`);
        if (ids.length) {
          const again = await get(`/api/images/${ids[0]}`);
          onNewImage(again);
          status.el.after(h("p", { class: "regenerated" }, h("button", { type: "button", class: "link", text: `Open image ${again.id}`,
            onclick: () => { document.querySelector("dialog.detail")?.close(); openDetail(again.id); } })));
        }
        return;
      }
      if (now.state === "failed" || now.state === "cancelled") { status.error(`Regenerate ${now.state}${now.error ? `: ${now.error}` : ""}`); return; }
      status.loading(`Regenerating… (${now.state}${now.progress && now.progress.total ? `, step ${now.progress.step} of ${now.progress.total}` : ""})`);
      await new Promise((r) => setTimeout(r, 700));
    }
  } catch (err) { status.error(err); }
}

async function restore(image) {
  try {
    await post(`/api/images/${image.id}/restore`);
    toast(`Restored image ${image.id}.`);
    reload();
  } catch (err) { toast(`Could not restore: ${err.message}`, { kind: "error" }); }
}

async function remove(image) {
  const el = S.grid.querySelector(`[data-image-id="${image.id}"]`);
  try {
    await del(`/api/images/${image.id}`);
  } catch (err) { toast(`Not deleted: ${err.message}`, { kind: "error" }); return; }
  if (el) el.remove();
  S.seen.delete(image.id);
  toast(`Deleted image ${image.id}.`, { action: "Undo", timeout: 10000, onAction: () => restore(image) });
}
