// A small SVG line chart (the training loss curve), drawn with DOM calls: no library.
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function ticks(lo, hi, count) {
  if (hi === lo) return [lo];
  const step = (hi - lo) / (count - 1);
  return Array.from({ length: count }, (_, i) => lo + i * step);
}

function fmt(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 10000)) return v.toExponential(1);
  return a >= 100 ? v.toFixed(0) : v.toPrecision(3);
}

/** An exponential moving average, to show the trend of a noisy loss. */
export function smooth(values, alpha = 0.2) {
  let avg = null;
  return values.map((v) => (avg = avg === null ? v : avg + alpha * (v - avg)));
}

/**
 * Draw points [{x, y}] into the <svg> element `svg` (replacing what it held).
 * opts: xlabel, ylabel, title. The chart scales to its container (viewBox).
 */
export function lineChart(svg, points, { xlabel = "step", ylabel = "loss", title = "" } = {}) {
  const W = 600, H = 260, L = 56, R = 12, T = 12, B = 40;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  const pts = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const last = pts[pts.length - 1];
  svg.setAttribute("aria-label", pts.length ? `${title || ylabel}: ${pts.length} points, last ${ylabel} ${fmt(last.y)} at ${xlabel} ${last.x}` : `${title || ylabel}: no data yet`);
  svg.dataset.points = String(pts.length);
  if (!pts.length) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, "no data yet"));
    return;
  }
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (const y of ticks(y0, y1, 5)) {
    svg.append(el("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "chart-grid" }));
    svg.append(el("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "chart-tick" }, fmt(y)));
  }
  for (const x of ticks(x0, x1, 5)) {
    svg.append(el("text", { x: sx(x), y: H - B + 16, "text-anchor": "middle", class: "chart-tick" }, String(Math.round(x))));
  }
  svg.append(el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "chart-label" }, xlabel));
  svg.append(el("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "chart-label",
    transform: `rotate(-90 12 ${(T + H - B) / 2})` }, ylabel));
  const path = (vals, cls) => el("polyline", { class: cls, fill: "none",
    points: pts.map((p, i) => `${sx(p.x).toFixed(1)},${sy(vals[i]).toFixed(1)}`).join(" ") });
  svg.append(path(ys, "chart-raw"));
  if (pts.length > 4) svg.append(path(smooth(ys), "chart-smooth"));
}
