// Building DOM nodes. Server text only ever becomes text nodes (textContent): never innerHTML with data.

/**
 * h("button", {class: "x", type: "button", onclick: fn, text: "Go"}, child, ...)
 * Attributes: `class`, `text` (textContent), `on<event>` (listeners), `dataset` (an object), booleans
 * (true sets the attribute empty, false/null/undefined leaves it out); everything else is setAttribute.
 * Children: nodes, strings (as text), arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

/** A message box: kind "error" | "info" | "ok". Errors are announced (role=alert). */
export function notice(text, kind = "info") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : null, text });
}

export function percent(value) {
  return `${Math.round(Number(value) * 100)}%`;
}

let counter = 0;
/** An id unique in the page (labels, aria-controls). */
export function uid(prefix = "id") {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** Files dropped on, or picked through, a drop zone; `onFiles(files)` gets the pictures only. */
export function dropZone({ label, hint, multiple = true, onFiles }) {
  const inputId = uid("files");
  const input = h("input", {
    id: inputId,
    type: "file",
    accept: "image/*",
    multiple,
    class: "file-input",
    onchange: () => {
      const files = pictures(input.files);
      input.value = "";
      if (files.length) onFiles(files);
    },
  });
  const zone = h(
    "div",
    { class: "drop-zone" },
    h("p", { class: "drop-title", text: label }),
    hint ? h("p", { class: "hint", text: hint }) : null,
    h("label", { for: inputId, class: "button-like", text: multiple ? "Choose pictures" : "Choose a picture" }),
    input,
  );
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = pictures(event.dataTransfer ? event.dataTransfer.files : []);
    if (files.length) onFiles(files);
  });
  return { zone, input };
}

export function pictures(fileList) {
  return Array.from(fileList || []).filter((file) => !file.type || file.type.startsWith("image/"));
}

/** A short "3 min 20 s" from seconds. */
export function duration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds)));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function when(timestamp) {
  if (timestamp === null || timestamp === undefined || timestamp === "") return "";
  const value = typeof timestamp === "number" ? new Date(timestamp * 1000) : new Date(timestamp);
  return Number.isNaN(value.getTime()) ? String(timestamp) : value.toLocaleString();
}
