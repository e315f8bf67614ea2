// Learn: the "how it learns" views (limner.explain) of the selected run, from
// GET /api/runs/{name}/explain/{view} ({view, options, data, images: {name: url}, animations}),
// recomputed when the run writes a checkpoint while this page is open. The filmstrip replays one
// gallery image made by the selected model (by image_id; bundled models offer only this view).
// Where the server has no explain route, the page says so and shows what the runs routes give
// (the fixed-seed timeline and the loss curve).
import { get, query, events } from "./api.js";
import { h, replace, field, setOptions, Status, safeSrc } from "./dom.js";
import { lineChart } from "./chart.js";

// The views of limner.explain the page offers, with their options (the filmstrip's image is a
// gallery image id: the server finds its PNG).
const VIEWS = [
  { name: "timeline", label: "Training timeline", about: "Fixed-seed samples at each checkpoint, with the loss and other curves.", options: [] },
  { name: "step", label: "One training step, opened up", about: "One real batch: the input, the noise, the prediction, the loss, and the gradient and update of every layer.", options: ["step", "seed"] },
  { name: "features", label: "Feature hierarchy", about: "The strongest feature maps of each level for a training image, and the training patches that excite one channel most (token models: each transformer block on the token grid, and where one token looks).", options: ["step", "index", "token"] },
  { name: "dynamics", label: "Family dynamics", about: "How this family learns: loss by noise level (diffusion), D(real) and D(fake) (GAN), the latent map (VAE), loss and confidence against the share of masked tokens (MaskGIT), loss along the raster order (autoregressive); for text runs, the prompt's attention maps.", options: ["step", "seed", "prompt"] },
  { name: "attention", label: "Cross-attention", about: "Where each prompt token looks in the image (text-conditioned runs; token models: the prompt's share of each image token's attention).", options: ["step", "seed", "prompt"] },
  { name: "filmstrip", label: "How an image was made (filmstrip)", about: "One of your images replayed from its record: the noisy picture and the model's guess of the clean image at every sampler step (token models: the order tokens were chosen).", options: ["image"] },
];

let S = null;
let subscribed = false;

export function mount(section, ctx) {
  S = { ctx, run: null };
  S.status = new Status();
  S.runSelect = field("Run", "select", { name: "run" });
  S.viewSelect = field("View", "select", { name: "view" });
  setOptions(S.viewSelect.input, VIEWS.map((v) => ({ value: v.name, label: v.label })));
  S.about = h("p", { class: "muted" });
  S.opts = {
    step: field("Checkpoint step", "number", { name: "step", min: 0, step: 1, placeholder: "newest", inputmode: "numeric" }),
    seed: field("Seed", "number", { name: "seed", min: 0, step: 1, placeholder: "default", inputmode: "numeric" }),
    index: field("Training image number", "number", { name: "index", min: 0, step: 1, placeholder: "0", inputmode: "numeric" }),
    prompt: field("Prompt", "text", { name: "prompt", placeholder: "the run's first caption", maxlength: 500 }, "Text-conditioned runs only."),
    token: field("Token (raster index)", "number", { name: "token", min: 0, step: 1, placeholder: "middle", inputmode: "numeric" }, "Token models only."),
    image: field("Image", "select", { name: "image_id" }, "Images this model made (newest first)."),
  };
  S.imageStatus = new Status();
  S.opts.image.wrap.append(S.imageStatus.el);
  S.body = h("div", { class: "learn-body", "aria-live": "polite" });
  const form = h("form", { class: "card", onsubmit: (e) => { e.preventDefault(); loadView(); } },
    h("h2", { id: "learn-title", text: "How it learns" }),
    h("div", { class: "grid2" }, S.runSelect.wrap, S.viewSelect.wrap), S.about,
    h("div", { class: "grid2" }, Object.values(S.opts).map((f) => f.wrap)),
    h("button", { type: "submit", text: "Show" }), S.status.el);
  S.runSelect.input.addEventListener("change", async () => { S.run = S.runSelect.input.value; offerViews(); await loadImages(); loadView(); });
  S.viewSelect.input.addEventListener("change", async () => { describeView(); await loadImages(); loadView(); });
  S.opts.image.input.addEventListener("change", () => loadView());
  replace(section, form, S.body);
  describeView();
  if (!subscribed) {
    subscribed = true;
    // Live while a run trains: a new checkpoint recomputes the view on screen.
    events.on("checkpoint", (m) => { if (S && m.run === S.run && !document.getElementById("page-learn").hidden) loadView(); });
  }
}

function describeView() {
  const view = VIEWS.find((v) => v.name === S.viewSelect.input.value) || VIEWS[0];
  S.about.textContent = view.about;
  for (const [name, f] of Object.entries(S.opts)) f.wrap.hidden = !view.options.includes(name);
}

const current = () => (S.runs || []).find((r) => r.name === S.run) || null;

/** Your runs offer every view; a bundled model (no training history here) only the filmstrip. */
function offerViews() {
  const bundled = current()?.kind === "bundled";
  const views = bundled ? VIEWS.filter((v) => v.name === "filmstrip") : VIEWS;
  setOptions(S.viewSelect.input, views.map((v) => ({ value: v.name, label: v.label })));
  describeView();
}

/** The filmstrip's image choices: the gallery's images made by the selected model (its run id). */
async function loadImages(wanted) {
  if (S.viewSelect.input.value !== "filmstrip") return;
  const run = current();
  const select = S.opts.image.input;
  if (!run || !run.run_id) { setOptions(select, []); return; }
  S.imageStatus.loading("Loading this model's images…");
  try {
    const page = await get(`/api/images${query({ model: run.run_id, limit: 60 })}`);
    const items = page.items || [];
    const options = items.map((i) => ({ value: i.id, label: `#${i.id}: ${(i.prompt || "(no prompt)").slice(0, 60)} (seed ${i.seed})` }));
    const want = wanted ?? select.value;
    if (want && !options.some((o) => String(o.value) === String(want))) options.unshift({ value: want, label: `#${want}` });
    setOptions(select, options, false);
    if (want) select.value = String(want);
    if (options.length) S.imageStatus.clear();
    else S.imageStatus.set("error", "No images from this model yet: make one on the Generate page.");
  } catch (err) { S.imageStatus.error(err); }
}

export async function show(params) {
  S.status.loading("Loading runs…");
  try {
    const [runs, models] = await Promise.all([get("/api/runs"), S.ctx.models().catch(() => [])]);
    S.status.clear();
    const usable = runs.filter((r) => r.state !== "unreadable").map((r) => ({ ...r, kind: "run" }));
    const bundled = models.filter((m) => m.kind === "bundled" && !usable.some((r) => r.name === m.name));
    S.runs = [...usable, ...bundled];
    if (!S.runs.length) { S.status.set("error", "No runs yet: start one on the Train page."); replace(S.body); return; }
    setOptions(S.runSelect.input, S.runs.map((r) => ({ value: r.name,
      label: r.kind === "bundled" ? `${r.name} (bundled ${r.family})` : `${r.name} (${r.family}, step ${r.step ?? 0})` })));
    if (params.run && S.runs.some((r) => r.name === params.run)) S.runSelect.input.value = params.run;
    const changed = S.run !== S.runSelect.input.value;
    S.run = S.runSelect.input.value;
    offerViews();
    if (params.view && [...S.viewSelect.input.options].some((o) => o.value === params.view)) {
      S.viewSelect.input.value = params.view;
      describeView();
    }
    await loadImages(params.image);
    if (changed || params.view || params.image) await loadView();
  } catch (err) { S.status.error(err); }
}

async function loadView() {
  if (!S.run) return;
  const view = S.viewSelect.input.value;
  if (view === "filmstrip" && !S.opts.image.input.value) {
    const status = new Status();
    replace(S.body, status.el);
    status.set("error", "Choose an image this model made (none yet? generate one first).");
    return;
  }
  const label = (VIEWS.find((v) => v.name === view) || {}).label || view;
  const status = new Status();
  replace(S.body, status.el);
  status.loading(`Computing “${label}” for ${S.run} (a few seconds for small models)…`);
  const params = {};
  for (const f of Object.values(S.opts)) if (!f.wrap.hidden && f.input.value !== "") params[f.input.name] = f.input.value;
  const run = S.run;
  const image = S.opts.image.input.value;
  try {
    const res = await get(`/api/runs/${encodeURIComponent(run)}/explain/${encodeURIComponent(view)}${query(params)}`);
    if (run !== S.run || view !== S.viewSelect.input.value || (view === "filmstrip" && image !== S.opts.image.input.value)) return;
    replace(S.body, renderResult(res, label));
  } catch (err) {
    if (err.status === 404 && /not found/i.test(err.detail || "")) { await fallback(status); return; }
    status.error(err);
  }
}

function renderResult(res, label) {
  const pictures = [...Object.entries(res.images || {}), ...Object.entries(res.animations || {})];
  return h("div", { class: "card explain", dataset: { view: res.view } },
    h("h3", { text: label }),
    typeof res.data?.last_frame_equals_image === "boolean" ? h("p", { class: res.data.last_frame_equals_image ? "status ok" : "status error",
      text: res.data.last_frame_equals_image ? `The last frame is image ${res.options?.image_id ?? ""} itself: the replay made the same pixels.`
        : "The replay's last frame differs from the stored image (another device or library version?)." }) : null,
    pictures.length ? h("div", { class: "explain-pictures" }, pictures.map(([name, url]) => h("figure", {},
      h("img", { src: safeSrc(url), alt: `${label}: ${name}`, class: "explain-img" }), h("figcaption", { text: name })))) : null,
    h("details", { open: !pictures.length }, h("summary", { text: "The numbers" }), render(res.data, 0)));
}

async function fallback(status) {
  status.loading("Loading the run…");
  try {
    const name = encodeURIComponent(S.run);
    const [metrics, frames] = await Promise.all([get(`/api/runs/${name}/metrics`), get(`/api/runs/${name}/samples`)]);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "chart");
    lineChart(svg, metrics.filter((r) => typeof r.loss === "number").map((r) => ({ x: r.step, y: r.loss })), { title: "Training loss" });
    replace(S.body, h("p", { class: "status info", text: "This studio server has no “how it learns” views (limner.explain is not installed there); showing the run's timeline and loss instead." }),
      h("div", { class: "card" }, h("h3", { text: "Training timeline" }),
        frames.length ? h("ol", { class: "strip" }, frames.map((f) => h("li", {},
          h("img", { src: safeSrc(f.url), alt: `Samples at step ${f.step}`, width: 128, height: 128 }), h("span", { text: `step ${f.step}` }))))
          : h("p", { class: "muted", text: "No sample frames yet." })),
      h("div", { class: "card" }, h("h3", { text: "Loss" }), svg));
  } catch (err) { status.error(err); }
}

// A view's numbers, shown without knowing the view: {step: [...], value: [...]} and number lists
// become charts, lists of flat records become tables, other objects labelled lists. Text is
// always set with textContent.
function chartOf(points, ylabel, xlabel = "step") {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart small");
  lineChart(svg, points, { xlabel, ylabel });
  return svg;
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const flat = (v) => v === null || ["string", "number", "boolean"].includes(typeof v) || (Array.isArray(v) && v.length <= 8 && v.every((x) => !x || typeof x !== "object"));

function cell(v) {
  if (isNum(v)) return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  if (Array.isArray(v)) return v.map(cell).join(", ");
  return String(v ?? "");
}

function render(value, depth, key = "") {
  if (Array.isArray(value)) {
    if (value.length > 1 && value.every(isNum) && !value.every(Number.isInteger)) return chartOf(value.map((y, x) => ({ x, y })), key || "value", "index");
    if (value.length && value.every((r) => r && typeof r === "object" && !Array.isArray(r) && Object.values(r).every(flat))) {
      const cols = Object.keys(value[0]);
      return h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col", text: c })))),
        h("tbody", {}, value.slice(0, 300).map((r) => h("tr", {}, cols.map((c) => h("td", { text: cell(r[c]) })))))));
    }
    if (value.every(flat)) return h("span", { text: cell(value) });
    return h("ol", { class: "explain-list" }, value.slice(0, 100).map((v) => h("li", {}, render(v, depth + 1, key))));
  }
  if (value && typeof value === "object") {
    if (Array.isArray(value.step) && Array.isArray(value.value) && value.step.length === value.value.length) {
      return chartOf(value.step.map((x, i) => ({ x, y: value.value[i] })), key || "value");
    }
    if (depth > 6) return h("code", { text: JSON.stringify(value).slice(0, 200) });
    return h("dl", { class: "record" }, Object.entries(value).map(([k, v]) => [h("dt", { text: k }), h("dd", {}, render(v, depth + 1, k))]));
  }
  return h("span", { text: cell(value) });
}
