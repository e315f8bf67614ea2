// Generate: a prompt form built from the selected model's declared options, image input where
// the model declares img2img/inpaint, a live denoising preview from the progress events, and
// actions on each result (vary seed, regenerate, send to a board, open in the gallery).
import { get, post, api, events, idempotencyKey } from "./api.js";
import { h, replace, field, setOptions, Status, toast, ask, safeSrc } from "./dom.js";
import { Sketch } from "./sketch.js";

// Declared options that are fields of the generation request itself (limner.models.declaration
// REQUEST_FIELDS); the rest go in the request's `options`.
const TOP_LEVEL = new Set(["sampler", "steps", "cfg", "truncation", "sigma_max"]);
const MAX_SEED = 2 ** 31 - 1;

let S = null; // this page's state, rebuilt on every mount
let subscribed = false;

export function mount(section, ctx) {
  S = { ctx, dirty: false, models: [], model: null, optionInputs: new Map(), jobs: new Map() };
  S.status = new Status();
  S.modelSelect = field("Model", "select", { name: "model" }, " ");
  S.prompt = field("Prompt", "textarea", { name: "prompt", rows: 3, placeholder: "a red heart", maxlength: 2000 });
  S.negative = field("Negative prompt", "textarea", { name: "negative", rows: 2, placeholder: "what to avoid", maxlength: 2000 });
  S.seed = field("Seed", "number", { name: "seed", min: 0, max: MAX_SEED, step: 1, placeholder: "random", inputmode: "numeric" });
  S.num = field("Count", "number", { name: "num", min: 1, max: 16, step: 1, value: 1, inputmode: "numeric" });
  const dice = h("button", { type: "button", class: "secondary", "aria-label": "Random seed", title: "Random seed",
    text: "Roll", onclick: () => { S.seed.input.value = String(randomSeed()); markDirty(); } });
  const seedHelp = h("small", { class: "help", id: `${S.seed.input.id}-help`, text: "Same seed and settings, same image. Empty: random." });
  S.seed.input.setAttribute("aria-describedby", seedHelp.id);
  S.seedRow = h("div", { class: "seed-wrap" }, h("div", { class: "row seed" }, S.seed.wrap, dice), seedHelp);
  S.options = h("div", { class: "options grid2" });
  S.imageInput = h("fieldset", { class: "image-input", hidden: true });
  S.submit = h("button", { type: "submit", text: "Generate" });
  S.cancel = h("button", { type: "button", class: "secondary", text: "Cancel", hidden: true, onclick: cancelJob });
  S.form = h("form", { class: "card", "aria-labelledby": "generate-title", onsubmit: onSubmit, oninput: markDirty, onchange: markDirty },
    h("h2", { id: "generate-title", text: "Generate" }),
    S.modelSelect.wrap, S.prompt.wrap, S.negative.wrap,
    h("div", { class: "grid2" }, S.seedRow, S.num.wrap),
    S.options, S.imageInput, S.status.el,
    h("div", { class: "row" }, S.submit, S.cancel));
  S.modelSelect.input.addEventListener("change", () => selectModel(S.modelSelect.input.value));

  S.progress = h("progress", { max: 1, value: 0, "aria-label": "Progress" });
  S.previewImg = h("img", { class: "preview", alt: "Denoising preview", width: 256, height: 256, hidden: true });
  S.previewText = h("p", { class: "muted", role: "status", "aria-live": "polite", text: "No job running." });
  S.preview = h("div", { class: "card preview-card", "aria-labelledby": "preview-title", dataset: { previews: "0" } },
    h("h2", { id: "preview-title", text: "Preview" }), S.previewImg, S.progress, S.previewText);
  S.results = h("ul", { class: "results grid", "aria-label": "Results" });
  replace(section, h("div", { class: "split" }, S.form, h("div", {}, S.preview,
    h("div", { class: "card" }, h("h2", { text: "Results" }), S.results))));

  if (!subscribed) {
    subscribed = true;
    events.on("preview", onPreview);
    events.on("progress", onProgress);
    events.on("image", (m) => { if (S.jobs.has(m.job_id)) addResult(m.image, S.jobs.get(m.job_id)); });
    events.on("job", (m) => { if (m.job && S.jobs.has(m.job.id)) onJob(m.job); });
  }
}

export async function show() {
  if (S.models.length) return;
  S.status.loading("Loading models…");
  try {
    S.models = await S.ctx.models();
  } catch (err) { S.status.error(err); return; }
  S.status.clear();
  if (!S.models.length) {
    S.status.set("error", "No models yet: train one on the Train page (or install the bundled model).");
    S.submit.disabled = true;
    return;
  }
  setOptions(S.modelSelect.input, S.models.map((m) => ({ value: m.name, label: `${m.name} (${m.kind === "bundled" ? "bundled" : m.family})` })));
  selectModel(S.models[0].name);
}

function randomSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0] % MAX_SEED;
}

function markDirty() { S.dirty = true; }

/** A model's declared options by name (the server sends a list of specs or a name-keyed object). */
function optionsOf(model) {
  const opts = (model && model.options) || {};
  return Array.isArray(opts) ? Object.fromEntries(opts.map((o) => [o.name, o])) : opts;
}

function declares(model, ...names) {
  return names.some((name) => Boolean(model && (name in optionsOf(model) || (model.capabilities || []).includes(name))));
}

function selectModel(name) {
  const model = S.models.find((m) => m.name === name);
  if (!model) return;
  S.model = model;
  S.modelSelect.input.value = name;
  S.modelSelect.wrap.querySelector(".help").textContent = [model.description || model.summary || "",
    model.run_id ? `Model id ${model.run_id} (the gallery's Model filter).` : ""].filter(Boolean).join(" ");
  S.prompt.wrap.hidden = model.cond === "none";
  S.negative.wrap.hidden = !declares(model, "negative", "negative_prompt");
  S.optionInputs.clear();
  const controls = [];
  for (const [opt, spec] of Object.entries(optionsOf(model))) {
    if (opt === "negative" || opt === "strength") continue;
    const control = optionControl(opt, spec || {});
    S.optionInputs.set(opt, { input: control.input, spec: spec || {} });
    controls.push(control.wrap);
  }
  replace(S.options, controls);
  buildImageInput(model);
}

// Friendlier labels for option names that are abbreviations (display only).
const LABELS = { cfg: "Guidance (cfg)", sigma_max: "Starting noise (sigma max)", top_k: "Top k" };

function optionControl(name, spec) {
  const label = spec.label || LABELS[name] || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  const help = spec.help || "";
  if (Array.isArray(spec.choices)) {
    const f = field(label, "select", { name }, help);
    const none = spec.default === undefined || spec.default === null;
    setOptions(f.input, [...(none ? [{ value: "", label: "default" }] : []), ...spec.choices.map(String)], false);
    if (spec.default !== undefined && spec.default !== null) f.input.value = String(spec.default);
    return f;
  }
  if (spec.type === "bool") return field(label, "checkbox", { name, checked: Boolean(spec.default) }, help);
  if (spec.type === "int" || spec.type === "float" || spec.type === "number") {
    return field(label, "number", {
      name, min: spec.min, max: spec.max, step: spec.type === "int" ? 1 : "any", inputmode: "decimal",
      value: spec.default ?? "", placeholder: spec.default === null || spec.default === undefined ? "default" : "",
    }, help);
  }
  return field(label, "text", { name, value: spec.default ?? "" }, help);
}

function optionValue({ input, spec }) {
  if (input.type === "checkbox") return input.checked;
  if (input.value === "") return undefined;
  if (spec.type === "int") return parseInt(input.value, 10);
  if (spec.type === "float" || spec.type === "number") return parseFloat(input.value);
  return input.value;
}

/** Whether this server's generate route takes start images (its OpenAPI schema names the field). */
let serverTakesImages = null;
async function acceptsImages() {
  if (serverTakesImages === null) {
    serverTakesImages = fetch("/openapi.json", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((spec) => Boolean(spec && JSON.stringify(spec.components?.schemas?.GenerateBody?.properties || {}).includes("init_image_id")))
      .catch(() => false);
  }
  return serverTakesImages;
}

async function buildImageInput(model) {
  S.sketch = null;
  S.initFile = null;
  S.strength = null;
  S.strengthTouched = false;
  S.resample = null;
  S.imageInput.hidden = true;
  const takes = await acceptsImages();
  if (S.model !== model) return;
  const img2img = takes && declares(model, "img2img");
  const inpaint = takes && declares(model, "inpaint");
  S.imageInput.hidden = !(img2img || inpaint);
  if (S.imageInput.hidden) { replace(S.imageInput); return; }
  const size = Math.max(64, Math.min(512, (model.resolution || 64) * 4));
  S.sketch = new Sketch(size, { mask: inpaint, onchange: markDirty });
  const file = field("Start image (PNG, JPEG or WebP)", "file", { accept: "image/png,image/jpeg,image/webp" },
    "Or draw below. Leave both empty to start from noise.");
  file.input.addEventListener("change", () => {
    S.initFile = file.input.files[0] || null;
    if (S.initFile) S.sketch.loadImage(S.initFile).catch((err) => S.status.error(err));
  });
  const strength = field("Strength", "range", { min: 0, max: 1, step: 0.05, value: 0.6, name: "strength" },
    "How far from the start image to go (1 = ignore it). With a mask, left alone: 1.");
  S.strength = strength.input;
  S.strength.addEventListener("input", () => { S.strengthTouched = true; });
  // RePaint resampling (limner sample --resample): only with a mask, where the family inpaints.
  const resample = inpaint ? field("Repaint passes", "number", { min: 1, max: 20, step: 1, value: 3, name: "resample", inputmode: "numeric" },
    "Inpainting: passes per step for smoother borders (more = slower).") : null;
  S.resample = resample && resample.input;
  replace(S.imageInput, h("legend", { text: inpaint ? "Image to image and inpainting" : "Image to image" }),
    img2img ? file.wrap : null, S.sketch.el, h("div", { class: "grid2" }, img2img ? strength.wrap : null, resample && resample.wrap));
}

/** The generation request the form describes (docs/studio-api.md, POST /api/generate). */
function requestFromForm() {
  const req = { model: S.model.name, num: parseInt(S.num.input.value || "1", 10), options: {} };
  if (!S.prompt.wrap.hidden && S.prompt.input.value.trim()) req.prompt = S.prompt.input.value;
  if (!S.negative.wrap.hidden && S.negative.input.value.trim()) req.negative = S.negative.input.value;
  if (S.seed.input.value !== "") req.seed = parseInt(S.seed.input.value, 10);
  for (const [name, entry] of S.optionInputs) {
    const value = optionValue(entry);
    if (value === undefined) continue;
    if (TOP_LEVEL.has(name)) req[name] = value;
    else req.options[name] = value;
  }
  return req;
}

async function uploadBlob(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  return post("/api/uploads", form);
}

/** Uploads the canvas (the start image) and the mask, if any, into the request. A mask always
 * goes with the picture under it (a blank canvas is white); strength is sent only when set, or
 * without a mask, so inpainting keeps the library's default (the whole schedule). */
async function attachImages(req) {
  if (!S.sketch) return;
  const masked = S.sketch.hasMask();
  if (S.sketch.hasImage() || masked) {
    const up = await uploadBlob(await S.sketch.imageBlob(), "init.png");
    req.init_image_id = up.id;
    if (S.strength && (!masked || S.strengthTouched)) req.strength = parseFloat(S.strength.value);
  }
  if (masked) {
    const up = await uploadBlob(await S.sketch.maskBlob(), "mask.png");
    req.mask_image_id = up.id;
    if (S.resample && S.resample.value !== "") req.resample = parseInt(S.resample.value, 10);
  }
}

async function onSubmit(e) {
  e.preventDefault();
  if (!S.model) return;
  if (!S.form.reportValidity()) return;
  const req = requestFromForm();
  S.submit.disabled = true;
  S.status.loading("Submitting…");
  try {
    await attachImages(req);
    await submit(req);
    S.dirty = false;
  } catch (err) {
    S.status.error(err);
    if (err.field) focusField(err.field);
  } finally {
    S.submit.disabled = false;
  }
}

function focusField(name) {
  const el = S.form.querySelector(`[name="${CSS.escape(name)}"]`);
  if (el) { el.setAttribute("aria-invalid", "true"); el.focus(); }
}

/** Submit one request (or a regenerate) and follow its job. */
async function submit(req, path = "/api/generate", body = req) {
  const res = await post(path, body, { headers: { "Idempotency-Key": idempotencyKey() } });
  const job = res.job || res;
  S.status.ok(`Job ${job.id} ${job.state || "queued"}.`);
  follow(job, req);
}

function follow(job, req) {
  S.current = job.id;
  S.jobs.set(job.id, { req, shown: new Set() });
  S.preview.dataset.previews = "0";
  S.previewImg.hidden = true;
  S.progress.value = 0;
  S.cancel.hidden = false;
  S.previewText.textContent = `Job ${job.id}: ${job.state || "queued"}…`;
  // The socket carries previews; polling makes sure the result shows even without it.
  clearInterval(S.poll);
  S.poll = setInterval(() => poll(job.id), 1500);
}

async function poll(id) {
  try { onJob(await get(`/api/jobs/${id}`)); } catch (err) { S.previewText.textContent = `Could not read job ${id}: ${err.message}`; }
}

function onPreview(m) {
  if (m.job_id !== S.current) return;
  const src = safeSrc(m.image);
  if (!src) return;
  S.previewImg.src = src;
  S.previewImg.hidden = false;
  S.previewImg.alt = `Denoising preview, step ${m.step} of ${m.total}`;
  S.preview.dataset.previews = String(parseInt(S.preview.dataset.previews, 10) + 1);
  onProgress(m);
}

function onProgress(m) {
  if (m.job_id !== S.current || !m.total) return;
  S.progress.max = m.total;
  S.progress.value = m.step;
  S.previewText.textContent = `Job ${m.job_id}: step ${m.step} of ${m.total}`;
}

async function onJob(job) {
  const entry = S.jobs.get(job.id);
  if (!entry || entry.finished) return;
  if (job.state === "running" && job.progress && job.progress.total && job.id === S.current) onProgress({ job_id: job.id, ...job.progress });
  if (!["done", "failed", "cancelled"].includes(job.state)) return;
  entry.finished = true;
  if (job.id === S.current) { clearInterval(S.poll); S.cancel.hidden = true; }
  if (job.state === "done") {
    S.progress.value = S.progress.max;
    S.previewText.textContent = `Job ${job.id}: done.`;
    S.status.ok(`Job ${job.id} done.`);
    for (const id of (job.result && job.result.image_ids) || []) {
      if (entry.shown.has(id)) continue;
      try { addResult(await get(`/api/images/${id}`), entry); } catch (err) { S.status.error(err); }
    }
  } else {
    const why = job.error ? `: ${job.error}` : "";
    S.previewText.textContent = `Job ${job.id} ${job.state}${why}`;
    if (job.state === "failed") S.status.error(`Job ${job.id} failed${why}`);
    else S.status.ok(`Job ${job.id} cancelled.`);
  }
}

async function cancelJob() {
  if (!S.current) return;
  try { await post(`/api/jobs/${S.current}/cancel`); } catch (err) { S.status.error(err); }
}

function addResult(image, entry) {
  if (!image || entry.shown.has(image.id)) return;
  entry.shown.add(image.id);
  const req = entry.req;
  const boardSelect = h("select", { "aria-label": "Board" });
  S.ctx.boards().then((boards) => setOptions(boardSelect, boards.map((b) => ({ value: b.id, label: b.name }))))
    .catch(() => setOptions(boardSelect, [{ value: "", label: "(boards unavailable)" }]));
  const cardStatus = new Status();
  const card = h("li", { class: "result", dataset: { imageId: image.id, seed: image.seed } },
    h("img", { src: safeSrc(image.file_url || image.thumb_url), alt: image.prompt || `Image ${image.id}`, loading: "lazy",
      width: image.width || 64, height: image.height || 64 }),
    h("p", { class: "muted", text: `seed ${image.seed}` }),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", text: "Vary seed", onclick: () => varySeed(image.id, cardStatus) }),
      h("button", { type: "button", class: "secondary", text: "Regenerate", onclick: () => regenerate(image.id, req, cardStatus) }),
      h("button", { type: "button", class: "secondary", text: "Open in gallery", onclick: () => S.ctx.go("gallery", { image: image.id }) })),
    h("div", { class: "row" }, boardSelect,
      h("button", { type: "button", class: "secondary", text: "Send to board", onclick: () => sendToBoard(image.id, boardSelect.value, cardStatus) })),
    cardStatus.el);
  // Newest job first; within a job, its images in seed order.
  if (entry.last && entry.last.isConnected) entry.last.after(card);
  else S.results.prepend(card);
  entry.last = card;
}

/** The same settings with a new seed: a new version of the image (its parent_id is this one). */
async function varySeed(id, status) {
  const seed = randomSeed();
  try { await submit({ seed }, `/api/images/${id}/regenerate`, { seed }); } catch (err) { status.error(err); }
}

async function regenerate(id, req, status) {
  try { await submit(req, `/api/images/${id}/regenerate`, {}); } catch (err) { status.error(err); }
}

async function sendToBoard(imageId, boardId, status) {
  if (!boardId) { status.error("Create a board on the Gallery page first."); return; }
  status.loading("Adding…");
  try {
    await post(`/api/boards/${boardId}/images`, { image_id: imageId });
    status.ok("Added to the board.");
  } catch (err) { status.error(err); }
}

/** The listed model that made an image: by name, else by its run folder's name (the record's
 * run_path), else by the run id its row carries (a bundled model, a moved run). */
function modelOf(image) {
  const record = image.record || {};
  const folder = (record.run_path || "").split(/[\\/]/).filter(Boolean).pop();
  return S.models.find((m) => m.name === image.model) || S.models.find((m) => m.name === folder)
    || S.models.find((m) => m.run_id && m.run_id === image.model) || null;
}

/** Fill the form from an image (its summary and record); asks before replacing unsaved input. */
export async function recall(image, ctx) {
  if (!S) return false;
  if (S.dirty) {
    const replaceIt = await ask("Replace your unsaved prompt and settings?", {
      yes: "Replace", no: "Keep mine", detail: "Generate has input you have not submitted yet." });
    if (!replaceIt) return false;
  }
  if (!S.models.length) await show();
  const record = image.record || {};
  const model = modelOf(image);
  if (model) selectModel(model.name);
  else S.status.set("error", `The model that made image ${image.id} is not available; the other settings were recalled.`);
  S.prompt.input.value = image.prompt ?? record.prompt ?? "";
  S.negative.input.value = image.negative ?? record.negative ?? "";
  S.seed.input.value = String(image.seed ?? record.seed ?? "");
  S.num.input.value = "1";
  const values = { ...(record.options || {}) };
  for (const key of ["sampler", "steps", "cfg", "truncation"]) {
    const v = image[key] ?? record[key];
    if (v !== undefined && v !== null) values[key] = v;
  }
  for (const [name, { input }] of S.optionInputs) {
    if (!(name in values)) continue;
    if (input.type === "checkbox") input.checked = Boolean(values[name]);
    else input.value = String(values[name]);
  }
  S.dirty = false;
  S.status.ok(`Recalled image ${image.id}: press Generate to make it again.`);
  return true;
}
