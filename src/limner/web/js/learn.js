// Learn: the "how it learns" views (limner.explain) of the selected run, served as JSON with image
// URLs by GET /api/runs/{name}/explain/{view}; refreshed while the run trains. When the server
// has no explain routes, the page says so and shows what the runs routes give (the fixed-seed
// timeline and the loss curve).
import { get, query, events } from "./api.js";
import { h, replace, field, setOptions, Status, safeSrc } from "./dom.js";
import { lineChart } from "./chart.js";

let S = null;
let subscribed = false;

export function mount(section, ctx) {
  S = { ctx, run: null, view: null };
  S.status = new Status();
  S.runSelect = field("Run", "select", { name: "run" });
  S.viewSelect = field("View", "select", { name: "view" });
  S.image = field("Image id (for per-image views)", "number", { name: "image", min: 1, inputmode: "numeric" },
    "The denoising filmstrip and feature views take a generated image from the gallery.");
  S.body = h("div", { class: "learn-body", "aria-live": "polite" });
  const form = h("form", { class: "card", onsubmit: (e) => { e.preventDefault(); loadView(); } },
    h("h2", { id: "learn-title", text: "How it learns" }),
    h("div", { class: "grid2" }, S.runSelect.wrap, S.viewSelect.wrap, S.image.wrap),
    h("button", { type: "submit", text: "Show" }), S.status.el);
  S.runSelect.input.addEventListener("change", () => selectRun(S.runSelect.input.value));
  S.viewSelect.input.addEventListener("change", () => loadView());
  replace(section, form, S.body);
  if (!subscribed) {
    subscribed = true;
    // Live while a run trains: a new checkpoint refreshes the view on screen.
    events.on("checkpoint", (m) => { if (S && m.run === S.run && !document.getElementById("page-learn").hidden) loadView(); });
  }
}

export async function show(params) {
  S.status.loading("Loading runs…");
  try {
    const runs = await get("/api/runs");
    S.status.clear();
    if (!runs.length) { S.status.set("error", "No runs yet: start one on the Train page."); return; }
    setOptions(S.runSelect.input, runs.map((r) => ({ value: r.name, label: `${r.name} (${r.family})` })));
    if (params.image) S.image.input.value = params.image;
    await selectRun(params.run && runs.some((r) => r.name === params.run) ? params.run : S.runSelect.input.value, params.view);
  } catch (err) { S.status.error(err); }
}

async function selectRun(name, view) {
  S.run = name;
  S.runSelect.input.value = name;
  S.status.loading("Loading the views…");
  try {
    const views = await get(`/api/runs/${encodeURIComponent(name)}/explain`);
    S.explain = true;
    const list = Array.isArray(views) ? views : views.views || [];
    setOptions(S.viewSelect.input, list.map((v) => (typeof v === "object" ? { value: v.name, label: v.title || v.name } : v)));
    S.viewSelect.wrap.hidden = false;
    if (view) S.viewSelect.input.value = view;
    S.status.clear();
  } catch (err) {
    if (err.status !== 404 && err.status !== 405) { S.status.error(err); return; }
    S.explain = false;
    S.viewSelect.wrap.hidden = true;
    S.status.set("info", "This studio server has no “how it learns” views yet (GET /api/runs/{name}/explain); showing the training timeline and loss from the run instead.");
  }
  await loadView();
}

async function loadView() {
  if (!S.run) return;
  if (!S.explain) { await fallback(); return; }
  const view = S.viewSelect.input.value;
  const status = new Status();
  replace(S.body, status.el);
  status.loading(`Computing “${view}”…`);
  try {
    const data = await get(`/api/runs/${encodeURIComponent(S.run)}/explain/${encodeURIComponent(view)}${query({ image: S.image.input.value })}`);
    replace(S.body, h("div", { class: "card explain", dataset: { view } }, h("h3", { text: data.title || view }),
      data.description ? h("p", { text: data.description }) : null, render(data, 0)));
  } catch (err) { status.error(err); }
}

async function fallback() {
  const status = new Status();
  replace(S.body, status.el);
  status.loading("Loading the run…");
  try {
    const name = encodeURIComponent(S.run);
    const [metrics, frames] = await Promise.all([get(`/api/runs/${name}/metrics`), get(`/api/runs/${name}/samples`)]);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "chart");
    lineChart(svg, metrics.filter((r) => typeof r.loss === "number").map((r) => ({ x: r.step, y: r.loss })), { title: "Training loss" });
    replace(S.body, h("div", { class: "card" }, h("h3", { text: "Training timeline" }),
      frames.length ? h("ol", { class: "strip" }, frames.map((f) => h("li", {},
        h("img", { src: safeSrc(f.url), alt: `Samples at step ${f.step}`, width: 128, height: 128 }), h("span", { text: `step ${f.step}` }))))
        : h("p", { class: "muted", text: "No sample frames yet." })),
    h("div", { class: "card" }, h("h3", { text: "Loss" }), svg));
  } catch (err) { status.error(err); }
}

// A generic renderer for a view's JSON: image URLs become pictures, numeric series become charts,
// objects become labelled lists. Text is always set with textContent.
const IMAGE_KEY = /(url|image|img|png|gif|frame|thumb)s?$/i;

function isImageUrl(key, value) {
  return typeof value === "string" && (IMAGE_KEY.test(key) || /^data:image\//.test(value)) && safeSrc(value) !== "";
}

function render(value, depth, key = "") {
  if (isImageUrl(key, value)) return h("img", { src: safeSrc(value), alt: key, class: "explain-img" });
  if (Array.isArray(value)) {
    if (value.length > 1 && value.every((v) => typeof v === "number")) {
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "chart small");
      lineChart(svg, value.map((y, x) => ({ x, y })), { xlabel: "index", ylabel: key || "value" });
      return svg;
    }
    if (value.length && value.every((v) => v && typeof v === "object" && "step" in v && Object.keys(v).some((k) => typeof v[k] === "number" && k !== "step"))
        && !value.some((v) => Object.keys(v).some((k) => isImageUrl(k, v[k])))) {
      const metric = Object.keys(value[0]).find((k) => k !== "step" && typeof value[0][k] === "number");
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "chart small");
      lineChart(svg, value.map((v) => ({ x: v.step, y: v[metric] })), { ylabel: metric });
      return svg;
    }
    return h("ol", { class: depth ? "explain-list" : "explain-list strip" }, value.slice(0, 200).map((v) => h("li", {}, render(v, depth + 1, key))));
  }
  if (value && typeof value === "object") {
    if (depth > 6) return h("code", { text: JSON.stringify(value).slice(0, 200) });
    return h("dl", { class: "record" }, Object.entries(value).filter(([k]) => k !== "title" || depth > 0).map(([k, v]) =>
      [h("dt", { text: k }), h("dd", {}, render(v, depth + 1, k))]));
  }
  if (typeof value === "number") return h("span", { text: Number.isInteger(value) ? String(value) : value.toPrecision(4) });
  return h("span", { text: String(value ?? "") });
}
