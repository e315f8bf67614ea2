// Train: a dataset (an uploaded zip, or for admins a folder on the studio's machine, each with the
// server's report of skipped files before training starts), a family, a preset and the condition
// from GET /api/families, and the runs the family is built on (a picker of your runs of the
// declared family and condition); start, stop and resume; the live loss curve; the fixed-seed
// sample timeline with a scrubber; two checkpoints side by side; evaluation metrics.
import { get, post, query, events, idempotencyKey } from "./api.js";
import { h, replace, field, setOptions, Status, safeSrc, when } from "./dom.js";
import { lineChart } from "./chart.js";

let S = null;
let subscribed = false;

export function mount(section, ctx) {
  S = { ctx, run: null, jobs: new Map(), loss: [], frames: [] };
  S.status = new Status();
  S.source = field("Data from", "select", { name: "source" });
  setOptions(S.source.input, [{ value: "upload", label: "an uploaded dataset" }, { value: "folder", label: "a folder on the studio's machine" }]);
  S.source.wrap.hidden = true; // shown when the server lets this user name a folder (GET /api/datasets/roots)
  S.source.input.addEventListener("change", showSource);
  S.data = field("Dataset", "select", { name: "data", required: true }, "Your uploaded datasets (a zip of images becomes one).");
  S.folder = field("Dataset folder", "text", { name: "data_path", autocomplete: "off", spellcheck: "false", class: "mono" }, " ");
  S.folderReport = h("div", { class: "folder-report", "aria-live": "polite" });
  S.folderBox = h("div", { class: "folder-box", hidden: true }, S.folder.wrap,
    h("button", { type: "button", class: "secondary", text: "Check folder", onclick: () => checkFolder() }), S.folderReport);
  S.folder.input.addEventListener("input", () => { S.checked = null; S.folder.input.removeAttribute("aria-invalid"); });
  S.zipName = field("New dataset name", "text", { name: "dataset_name", autocomplete: "off", pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*",
    placeholder: "my-photos" });
  S.zip = field("Zip of images (captions as metadata.jsonl or .txt files, or class folders)", "file",
    { accept: ".zip,application/zip", name: "zip" });
  S.zipReport = h("div", { class: "zip-report", "aria-live": "polite" });
  const upload = h("details", { class: "upload" }, h("summary", { text: "Upload a dataset" }), S.zipName.wrap, S.zip.wrap,
    h("button", { type: "button", class: "secondary", text: "Upload and check", onclick: uploadZip }), S.zipReport);
  S.family = field("Family", "select", { name: "family" }, " ");
  S.preset = field("Preset", "select", { name: "preset" }, " ");
  S.cond = field("Condition", "select", { name: "cond" }, "What the model is conditioned on; by default it follows the data (captions: text, class folders: class).");
  S.needs = h("div", { class: "needs" });
  S.family.input.addEventListener("change", () => fillFamily());
  S.preset.input.addEventListener("change", () => describePreset());
  S.steps = field("Steps", "number", { name: "steps", min: 1, step: 1, value: 2000, inputmode: "numeric" });
  S.name = field("Run name", "text", { name: "name", autocomplete: "off", pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", required: true,
    placeholder: "my-run" }, "Letters, digits, dot, dash and underscore.");
  S.resolution = field("Resolution (px)", "number", { name: "resolution", min: 8, step: 8, value: 32, inputmode: "numeric" });
  S.set = field("Settings (one KEY=VALUE a line)", "textarea", { name: "set", rows: 3, spellcheck: "false", class: "mono",
    placeholder: "train.batch_size=16\ntrain.sample_every=250" }, "As `limner train --set`: train.* and family.* config fields, values in JSON.");
  S.start = h("button", { type: "submit", text: "Start training" });
  const form = h("form", { class: "card", onsubmit: startTraining },
    h("h2", { id: "train-title", text: "Train" }), S.source.wrap, S.data.wrap, upload, S.folderBox,
    h("div", { class: "grid2" }, S.family.wrap, S.preset.wrap), S.needs,
    h("div", { class: "grid2" }, S.steps.wrap, S.name.wrap),
    h("details", {}, h("summary", { text: "Advanced" }), S.cond.wrap, S.resolution.wrap, S.set.wrap), S.status.el, S.start);
  S.uploadBox = upload;

  S.runsStatus = new Status();
  S.runs = h("ul", { class: "runs", "aria-label": "Runs" });
  S.detail = h("div", { class: "run-detail" });
  replace(section, h("div", { class: "split" },
    h("div", {}, form, h("div", { class: "card" }, h("div", { class: "row between" }, h("h2", { text: "Runs" }),
      h("button", { type: "button", class: "secondary small", text: "Refresh", onclick: loadRuns })), S.runsStatus.el, S.runs)),
    S.detail));
  if (!subscribed) {
    subscribed = true;
    events.on("progress", onProgress);
    events.on("checkpoint", onCheckpoint);
    events.on("job", (m) => onJob(m.job));
  }
}

export async function show(params) {
  await Promise.all([loadChoices(), loadRuns()]);
  if (params.run) selectRun(params.run);
}

async function loadChoices() {
  try {
    const families = await get("/api/families");
    S.families = families;
    const keep = S.family.input.value;
    setOptions(S.family.input, families.map((f) => ({ value: f.name, label: f.name })));
    if (!keep) S.family.input.value = (families.find((f) => f.default) || families[0] || {}).name || "";
    fillFamily();
  } catch (err) {
    S.status.error(err);
  }
  await Promise.all([loadDatasets(), loadRoots()]);
}

/** Whether this user may train from a folder on the studio's machine, and under which folders. */
async function loadRoots() {
  try {
    const roots = await get("/api/datasets/roots");
    S.roots = roots;
    S.source.wrap.hidden = !roots.allowed;
    if (roots.allowed) {
      S.folder.input.placeholder = `${roots.roots[0]}/my-photos`;
      S.folder.wrap.querySelector(".help").textContent = `A folder of images (with captions or class folders) under ${roots.roots.join(" or ")}.`;
    } else S.source.input.value = "upload";
    showSource();
  } catch (err) { S.status.error(err); }
}

function showSource() {
  const folder = S.source.input.value === "folder";
  S.data.wrap.hidden = folder;
  S.data.input.required = !folder;
  S.uploadBox.hidden = folder;
  S.folderBox.hidden = !folder;
  S.folder.input.required = folder;
}

const family = () => (S.families || []).find((f) => f.name === S.family.input.value) || null;

/** The chosen family's presets, conditions and needed runs, as the server declares them. */
function fillFamily() {
  const f = family();
  S.family.wrap.querySelector(".help").textContent = f ? f.summary : "";
  const presets = (f && f.presets) || [];
  setOptions(S.preset.input, presets.map((p) => ({ value: p.name, label: p.name })));
  if (f && presets.some((p) => p.name === f.default_preset) && !presets.some((p) => p.name === S.preset.input.dataset.chosen)) S.preset.input.value = f.default_preset;
  describePreset();
  const conds = (f && f.conditions) || [];
  setOptions(S.cond.input, [{ value: "", label: "follow the data" }, ...conds]);
  renderNeeds();
}

function describePreset() {
  const f = family();
  const p = f && (f.presets || []).find((x) => x.name === S.preset.input.value);
  S.preset.input.dataset.chosen = S.preset.input.value;
  S.preset.wrap.querySelector(".help").textContent = p ? p.description : "";
}

/** One picker per run the family is built on: your runs of the declared family and condition. */
function renderNeeds() {
  const f = family();
  const before = new Map([...(S.needInputs || [])].map(([k, input]) => [k, input.value]));
  S.needInputs = new Map();
  const needs = (f && f.needs) || [];
  replace(S.needs, needs.map((need) => {
    const fits = (S.runList || []).filter((r) => r.family === need.family && r.step !== null && r.step !== undefined
      && (!need.cond || !r.cond || r.cond === need.cond));
    const what = `a ${need.family} run${need.cond ? ` trained with condition ${need.cond}` : ""}`;
    const pick = field(`${need.option.toUpperCase()} run`, "select", { name: `needs.${need.option}`, required: true }, `${what}: ${need.help}`);
    setOptions(pick.input, fits.length ? fits.map((r) => ({ value: r.name, label: `${r.name} (step ${r.step})` }))
      : [{ value: "", label: `none yet: train ${what} first` }]);
    if (before.get(need.option) && fits.some((r) => r.name === before.get(need.option))) pick.input.value = before.get(need.option);
    S.needInputs.set(need.option, pick.input);
    const args = need.train_args || [];
    const preset = args.includes("--preset") ? args[args.indexOf("--preset") + 1] : null;
    const setUp = fits.length ? null : h("button", { type: "button", class: "secondary", text: `Set up ${what}`, onclick: () => {
      S.family.input.value = need.family;
      fillFamily();
      if (preset && [...S.preset.input.options].some((o) => o.value === preset)) { S.preset.input.value = preset; describePreset(); }
      if (need.cond) S.cond.input.value = need.cond;
      S.status.ok(`The form is set up for ${what}; give it a name and start it, then come back to ${f.name}.`);
    } });
    return h("div", { class: "need" }, pick.wrap, setUp);
  }));
}

async function loadDatasets(select) {
  try {
    const sets = await get("/api/datasets");
    setOptions(S.data.input, sets.length ? sets.map((d) => ({ value: d.name, label: `${d.name} (${d.images} images)` }))
      : [{ value: "", label: "none yet: upload a zip" }]);
    if (select) S.data.input.value = select;
  } catch (err) { S.status.error(err); }
}

async function uploadZip() {
  const file = S.zip.input.files[0];
  const status = new Status();
  replace(S.zipReport, status.el);
  const name = S.zipName.input.value.trim() || (file ? file.name.replace(/\.zip$/i, "").replace(/[^A-Za-z0-9._-]/g, "-") : "");
  if (!file) { status.error("Choose a zip file first."); return; }
  status.loading(`Uploading ${file.name} and checking every image…`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const ds = await post(`/api/datasets${query({ name })}`, form);
    await loadDatasets(ds.name);
    const skipped = ds.skipped || [];
    replace(S.zipReport, h("p", { class: "status ok", role: "status",
      text: `${ds.images} usable image${ds.images === 1 ? "" : "s"} in “${ds.name}”; ${skipped.length} file${skipped.length === 1 ? "" : "s"} skipped.` }),
    skipped.length ? h("details", { open: skipped.length <= 10 }, h("summary", { text: "Skipped files" }),
      h("ul", { class: "skipped", "aria-label": "Skipped files" }, skipped.map((s) => h("li", {}, h("code", { text: s.path }), `: ${s.reason}`)))) : null);
  } catch (err) { status.error(err); }
}

/** limner data check on the typed folder (the server's report); resolves to the report or null. */
async function checkFolder() {
  const path = S.folder.input.value.trim();
  const status = new Status();
  replace(S.folderReport, status.el);
  if (!path) { status.error("Type the folder's full path first."); S.folder.input.focus(); return null; }
  status.loading(`Checking every image in ${path}…`);
  try {
    const report = await post("/api/datasets/check", { path, resolution: parseInt(S.resolution.input.value, 10) || undefined });
    const skipped = report.skipped || [];
    replace(S.folderReport, h("p", { class: report.images ? "status ok" : "status error", role: report.images ? "status" : "alert",
      text: `${report.images} usable image${report.images === 1 ? "" : "s"} in ${report.path}; ${report.skipped_count} file${report.skipped_count === 1 ? "" : "s"} skipped`
        + `${report.has_captions ? `; ${report.captioned} with captions` : ""}${report.classes ? `; ${Object.keys(report.classes).length} classes` : ""}`
        + `${report.unlisted ? `; ${report.unlisted} image file${report.unlisted === 1 ? "" : "s"} not in metadata.jsonl (ignored)` : ""}.` }),
    skipped.length ? h("details", { open: skipped.length <= 10 }, h("summary", { text: "Skipped files" }),
      h("ul", { class: "skipped", "aria-label": "Skipped files" }, skipped.map((s) => h("li", {}, h("code", { text: s.path }), `: ${s.reason}`)))) : null);
    S.checked = report.images ? path : null;
    S.folder.input.removeAttribute("aria-invalid");
    return report;
  } catch (err) {
    status.error(err);
    S.folder.input.setAttribute("aria-invalid", "true");
    return null;
  }
}

async function startTraining(e) {
  e.preventDefault();
  const folder = S.source.input.value === "folder";
  const body = { family: S.family.input.value || undefined, preset: S.preset.input.value || undefined,
    cond: S.cond.input.value || undefined,
    steps: parseInt(S.steps.input.value, 10), name: S.name.input.value, resolution: parseInt(S.resolution.input.value, 10) };
  if (folder) body.data_path = S.folder.input.value.trim();
  else body.data = S.data.input.value;
  const needs = {};
  for (const [option, input] of S.needInputs || []) if (input.value) needs[option] = input.value;
  if (Object.keys(needs).length) body.needs = needs;
  S.start.disabled = true;
  S.status.loading("Starting…");
  try {
    // The data check comes first: the report is on screen before a folder is trained on.
    if (folder && S.checked !== body.data_path) {
      S.status.loading("Checking the folder first…");
      const report = await checkFolder();
      if (!report || !report.images) { S.status.error("The folder has no usable image (see the report above)."); return; }
    }
    body.set = parseSettings(S.set.input.value);
    const res = await post("/api/train", body, { headers: { "Idempotency-Key": idempotencyKey() } });
    const job = res.job || res;
    S.jobs.set(job.id, body.name);
    S.status.ok(`Training job ${job.id} ${job.state || "queued"}: run “${body.name}”.`);
    await loadRuns();
    selectRun(body.name, job);
  } catch (err) {
    S.status.error(err);
    const input = err.field && S.start.form.querySelector(`[name="${CSS.escape(err.field)}"]`);
    if (input) input.focus();
  } finally { S.start.disabled = false; }
}

/** "KEY=VALUE" lines as {KEY: VALUE}; values are JSON where they parse, text otherwise. */
function parseSettings(text) {
  const out = {};
  text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#")).forEach((line, i) => {
    const eq = line.indexOf("=");
    if (eq < 1) {
      const err = new Error(`settings line ${i + 1} is not KEY=VALUE: ${line}`);
      err.field = "set";
      throw err;
    }
    const raw = line.slice(eq + 1).trim();
    let value;
    try { value = JSON.parse(raw); } catch { value = raw; }
    out[line.slice(0, eq).trim()] = value;
  });
  return out;
}

async function loadRuns() {
  S.runsStatus.loading("Loading runs…");
  try {
    const runs = await get("/api/runs");
    S.runList = runs;
    S.runsStatus.clear();
    if (S.families) renderNeeds();
    replace(S.runs, runs.length ? runs.map((r) => h("li", { dataset: { run: r.name } },
      h("button", { type: "button", class: "link", "aria-current": S.run === r.name ? "true" : null, onclick: () => selectRun(r.name) },
        r.name),
      h("span", { class: "muted", text: ` ${r.family || ""} · step ${r.step ?? 0}${r.state ? ` · ${r.state}` : ""}${r.error ? `: ${r.error}` : ""}` })))
      : h("li", { class: "muted", text: "No runs yet." }));
  } catch (err) { S.runsStatus.error(err); }
}

/** The active training job of a run, if any (from this page's submits or the jobs list). */
async function activeJob(name) {
  const jobs = await get(`/api/jobs${query({ kind: "train" })}`);
  return jobs.find((j) => ["queued", "running"].includes(j.state) && jobRun(j) === name) || null;
}

function jobRun(job) {
  return S.jobs.get(job.id) || (job.result && job.result.run) || job.run || (job.params && job.params.name) || null;
}

async function selectRun(name, job = null) {
  S.run = name;
  S.loss = [];
  for (const li of S.runs.querySelectorAll("button")) li.setAttribute("aria-current", String(li.textContent === name));
  const status = new Status();
  S.chart = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  S.chart.setAttribute("class", "chart");
  S.jobLine = h("p", { class: "muted", role: "status", "aria-live": "polite" });
  S.timeline = h("div", { class: "timeline" });
  S.compare = h("div", { class: "compare" });
  S.metrics = h("div", { class: "metrics" });
  S.resumeSteps = field("More steps", "number", { min: 1, step: 1, value: 1000, inputmode: "numeric" });
  S.stop = h("button", { type: "button", class: "danger", text: "Stop (saves first)", hidden: true, onclick: stopRun });
  S.resume = h("button", { type: "button", class: "secondary", text: "Resume", onclick: resumeRun });
  S.runStatus = status;
  replace(S.detail,
    h("div", { class: "card", "aria-labelledby": "run-title" },
      h("h2", { id: "run-title", text: `Run “${name}”` }), S.jobLine,
      h("div", { class: "row wrap" }, S.stop, S.resumeSteps.wrap, S.resume,
        h("button", { type: "button", class: "secondary", text: "Learn view", onclick: () => S.ctx.go("learn", { run: name }) })),
      status.el),
    h("div", { class: "card" }, h("h3", { text: "Loss" }), S.chart),
    h("div", { class: "card" }, h("h3", { text: "Fixed-seed samples over training" }), S.timeline),
    h("div", { class: "card" }, h("h3", { text: "Compare two checkpoints" }), S.compare),
    h("div", { class: "card" }, h("h3", { text: "Evaluation" }), S.metrics));
  lineChart(S.chart, [], { title: "Training loss" });
  S.info = null;
  S.frames = [];
  try {
    S.job = job || await activeJob(name);
    showJob(S.job);
  } catch (err) { status.error(err); }
  await loadRunData(name);
  clearInterval(S.poll);
  S.poll = setInterval(() => refreshLive(name), 2500);
}

const isLive = (job) => Boolean(job && ["queued", "running"].includes(job.state));

/** The run's config, metrics and timeline; a run that a just-started job has not written yet is waited for. */
async function loadRunData(name) {
  const enc = encodeURIComponent(name);
  if (!S.info) S.runStatus.loading("Loading the run…");
  try {
    const [info, metrics, frames] = await Promise.all([get(`/api/runs/${enc}`), get(`/api/runs/${enc}/metrics`),
      get(`/api/runs/${enc}/samples`)]);
    if (S.run !== name) return;
    S.runStatus.clear();
    S.info = info;
    S.loss = lossPoints(metrics);
    lineChart(S.chart, S.loss, { title: "Training loss" });
    if (frames.length !== S.frames.length || !S.frames.length) renderFrames(frames);
    renderMetrics(info, metrics);
  } catch (err) {
    if (err.status === 404 && isLive(S.job)) S.runStatus.loading("Waiting for the run's first files…");
    else S.runStatus.error(err);
  }
}

function lossPoints(rows) {
  return (rows || []).filter((r) => typeof r.loss === "number" && typeof r.step === "number").map((r) => ({ x: r.step, y: r.loss }));
}

function showJob(job) {
  const live = job && ["queued", "running"].includes(job.state);
  S.stop.hidden = !live;
  S.resume.disabled = Boolean(live);
  if (!job) { S.jobLine.textContent = "Not training."; return; }
  const p = job.progress && job.progress.total ? ` step ${job.progress.step} of ${job.progress.total}` : "";
  S.jobLine.textContent = `Job ${job.id}: ${job.state}${p}${job.error ? `: ${job.error}` : ""}`;
}

/** While a run trains: the loss curve and timeline follow the metrics file and samples list. */
async function refreshLive(name) {
  if (S.run !== name || document.getElementById("page-train").hidden || !isLive(S.job)) return;
  try {
    S.job = await get(`/api/jobs/${S.job.id}`);
    showJob(S.job);
    if (!isLive(S.job)) { loadRuns(); await loadRunData(name); return; }
    if (!S.info) { await loadRunData(name); return; }
    const enc = encodeURIComponent(name);
    const points = lossPoints(await get(`/api/runs/${enc}/metrics`));
    if (points.length >= S.loss.length) { S.loss = points; lineChart(S.chart, S.loss, { title: "Training loss" }); }
    const frames = await get(`/api/runs/${enc}/samples`);
    if (frames.length !== S.frames.length) renderFrames(frames);
  } catch (err) { S.runStatus.error(err); }
}

function onProgress(m) {
  if (!S || !S.job || m.job_id !== S.job.id) return;
  S.job.state = "running";
  S.job.progress = { step: m.step, total: m.total };
  showJob(S.job);
  if (typeof m.loss === "number" && (!S.loss.length || m.step > S.loss[S.loss.length - 1].x)) {
    S.loss.push({ x: m.step, y: m.loss });
    lineChart(S.chart, S.loss, { title: "Training loss" });
  }
}

async function onCheckpoint(m) {
  if (!S || m.run !== S.run) return;
  try { renderFrames(await get(`/api/runs/${encodeURIComponent(m.run)}/samples`)); } catch { /* next poll retries */ }
}

function onJob(job) {
  if (!S || !job || !S.job || job.id !== S.job.id) return;
  const was = isLive(S.job);
  S.job = job;
  showJob(job);
  if (was && !isLive(job)) { loadRuns(); loadRunData(S.run); }
}

function frameImg(frame, label) {
  return h("img", { src: safeSrc(frame.url), alt: label, class: "frame", width: 256, height: 256 });
}

function renderFrames(frames) {
  S.frames = frames || [];
  if (!S.frames.length) {
    replace(S.timeline, h("p", { class: "muted", text: "No sample frames yet (they appear at each sample interval)." }));
    replace(S.compare, h("p", { class: "muted", text: "Needs two saved sample frames." }));
    return;
  }
  const n = S.frames.length;
  const label = h("output", { class: "step-label" });
  const holder = h("div", { class: "frame-holder" });
  const scrub = field("Step", "range", { min: 0, max: n - 1, step: 1, value: n - 1, class: "scrubber" });
  const paint = () => {
    const f = S.frames[Number(scrub.input.value)];
    label.textContent = `step ${f.step} (${Number(scrub.input.value) + 1} of ${n})`;
    scrub.input.setAttribute("aria-valuetext", `step ${f.step}`);
    replace(holder, frameImg(f, `Samples at step ${f.step}`));
  };
  scrub.input.addEventListener("input", paint);
  replace(S.timeline, holder, scrub.wrap, label);
  paint();
  renderCompare();
}

function renderCompare() {
  const choices = S.frames.map((f, i) => ({ value: i, label: `step ${f.step}` }));
  const a = field("Left", "select", {}), b = field("Right", "select", {});
  setOptions(a.input, choices, false);
  setOptions(b.input, choices, false);
  a.input.value = "0";
  b.input.value = String(S.frames.length - 1);
  const left = h("figure", {}), right = h("figure", {});
  const paint = () => {
    for (const [sel, fig] of [[a.input, left], [b.input, right]]) {
      const f = S.frames[Number(sel.value)];
      replace(fig, frameImg(f, `Samples at step ${f.step}`), h("figcaption", { text: `step ${f.step}` }));
    }
  };
  a.input.addEventListener("change", paint);
  b.input.addEventListener("change", paint);
  replace(S.compare, h("div", { class: "grid2" }, a.wrap, b.wrap), h("div", { class: "side-by-side" }, left, right));
  paint();
}

function renderMetrics(info, rows) {
  const evals = (rows || []).filter((r) => Object.keys(r).some((k) => /fid|kid|precision|recall|psnr|clip|score/i.test(k)));
  const latest = (info && (info.metrics || info.latest_metrics)) || evals[evals.length - 1] || null;
  const evalStatus = new Status();
  const num = field("Images", "number", { min: 10, step: 1, value: 200, inputmode: "numeric" });
  const button = h("button", { type: "button", class: "secondary", text: "Evaluate", onclick: async () => {
    evalStatus.loading("Queuing evaluation…");
    try {
      const res = await post("/api/eval", { run: S.run, num: parseInt(num.input.value, 10) }, { headers: { "Idempotency-Key": idempotencyKey() } });
      const job = res.job || res;
      evalStatus.loading(`Evaluating (job ${job.id})…`);
      for (;;) {
        await new Promise((r) => setTimeout(r, 1500));
        const now = await get(`/api/jobs/${job.id}`);
        if (now.state === "done") {
          evalStatus.ok("Evaluation done.");
          S.metrics.prepend(h("h4", { text: "Evaluation" }), metricList((now.result && now.result.metrics) || {}));
          return;
        }
        if (now.state === "failed" || now.state === "cancelled") { evalStatus.error(`Evaluation ${now.state}${now.error ? `: ${now.error}` : ""}`); return; }
        const p = now.progress && now.progress.total ? `, ${now.progress.step} of ${now.progress.total}` : "";
        evalStatus.loading(`Evaluating (job ${job.id}: ${now.state}${p})…`);
      }
    } catch (err) { evalStatus.error(err); }
  } });
  const table = latest && Object.keys(latest).length ? [h("h4", { text: "Latest logged metrics" }), metricList(latest)]
    : h("p", { class: "muted", text: "No metrics yet." });
  const checkpoints = (info && info.checkpoints) || [];
  replace(S.metrics, table,
    checkpoints.length ? h("p", { class: "muted", text: `Checkpoints: ${checkpoints.map((c) => (typeof c === "object" ? c.step : c)).join(", ")}` }) : null,
    info && info.created ? h("p", { class: "muted", text: `Created ${when(info.created)}` }) : null,
    h("div", { class: "row" }, num.wrap, button), evalStatus.el);
}

function metricList(values) {
  const rows = Object.entries(values).filter(([, v]) => v === null || typeof v !== "object");
  if (!rows.length) return h("p", { class: "muted", text: "No numbers." });
  return h("dl", { class: "record" }, rows.map(([k, v]) => [h("dt", { text: k }),
    h("dd", { text: typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : String(v) })]));
}

async function stopRun() {
  if (!S.job) return;
  S.runStatus.loading("Stopping (the run saves a checkpoint first)…");
  try { await post(`/api/jobs/${S.job.id}/cancel`); S.runStatus.ok("Stop requested."); } catch (err) { S.runStatus.error(err); }
}

async function resumeRun() {
  S.runStatus.loading("Resuming…");
  try {
    const res = await post(`/api/runs/${encodeURIComponent(S.run)}/resume`, { steps: parseInt(S.resumeSteps.input.value, 10) },
      { headers: { "Idempotency-Key": idempotencyKey() } });
    S.job = res.job || res;
    S.jobs.set(S.job.id, S.run);
    showJob(S.job);
    S.runStatus.ok(`Resumed: job ${S.job.id}.`);
  } catch (err) { S.runStatus.error(err); }
}
