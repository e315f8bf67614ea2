// A small drawing canvas for image-to-image (sketch or a loaded picture) with an optional mask
// brush for inpainting: the image layer and the mask layer are separate canvases, exported as
// PNG blobs (the mask white where the model should repaint, black elsewhere). On screen the mask
// is a translucent tint over the picture, so it shows on a white or a busy start image alike.
import { h, field } from "./dom.js";

const MASK_TINT = "#e0187a"; // the mask brush on screen (the layer is shown at half opacity)

export class Sketch {
  constructor(size, { mask = false, onchange = () => {} } = {}) {
    this.size = size;
    this.onchange = onchange;
    this.drawn = false;
    this.masked = false;
    this.image = h("canvas", { width: size, height: size, class: "layer" });
    this.mask = h("canvas", { width: size, height: size, class: "layer mask" });
    this.mode = "draw";
    const ctx = this.image.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, size, size);
    const color = field("Brush colour", "color", { value: "#d03030" });
    const width = field("Brush size", "range", { min: 1, max: 40, value: 8 });
    this.color = color.input;
    this.width = width.input;
    const modes = mask ? h("div", { class: "row", role: "group", "aria-label": "Brush" },
      this.modeButton("draw", "Draw"), this.modeButton("mask", "Paint mask")) : null;
    this.stack = h("div", { class: "canvas-stack", role: "img",
      "aria-label": mask ? "Drawing canvas with an inpainting mask layer" : "Drawing canvas" }, this.image, mask ? this.mask : null);
    const hint = mask ? h("small", { class: "help", text: "Paint mask: the tinted part is regenerated, the rest is kept exactly." }) : null;
    this.el = h("div", { class: "sketch" }, modes, hint, this.stack,
      h("div", { class: "grid2" }, color.wrap, width.wrap),
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", text: "Clear drawing", onclick: () => this.clear() }),
        mask ? h("button", { type: "button", class: "secondary", text: "Clear mask", onclick: () => this.clearMask() }) : null));
    this.bind(mask ? this.mask : this.image);
  }

  modeButton(mode, label) {
    const b = h("button", { type: "button", class: "secondary", "aria-pressed": String(mode === this.mode), text: label,
      onclick: () => {
        this.mode = mode;
        for (const other of b.parentElement.children) other.setAttribute("aria-pressed", String(other === b));
      } });
    return b;
  }

  bind(target) {
    let last = null;
    const point = (e) => {
      const r = target.getBoundingClientRect();
      return [(e.clientX - r.left) * (this.size / r.width), (e.clientY - r.top) * (this.size / r.height)];
    };
    target.addEventListener("pointerdown", (e) => { target.setPointerCapture(e.pointerId); last = point(e); this.stroke(last, last); });
    target.addEventListener("pointermove", (e) => { if (!last) return; const p = point(e); this.stroke(last, p); last = p; });
    const end = () => { last = null; };
    target.addEventListener("pointerup", end);
    target.addEventListener("pointercancel", end);
  }

  stroke(a, b) {
    const onMask = this.mode === "mask";
    const ctx = (onMask ? this.mask : this.image).getContext("2d");
    ctx.strokeStyle = onMask ? MASK_TINT : this.color.value;
    // The canvas is 4x the model's resolution: a mask stroke under ~2 model pixels would vanish
    // when the server fits the mask to the model (it keeps pixels at least half white).
    const width = Number(this.width.value) * (this.size / 256);
    ctx.lineWidth = onMask ? Math.max(width * 2, this.size / 8) : width;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
    if (onMask) this.masked = true; else this.drawn = true;
    this.onchange();
  }

  clear() {
    const ctx = this.image.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, this.size, this.size);
    this.drawn = false;
  }

  clearMask() {
    this.mask.getContext("2d").clearRect(0, 0, this.size, this.size);
    this.masked = false;
  }

  /** Draw a picture file onto the image layer (the browser decodes it only for display). */
  async loadImage(file) {
    const bitmap = await createImageBitmap(file);
    this.image.getContext("2d").drawImage(bitmap, 0, 0, this.size, this.size);
    this.drawn = true;
  }

  hasImage() { return this.drawn; }
  hasMask() { return this.masked; }

  imageBlob() { return new Promise((resolve) => this.image.toBlob(resolve, "image/png")); }

  /** The mask as the API takes it: white where painted (whatever the tint), black elsewhere. */
  maskBlob() {
    const white = h("canvas", { width: this.size, height: this.size });
    const w = white.getContext("2d");
    w.drawImage(this.mask, 0, 0);
    w.globalCompositeOperation = "source-in"; // keep the painted shape, in white
    w.fillStyle = "#ffffff";
    w.fillRect(0, 0, this.size, this.size);
    const out = h("canvas", { width: this.size, height: this.size });
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000000";
    ctx.fillRect(0, 0, this.size, this.size);
    ctx.drawImage(white, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }
}
