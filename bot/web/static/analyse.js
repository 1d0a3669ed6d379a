// The Analyse page: pictures in (drop, paste, picker; several are sent one after another), progress from the
// NDJSON stream, then the annotated picture with its head boxes, tags filtered live, rating, caption,
// "Wrong? Tell me who" per head and the JSON to download.

import { ApiError, api, pictureUrl, postStream } from "./api.js";
import { dropZone, h, notice, percent, pictures, replace, uid } from "./dom.js";
import { pictureWithBoxes } from "./heads.js";

const TAG_CATEGORIES = [
  { key: "general", title: "General", slider: true },
  { key: "character", title: "Character", slider: true },
];
const MAX_TOP_N = 10;

export function mount(root) {
  const state = { queue: [], busy: false, alive: true, urls: [], controller: new AbortController() };
  const topNId = uid("top-n");
  const topN = h("input", { id: topNId, type: "number", min: "1", max: String(MAX_TOP_N), value: "5" });
  const results = h("div", { class: "results" });
  const { zone } = dropZone({
    label: "Drop pictures here, paste one (Ctrl+V), or",
    hint: "Several pictures are analysed one after another.",
    onFiles: (files) => enqueue(files),
  });

  root.append(
    h(
      "section",
      { class: "page analyse", "aria-labelledby": "analyse-title" },
      h("h2", { id: "analyse-title", text: "Analyse a picture" }),
      h(
        "p",
        { class: "intro" },
        "Find the characters' heads, name them with their top candidates, tag the picture, rate and caption it.",
      ),
      zone,
      h(
        "div",
        { class: "field inline" },
        h("label", { for: topNId, text: "Candidates per head" }),
        topN,
      ),
      results,
    ),
  );

  const onPaste = (event) => {
    const files = pictures(event.clipboardData ? event.clipboardData.files : []);
    if (files.length) {
      event.preventDefault();
      enqueue(files);
    }
  };
  document.addEventListener("paste", onPaste);

  function enqueue(files) {
    for (const file of files) {
      const card = newCard(file);
      results.prepend(card.element);
      state.queue.push(card);
    }
    drain();
  }

  async function drain() {
    if (state.busy) return;
    state.busy = true;
    try {
      while (state.alive && state.queue.length) await analyse(state.queue.shift());
    } finally {
      state.busy = false;
    }
  }

  function newCard(file) {
    const status = h("p", { class: "status", role: "status", "aria-live": "polite", text: "Waiting to be sent…" });
    const meter = h("progress", { class: "busy", "aria-label": `Progress of ${file.name}` });
    const body = h("div", { class: "card-body" });
    const element = h(
      "article",
      { class: "card result-card", "aria-label": `Analysis of ${file.name}` },
      h("h3", { class: "card-title", text: file.name || "pasted picture" }),
      h("div", { class: "progress-row" }, meter, status),
      body,
    );
    return { file, element, status, meter, body, jobId: null };
  }

  async function analyse(card) {
    const form = new FormData();
    const n = Math.min(MAX_TOP_N, Math.max(1, Number.parseInt(topN.value, 10) || 5));
    form.append("top_n", String(n));
    form.append("image", card.file, card.file.name || "pasted.png");
    card.status.textContent = "Sending…";
    try {
      await postStream("/v1/analyze?stream=true", form, (event) => onEvent(card, event), {
        signal: state.controller.signal,
      });
    } catch (error) {
      if (error && error.name === "AbortError") return;
      fail(card, error instanceof ApiError ? error.message : "Something went wrong while sending.");
    }
  }

  function onEvent(card, event) {
    if (!state.alive) return;
    if (event.job_id) card.jobId = event.job_id;
    if (event.event === "queued") {
      card.status.textContent = queuedText(event.position);
    } else if (event.event === "status") {
      card.status.textContent =
        event.status === "running"
          ? `Running${event.stage ? `: ${event.stage}` : "…"}`
          : queuedText(event.position);
    } else if (event.event === "result") {
      card.meter.remove();
      card.status.textContent = event.cached ? "Done (answered from the cache)." : "Done.";
      card.element.classList.add("done");
      const { event: _line, ...answer } = event; // the body POST /v1/analyze answers
      renderResult(card, answer).catch((error) => fail(card, error.message || String(error)));
    } else if (event.event === "error") {
      const error = event.error || {};
      fail(card, error.message || "The analysis failed.", error.code);
    }
  }

  function fail(card, message, code) {
    card.meter.remove();
    card.element.classList.add("failed");
    card.status.textContent = "Not analysed.";
    replace(card.body, notice(code ? `${message} (${code})` : message, "error"));
  }

  async function renderResult(card, body) {
    const result = body.result;
    const jobId = body.job_id;
    const picture = h("div", { class: "picture-area" });
    const parts = [picture];
    if (result.degraded && result.degraded.length) {
      parts.push(
        notice(
          `Partial result: ${result.degraded.map((d) => `${d.stage} (${d.error})`).join(", ")}.`,
          "info",
        ),
      );
    }
    const sure = typeof body.sure_threshold === "number" ? body.sure_threshold : DEFAULT_SURE;
    parts.push(headsList(jobId, result, sure));
    parts.push(tagsSection(result));
    parts.push(
      h(
        "dl",
        { class: "facts" },
        h("dt", { text: "Rating" }),
        h("dd", { class: "rating", text: result.rating || "none" }),
        h("dt", { text: "Caption" }),
        h("dd", { class: "caption", text: result.caption || "none" }),
      ),
    );
    const download = URL.createObjectURL(
      new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }),
    );
    state.urls.push(download);
    parts.push(
      h("a", {
        class: "button-like download",
        href: download,
        download: `anibot-${jobId || "result"}.json`,
        text: "Download the JSON",
      }),
    );
    replace(card.body, parts);
    if (body.annotated_url) {
      try {
        const src = await pictureUrl(body.annotated_url, { signal: state.controller.signal });
        state.urls.push(src);
        replace(picture, annotatedPicture(src, result, card.file.name, sure));
      } catch (error) {
        if (error && error.name === "AbortError") return;
        replace(picture, notice(`The annotated picture could not be loaded: ${error.message}`, "error"));
      }
    }
  }

  return () => {
    state.alive = false;
    state.controller.abort();
    document.removeEventListener("paste", onPaste);
    for (const url of state.urls) URL.revokeObjectURL(url);
  };
}

function queuedText(position) {
  if (position === null || position === undefined) return "Queued…";
  return position <= 1 ? "Queued: next in line." : `Queued: number ${position} in line.`;
}

// a head below the sure threshold (the answer's sure_threshold: the chat's; 0.5 is the server's default) shows no
// name, its guesses behind "Show guesses", as in the chat bots
const DEFAULT_SURE = 0.5;
const NOT_SURE = "not sure";
const SOURCES = { gallery: "from the gallery", tagger: "from the tagger", both: "both agree" };

function isSure(head, sure) {
  return head.name !== "unknown" && head.confidence >= sure;
}

function headName(head, sure) {
  if (!isSure(head, sure)) return NOT_SURE;
  const source = SOURCES[head.source];
  return `${head.name} (${percent(head.confidence)}${source ? `, ${source}` : ""})`;
}

function guesses(head, sure) {
  if (isSure(head, sure) || !head.candidates || !head.candidates.length) return candidatesList(head);
  return h("details", { class: "guesses" }, h("summary", { text: "Show guesses" }), candidatesList(head));
}

function candidatesList(head) {
  if (!head.candidates || !head.candidates.length) return h("p", { class: "hint", text: "No candidates." });
  return h(
    "ol",
    { class: "candidates" },
    head.candidates.map((c) =>
      h(
        "li",
        {},
        h("span", { class: "candidate-name", text: c.name }),
        c.series ? h("span", { class: "candidate-series", text: ` (${c.series})` }) : null,
        h("span", { class: "candidate-confidence", text: ` ${percent(c.confidence)}` }),
      ),
    ),
  );
}

/** The annotated picture with a button over each head; hover, focus or click shows its candidates. */
function annotatedPicture(src, result, filename, sure) {
  const boxes = result.heads.map((head, index) => ({
    box: head.box,
    label: `Head ${index + 1}: ${headName(head, sure)}. Show the candidates.`,
  }));
  const { figure, buttons } = pictureWithBoxes({
    src,
    alt: `${filename || "The picture"} with ${result.heads.length} head(s) marked`,
    width: result.width,
    height: result.height,
    boxes,
  });
  const layer = figure.querySelector(".box-layer");
  let pinned = null;
  buttons.forEach((button, index) => {
    const head = result.heads[index];
    const popupId = uid("head-popup");
    const popup = h(
      "div",
      { id: popupId, class: "head-popup", role: "tooltip", hidden: true },
      h("p", { class: "popup-title", text: `Head ${index + 1}: ${headName(head, sure)}` }),
      candidatesList(head),
    );
    const [x1, , x2, y2] = head.box;
    popup.style.top = `${Math.min(100, (y2 / result.height) * 100).toFixed(2)}%`;
    if ((x1 + x2) / 2 > result.width / 2) popup.style.right = `${(100 - (x2 / result.width) * 100).toFixed(2)}%`;
    else popup.style.left = `${((x1 / result.width) * 100).toFixed(2)}%`;
    layer.append(popup);
    button.setAttribute("aria-controls", popupId);
    button.setAttribute("aria-expanded", "false");
    button.setAttribute("aria-describedby", popupId);
    const show = () => {
      popup.hidden = false;
      button.setAttribute("aria-expanded", "true");
    };
    const hide = () => {
      if (pinned === index) return;
      popup.hidden = true;
      button.setAttribute("aria-expanded", "false");
    };
    button.addEventListener("mouseenter", show);
    button.addEventListener("mouseleave", hide);
    button.addEventListener("focus", show);
    button.addEventListener("blur", hide);
    button.addEventListener("click", () => {
      const was = pinned;
      pinned = pinned === index ? null : index;
      if (was !== null && was !== index) {
        const other = buttons[was];
        other.setAttribute("aria-expanded", "false");
        document.getElementById(other.getAttribute("aria-controls")).hidden = true;
      }
      button.setAttribute("aria-pressed", pinned === index ? "true" : "false");
      if (was !== null && was !== index) buttons[was].setAttribute("aria-pressed", "false");
      if (pinned === index) show();
      else hide();
    });
    button.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        pinned = null;
        button.setAttribute("aria-pressed", "false");
        hide();
      }
    });
  });
  return figure;
}

/** Each head: its name, its candidates, and the "Wrong? Tell me who" form. */
function headsList(jobId, result, sure) {
  if (!result.heads.length) return notice("No heads were found in this picture.", "info");
  return h(
    "section",
    { class: "heads" },
    h("h4", { text: `Heads (${result.heads.length})` }),
    h(
      "ol",
      { class: "head-list" },
      result.heads.map((head, index) =>
        h(
          "li",
          { class: "head-item" },
          h("p", {
            class: isSure(head, sure) ? "head-name" : "head-name not-sure",
            text: headName(head, sure),
          }),
          guesses(head, sure),
          correctionForm(jobId, index + 1),
        ),
      ),
    ),
  );
}

function correctionForm(jobId, headNumber) {
  const nameId = uid("who");
  const seriesId = uid("series");
  const name = h("input", { id: nameId, name: "name", required: true, maxlength: "100", autocomplete: "off" });
  const series = h("input", { id: seriesId, name: "series", maxlength: "100", autocomplete: "off" });
  const answer = h("p", { class: "form-answer", role: "status", "aria-live": "polite" });
  const send = h("button", { type: "submit", text: "Send" });
  const form = h(
    "form",
    { class: "correction" },
    h("div", { class: "field" }, h("label", { for: nameId, text: "Who is it?" }), name),
    h("div", { class: "field" }, h("label", { for: seriesId, text: "Series (optional)" }), series),
    send,
    answer,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!jobId) return;
    send.disabled = true;
    answer.textContent = "Sending…";
    try {
      const body = await api("POST", `/v1/jobs/${encodeURIComponent(jobId)}/corrections`, {
        json: { head: headNumber, name: name.value.trim(), series: series.value.trim() },
      });
      answer.textContent =
        body.status === "approved"
          ? "Thanks: that was taken at once."
          : `Thanks: an admin will review it (#${body.correction_id}).`;
      form.classList.add("sent");
    } catch (error) {
      answer.textContent = error.message;
      send.disabled = false;
    }
  });
  return h(
    "details",
    { class: "wrong" },
    h("summary", { text: `Wrong? Tell me who (head ${headNumber})` }),
    form,
  );
}

/** Tags by category, filtered live by a slider per category (in the page: no model runs again). */
function tagsSection(result) {
  const tags = result.tags || [];
  const groups = h("div", { class: "tag-groups" });
  const count = h("p", { class: "tag-count", role: "status", "aria-live": "polite" });
  const sliders = {};
  const controls = TAG_CATEGORIES.filter((c) => c.slider).map((category) => {
    const id = uid(`slider-${category.key}`);
    const output = h("output", { for: id, text: "0.00" });
    const input = h("input", {
      id,
      type: "range",
      min: "0",
      max: "1",
      step: "0.01",
      value: "0",
      class: `slider slider-${category.key}`,
      dataset: { category: category.key },
    });
    input.addEventListener("input", () => {
      output.textContent = Number(input.value).toFixed(2);
      draw();
    });
    sliders[category.key] = input;
    return h(
      "div",
      { class: "field slider-field" },
      h("label", { for: id }, `${category.title} tags: at least `, output),
      input,
    );
  });

  function draw() {
    let shown = 0;
    const blocks = [];
    for (const category of TAG_CATEGORIES) {
      const all = tags.filter((t) => t.category === category.key).sort((a, b) => b.score - a.score);
      const floor = Number(sliders[category.key].value);
      const visible = all.filter((t) => t.score >= floor);
      shown += visible.length;
      blocks.push(
        h(
          "div",
          { class: `tag-group tag-group-${category.key}` },
          h("h5", { text: `${category.title} (${visible.length} of ${all.length})` }),
          visible.length
            ? h(
                "ul",
                { class: "tag-list" },
                visible.map((t) =>
                  h(
                    "li",
                    { class: `tag tag-${category.key}`, dataset: { score: String(t.score) } },
                    h("span", { class: "tag-name", text: t.name }),
                    h("span", { class: "tag-score", text: t.score.toFixed(2) }),
                  ),
                ),
              )
            : h("p", { class: "hint", text: "None at this level." }),
        ),
      );
    }
    const total = tags.filter((t) => TAG_CATEGORIES.some((c) => c.key === t.category)).length;
    count.textContent = `Showing ${shown} of ${total} tags.`;
    count.dataset.shown = String(shown);
    replace(groups, blocks);
  }

  const ratingTags = tags.filter((t) => t.category === "rating").sort((a, b) => b.score - a.score);
  const section = h(
    "section",
    { class: "tags" },
    h("h4", { text: "Tags" }),
    h(
      "p",
      { class: "hint threshold-note" },
      "This result holds only the tags the tagger scored above its own threshold: the sliders hide tags, " +
        "they cannot bring back the ones below it.",
    ),
    h("div", { class: "sliders" }, controls),
    count,
    groups,
    ratingTags.length
      ? h(
          "p",
          { class: "rating-scores" },
          "Rating scores: ",
          ratingTags.map((t) => `${t.name} ${t.score.toFixed(2)}`).join(", "),
        )
      : null,
  );
  draw();
  return section;
}
