// Head boxes over a picture: real buttons, absolutely positioned in percent of the picture's width and height,
// so they follow the picture at any size. Used by the analysis result and by the admin's "add a character".

import { h } from "./dom.js";

/**
 * A picture with buttons over it.
 * boxes: [{box: [x1, y1, x2, y2], label: "accessible name", className: "extra classes"}], in the pixels of a
 * picture of `width` x `height` (the picture shown may be scaled: positions are percentages).
 * Returns {figure, buttons}.
 */
export function pictureWithBoxes({ src, alt, width, height, boxes }) {
  const img = h("img", { src, alt, class: "boxed-picture", draggable: "false" });
  const layer = h("div", { class: "box-layer" });
  const figure = h("div", { class: "boxed" }, img, layer);
  const buttons = boxes.map((entry, index) => {
    const [x1, y1, x2, y2] = entry.box;
    const button = h("button", {
      type: "button",
      class: `head-box ${entry.className || ""}`.trim(),
      "aria-label": entry.label,
      dataset: { index: String(index), box: entry.box.map((v) => Number(v).toFixed(1)).join(",") },
    });
    const style = button.style; // CSSOM, allowed by the page's CSP (no inline style attributes)
    style.left = `${clampPercent(x1 / width)}%`;
    style.top = `${clampPercent(y1 / height)}%`;
    style.width = `${clampPercent((x2 - x1) / width)}%`;
    style.height = `${clampPercent((y2 - y1) / height)}%`;
    layer.append(button);
    return button;
  });
  return { figure, buttons, img };
}

function clampPercent(fraction) {
  const value = Number(fraction) * 100;
  if (!Number.isFinite(value)) return 0;
  return Math.min(100, Math.max(0, value)).toFixed(3);
}
