// The Admin page, shown only when GET /v1/admin/whoami accepts the token: characters with their reference
// thumbnails, adding a character (each picture's chosen head shown, the choice editable), the review queue,
// jobs with live progress and cancel, and the models installed and active.

import { ApiError, api, get, pictureUrl, query } from "./api.js";
import { dropZone, duration, h, notice, percent, replace, uid, when } from "./dom.js";
import { pictureWithBoxes } from "./heads.js";

const MAX_PICTURES = 20;
const POLL_MS = 2000;
const THUMBNAILS_SHOWN = 12;
const ACTIVE_STATUSES = new Set(["queued", "running"]);

export function mount(root) {
  const state = {
    alive: true,
    urls: [],
    controller: new AbortController(),
    timer: null,
    jobs: new Map(), // job id -> its row
    watched: new Set(), // jobs this page queued: the characters are reloaded when one ends
  };
  const gate = h("p", { class: "status", role: "status", "aria-live": "polite", text: "Checking the admin token…" });
  const page = h(
    "section",
    { class: "page admin", "aria-labelledby": "admin-title" },
    h("h2", { id: "admin-title", text: "Admin" }),
    gate,
  );
  let pollJobs = () => {}; // set once the jobs section exists
  const watchJob = (jobId) => {
    if (jobId) state.watched.add(jobId);
    pollJobs();
  };
  root.append(page);
  check();

  async function check() {
    try {
      await get("/v1/admin/whoami", { signal: state.controller.signal });
    } catch (error) {
      if (!state.alive || (error && error.name === "AbortError")) return;
      gate.remove();
      page.append(refusal(error));
      return;
    }
    if (!state.alive) return;
    gate.remove();
    build();
  }

  function refusal(error) {
    const hint =
      error.code === "admin_off"
        ? "The server has no admin token (ANIBOT_API_ADMIN_TOKEN), so the admin pages are off."
        : "Type the admin token (ANIBOT_API_ADMIN_TOKEN) in the API token box above to open them.";
    return h(
      "div",
      { class: "notice error admin-refusal", role: "alert" },
      h("p", { class: "refusal-title", text: "The admin pages are closed to this token." }),
      h("p", { text: error instanceof ApiError ? error.message : String(error) }),
      h("p", { text: hint }),
    );
  }

  // ---- sections ------------------------------------------------------------------------------------------

  function build() {
    const characters = charactersSection();
    const adding = addSection(watchJob);
    const review = reviewSection();
    const jobs = jobsSection(characters.reload);
    const models = modelsSection();
    const nav = h(
      "nav",
      { class: "admin-nav", "aria-label": "Admin sections" },
      h(
        "ul",
        { class: "nav-list" },
        [
          ["admin-characters", "Characters"],
          ["admin-add", "Add a character"],
          ["admin-review", "Review"],
          ["admin-jobs", "Jobs"],
          ["admin-models", "Models"],
        ].map(([id, text]) =>
          h(
            "li",
            {},
            h("button", {
              type: "button",
              class: "link-button",
              text,
              onclick: () => document.getElementById(id).scrollIntoView({ block: "start" }),
            }),
          ),
        ),
      ),
    );
    page.append(nav, characters.element, adding, review.element, jobs.element, models.element);
    characters.reload();
    review.reload();
    models.reload();
    pollJobs = jobs.poll;
    jobs.poll();
  }

  function section(id, title, ...children) {
    return h("section", { id, class: "admin-section", "aria-labelledby": `${id}-title` }, h("h3", { id: `${id}-title`, text: title }), children);
  }

  async function thumbnail(path, alt) {
    const img = h("img", { alt, class: "thumb", width: "64", height: "64" });
    try {
      const src = await pictureUrl(path, { signal: state.controller.signal });
      state.urls.push(src);
      img.src = src;
    } catch (error) {
      img.alt = `${alt} (not kept)`;
      img.classList.add("missing");
    }
    return img;
  }

  function charactersSection() {
    const list = h("div", { class: "character-list" });
    const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
    const element = section(
      "admin-characters",
      "Characters",
      h("button", { type: "button", text: "Refresh", onclick: () => reload() }),
      status,
      list,
    );

    async function reload() {
      status.textContent = "Loading the characters…";
      try {
        const body = await get("/v1/admin/characters", { signal: state.controller.signal });
        if (!state.alive) return;
        const characters = body.characters || [];
        status.textContent = `${characters.length} character(s).`;
        replace(list, characters.length ? h("ul", { class: "characters" }, characters.map(characterItem)) : null);
      } catch (error) {
        if (state.alive && error.name !== "AbortError") status.textContent = error.message;
      }
    }

    function characterItem(character) {
      const label = character.series ? `${character.name} (${character.series})` : character.name;
      const thumbs = h("ul", { class: "thumbs" });
      const answer = h("p", { class: "form-answer", role: "status", "aria-live": "polite" });
      const shown = (character.thumbnails || []).slice(0, THUMBNAILS_SHOWN);
      shown.forEach((path, index) => {
        const item = h("li", { class: "thumb-item" });
        thumbs.append(item);
        thumbnail(path, `Reference ${index + 1} of ${label}`).then((img) => {
          const sha = referenceSha(path);
          item.append(
            img,
            sha
              ? h("button", {
                  type: "button",
                  class: "small danger",
                  text: "Remove",
                  "aria-label": `Remove reference ${index + 1} of ${label}`,
                  onclick: () =>
                    removeThing(
                      `/v1/admin/references/${sha}${query({ name: character.name, series: character.series })}`,
                      `reference ${index + 1} of ${label}`,
                      answer,
                    ),
                })
              : null,
          );
        });
      });
      const more = (character.thumbnails || []).length - shown.length;
      return h(
        "li",
        { class: "character", dataset: { name: character.name } },
        h("p", { class: "character-name", text: label }),
        h("p", {
          class: "hint",
          text: `${character.references} reference(s)${character.updated_at ? `, updated ${when(character.updated_at)}` : ""}`,
        }),
        thumbs,
        more > 0 ? h("p", { class: "hint", text: `and ${more} more` }) : null,
        h("button", {
          type: "button",
          class: "danger",
          text: "Remove the character",
          "aria-label": `Remove ${label}`,
          onclick: () => {
            if (window.confirm(`Remove ${label} and all its references?`)) {
              removeThing(`/v1/admin/characters${query({ name: character.name, series: character.series })}`, label, answer);
            }
          },
        }),
        answer,
      );
    }

    async function removeThing(path, what, answer) {
      answer.textContent = `Removing ${what}…`;
      try {
        const body = await api("DELETE", path);
        answer.textContent = body.job_id ? `Removing ${what}: job ${shortId(body.job_id)} (see Jobs).` : `Removed ${what}.`;
        if (body.job_id) watchJob(body.job_id);
        else reload();
      } catch (error) {
        answer.textContent = error.message;
      }
    }

    return { element, reload };
  }

  function addSection(afterQueued) {
    const nameId = uid("char-name");
    const seriesId = uid("char-series");
    const name = h("input", { id: nameId, name: "name", required: true, maxlength: "100", autocomplete: "off" });
    const series = h("input", { id: seriesId, name: "series", maxlength: "100", autocomplete: "off" });
    const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
    const previews = h("div", { class: "previews" });
    const submit = h("button", { type: "submit", disabled: true, text: "Add the character" });
    const reset = h("button", { type: "button", text: "Start over", onclick: () => clearPictures() });
    const draft = { files: [], pictures: [], choices: [], urls: [] };
    const { zone } = dropZone({
      label: `Drop 1 to ${MAX_PICTURES} pictures of the character here, or`,
      hint: "Each picture's head is found first; click another head (or “Whole picture”) to change the choice.",
      onFiles: (files) => preview(files),
    });
    const form = h(
      "form",
      { class: "add-character" },
      h("div", { class: "field" }, h("label", { for: nameId, text: "Name" }), name),
      h("div", { class: "field" }, h("label", { for: seriesId, text: "Series (optional)" }), series),
      zone,
      status,
      previews,
      h("div", { class: "actions" }, submit, reset),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      send();
    });

    function clearPictures() {
      for (const url of draft.urls) URL.revokeObjectURL(url);
      Object.assign(draft, { files: [], pictures: [], choices: [], urls: [] });
      replace(previews);
      submit.disabled = true;
      status.textContent = "";
    }

    async function preview(files) {
      clearPictures();
      let chosen = files;
      if (files.length > MAX_PICTURES) chosen = files.slice(0, MAX_PICTURES);
      draft.files = chosen;
      status.textContent = `Finding the heads in ${chosen.length} picture(s)…${
        files.length > chosen.length ? ` (only the first ${MAX_PICTURES} are kept)` : ""
      }`;
      const body = new FormData();
      for (const file of chosen) body.append("image", file, file.name);
      try {
        const answer = await api("POST", "/v1/admin/characters/preview", { form: body });
        if (!state.alive || draft.files !== chosen) return;
        draft.pictures = answer.pictures || [];
        draft.choices = draft.pictures.map((p) => (p.chosen === null || p.chosen === undefined ? "whole" : p.chosen));
        replace(previews, draft.pictures.map((picture, index) => previewItem(picture, index)));
        status.textContent = `${draft.pictures.length} picture(s) ready: check each chosen head, then add the character.`;
        submit.disabled = draft.pictures.length === 0;
      } catch (error) {
        if (state.alive) status.textContent = error.message;
      }
    }

    function previewItem(picture, index) {
      const file = draft.files[picture.index ?? index] || draft.files[index];
      const src = URL.createObjectURL(file);
      draft.urls.push(src);
      const label = picture.filename || (file && file.name) || `picture ${index + 1}`;
      const heads = picture.heads || [];
      const { figure, buttons } = pictureWithBoxes({
        src,
        alt: `${label} with ${heads.length} head(s) found`,
        width: picture.width,
        height: picture.height,
        boxes: heads.map((head, k) => ({
          box: head.box,
          label: `Use head ${k + 1} of ${label} (detection ${percent(head.score)})`,
          className: "choice",
        })),
      });
      const whole = h("button", { type: "button", class: "whole-picture", text: "Whole picture" });
      const caption = h("p", { class: "choice-caption", role: "status", "aria-live": "polite" });
      const paint = () => {
        const choice = draft.choices[index];
        buttons.forEach((button, k) => {
          button.classList.toggle("chosen", choice === k);
          button.setAttribute("aria-pressed", choice === k ? "true" : "false");
        });
        whole.classList.toggle("chosen", choice === "whole");
        whole.setAttribute("aria-pressed", choice === "whole" ? "true" : "false");
        caption.textContent =
          choice === "whole"
            ? `${label}: the whole picture is used.`
            : `${label}: head ${choice + 1} of ${heads.length} is used.`;
      };
      buttons.forEach((button, k) =>
        button.addEventListener("click", () => {
          draft.choices[index] = k;
          paint();
        }),
      );
      whole.addEventListener("click", () => {
        draft.choices[index] = "whole";
        paint();
      });
      paint();
      return h("figure", { class: "preview", dataset: { index: String(index) } }, figure, h("figcaption", {}, caption, whole));
    }

    function boxes() {
      return draft.pictures.map((picture, index) => {
        const choice = draft.choices[index];
        const standard = picture.chosen === null || picture.chosen === undefined ? "whole" : picture.chosen;
        if (choice === standard) return null;
        if (choice === "whole") return [0, 0, picture.width, picture.height];
        return picture.heads[choice].box;
      });
    }

    async function send() {
      if (!name.value.trim()) {
        status.textContent = "The character needs a name.";
        name.focus();
        return;
      }
      if (!draft.pictures.length) {
        status.textContent = `Drop 1 to ${MAX_PICTURES} pictures first.`;
        return;
      }
      const body = new FormData();
      body.append("name", name.value.trim());
      body.append("series", series.value.trim());
      body.append("boxes", JSON.stringify(boxes()));
      for (const file of draft.files) body.append("image", file, file.name);
      submit.disabled = true;
      status.textContent = "Sending…";
      try {
        const answer = await api("POST", "/v1/admin/characters", { form: body });
        const label = series.value.trim() ? `${name.value.trim()} (${series.value.trim()})` : name.value.trim();
        clearPictures();
        status.textContent = `Adding ${label}: job ${shortId(answer.job_id)} (see Jobs).`;
        name.value = "";
        series.value = "";
        afterQueued(answer.job_id);
      } catch (error) {
        status.textContent = error.message;
        submit.disabled = false;
      }
    }

    return section("admin-add", "Add a character", form);
  }

  function reviewSection() {
    const list = h("div", { class: "review-list" });
    const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
    const element = section(
      "admin-review",
      "Review queue",
      h("button", { type: "button", text: "Refresh", onclick: () => reload() }),
      status,
      list,
    );

    async function reload() {
      status.textContent = "Loading the review queue…";
      try {
        const body = await get("/v1/admin/review", { signal: state.controller.signal });
        if (!state.alive) return;
        const items = body.items || [];
        status.textContent = items.length ? `${items.length} waiting.` : "Nothing waits for review.";
        replace(list, items.length ? h("ul", { class: "reviews" }, items.map(reviewItem)) : null);
      } catch (error) {
        if (state.alive && error.name !== "AbortError") status.textContent = error.message;
      }
    }

    function reviewItem(item) {
      const suggested = item.series ? `${item.name} (${item.series})` : item.name;
      const answer = h("p", { class: "form-answer", role: "status", "aria-live": "polite" });
      const li = h("li", { class: "review", dataset: { reviewId: String(item.id) } });
      const crop = h("div", { class: "review-crop" });
      if (item.crop_url) thumbnail(item.crop_url, `Head ${item.head} of job ${shortId(item.job_id)}`).then((img) => crop.append(img));
      const decide = (verdict) => async () => {
        for (const b of li.querySelectorAll("button")) b.disabled = true;
        try {
          const body = await api("POST", `/v1/admin/review/${encodeURIComponent(item.id)}/${verdict}`);
          answer.textContent = `${verdict === "approve" ? "Approved" : "Rejected"} (${body.status}).`;
          li.classList.add("decided");
        } catch (error) {
          answer.textContent = error.message;
          for (const b of li.querySelectorAll("button")) b.disabled = false;
        }
      };
      append(
        li,
        crop,
        h(
          "div",
          { class: "review-text" },
          h("p", { text: `Head ${item.head} of job ${shortId(item.job_id)}: shown as “${item.predicted || "unknown"}”.` }),
          h("p", { text: `Suggested: ${suggested}${item.agreeing ? ` (${item.agreeing} agreeing)` : ""}.` }),
          item.created_at ? h("p", { class: "hint", text: when(item.created_at) }) : null,
          h(
            "div",
            { class: "actions" },
            h("button", { type: "button", text: "Approve", "aria-label": `Approve ${suggested}`, onclick: decide("approve") }),
            h("button", { type: "button", class: "danger", text: "Reject", "aria-label": `Reject ${suggested}`, onclick: decide("reject") }),
          ),
          answer,
        ),
      );
      return li;
    }

    return { element, reload };
  }

  function jobsSection(onCharactersChanged) {
    const body = h("tbody");
    const status = h("p", { class: "status", text: "Loading the jobs…" });
    const announcer = h("p", { class: "visually-hidden", role: "status", "aria-live": "polite" });
    const table = h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "jobs" },
        h("caption", { class: "visually-hidden", text: "Jobs, newest first, refreshed every 2 seconds" }),
        h(
          "thead",
          {},
          h("tr", {}, ["Job", "Kind", "Status", "Stage", "Epoch", "Loss", "ETA", "Progress", ""].map((t) => h("th", { scope: "col", text: t }))),
        ),
        body,
      ),
    );
    const element = section("admin-jobs", "Jobs", status, announcer, table);

    async function poll() {
      clearTimeout(state.timer);
      if (!state.alive) return;
      if (!document.hidden) {
        try {
          const answer = await get("/v1/admin/jobs", { signal: state.controller.signal });
          if (!state.alive) return;
          draw(answer.jobs || []);
          status.textContent = `${(answer.jobs || []).length} job(s); refreshed ${new Date().toLocaleTimeString()}.`;
        } catch (error) {
          if (!state.alive || error.name === "AbortError") return;
          status.textContent = error.message;
        }
      }
      state.timer = setTimeout(poll, POLL_MS);
    }

    function draw(jobs) {
      const seen = new Set();
      let previous = null;
      for (const job of jobs) {
        seen.add(job.id);
        let entry = state.jobs.get(job.id);
        if (!entry) {
          entry = newRow(job);
          state.jobs.set(job.id, entry);
        } else if (entry.status !== job.status) {
          announcer.textContent = `Job ${shortId(job.id)} (${job.kind}): ${job.status}.`;
          if (job.status === "done" && String(job.kind).startsWith("characters")) onCharactersChanged();
        }
        if (state.watched.has(job.id) && !ACTIVE_STATUSES.has(job.status)) {
          state.watched.delete(job.id); // one this page queued, ended before a poll saw it change
          onCharactersChanged();
        }
        update(entry, job);
        // keep the server's order (newest first) without rebuilding rows (focus stays on a Cancel button)
        const before = previous ? previous.row.nextSibling : body.firstChild;
        if (before !== entry.row) body.insertBefore(entry.row, before);
        previous = entry;
      }
      for (const [id, entry] of state.jobs) {
        if (!seen.has(id)) {
          entry.row.remove();
          state.jobs.delete(id);
        }
      }
    }

    function newRow(job) {
      const cells = {};
      const row = h("tr", { class: "job", dataset: { jobId: job.id } });
      for (const key of ["id", "kind", "status", "stage", "epoch", "loss", "eta", "progress", "actions"]) {
        cells[key] = h(key === "id" ? "th" : "td", { class: `job-${key}`, scope: key === "id" ? "row" : null });
        row.append(cells[key]);
      }
      cells.id.append(h("code", { title: job.id, text: shortId(job.id) }));
      const meter = h("progress", { max: "1", "aria-label": `Progress of job ${shortId(job.id)}` });
      cells.progress.append(meter);
      const cancel = h("button", {
        type: "button",
        class: "small danger",
        text: "Cancel",
        "aria-label": `Cancel job ${shortId(job.id)}`,
        onclick: async () => {
          cancel.disabled = true;
          try {
            const answer = await api("POST", `/v1/admin/jobs/${encodeURIComponent(job.id)}/cancel`);
            announcer.textContent = `Job ${shortId(job.id)}: ${answer.status}.`;
            poll();
          } catch (error) {
            announcer.textContent = error.message;
            cancel.disabled = false;
          }
        },
      });
      cells.actions.append(cancel);
      return { row, cells, meter, cancel, status: job.status };
    }

    function update(entry, job) {
      const progress = job.progress && typeof job.progress === "object" ? job.progress : { fraction: job.progress };
      const fraction = Number(progress.fraction ?? (job.status === "done" ? 1 : 0));
      entry.status = job.status;
      entry.row.dataset.status = job.status;
      entry.cells.kind.textContent = job.subject ? `${job.kind}: ${job.subject}` : job.kind || "";
      entry.cells.status.textContent = job.error && job.error.message ? `${job.status}: ${job.error.message}` : job.status;
      entry.cells.stage.textContent = progress.stage || "";
      entry.cells.epoch.textContent =
        progress.epoch !== undefined && progress.epoch !== null ? `${progress.epoch}${progress.epochs ? ` / ${progress.epochs}` : ""}` : "";
      entry.cells.loss.textContent = typeof progress.loss === "number" ? progress.loss.toFixed(4) : "";
      entry.cells.eta.textContent =
        typeof progress.eta_s === "number" && ACTIVE_STATUSES.has(job.status) ? duration(progress.eta_s) : "";
      if (Number.isFinite(fraction)) entry.meter.value = Math.min(1, Math.max(0, fraction));
      entry.meter.textContent = percent(fraction || 0);
      entry.cancel.hidden = !ACTIVE_STATUSES.has(job.status);
    }

    return { element, poll };
  }

  function modelsSection() {
    const list = h("div", { class: "models-list" });
    const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
    const element = section(
      "admin-models",
      "Models",
      h("button", { type: "button", text: "Refresh", onclick: () => reload() }),
      status,
      list,
    );

    async function reload() {
      status.textContent = "Loading the models…";
      try {
        const body = await get("/v1/admin/models", { signal: state.controller.signal });
        if (!state.alive) return;
        const slots = body.slots || [];
        status.textContent = `${slots.length} slot(s).`;
        replace(
          list,
          h(
            "ul",
            { class: "slots" },
            slots.map((slot) =>
              h(
                "li",
                { class: "slot", dataset: { slot: slot.slot } },
                h("p", { class: "slot-name", text: slot.slot }),
                h("p", {}, "Active: ", slot.active ? describeModel(slot.active) : "none"),
                (slot.installed || []).length
                  ? h(
                      "ul",
                      { class: "installed" },
                      slot.installed.map((m) =>
                        h(
                          "li",
                          { class: m.active ? "model active" : "model" },
                          describeModel(m),
                          m.active ? " (active)" : "",
                          m.provenance ? h("p", { class: "hint", text: m.provenance }) : null,
                        ),
                      ),
                    )
                  : h("p", { class: "hint", text: "Nothing installed." }),
              ),
            ),
          ),
        );
      } catch (error) {
        if (state.alive && error.name !== "AbortError") status.textContent = error.message;
      }
    }

    return { element, reload };
  }

  return () => {
    state.alive = false;
    clearTimeout(state.timer);
    state.controller.abort();
    for (const url of state.urls) URL.revokeObjectURL(url);
  };
}

function append(el, ...children) {
  for (const child of children) if (child) el.append(child);
  return el;
}

function shortId(id) {
  return String(id || "").slice(0, 8);
}

/** The sha256 of a reference thumbnail's path (/v1/admin/references/<sha256>.png), or null. */
function referenceSha(path) {
  const match = /\/([0-9a-f]{64})\.png$/.exec(String(path));
  return match ? match[1] : null;
}

/** One model of a slot in words: its name, version and format. */
function describeModel(model) {
  if (!model || typeof model !== "object") return String(model);
  const name = [model.name, model.version].filter((v) => v !== undefined && v !== null && v !== "").join(" ");
  return `${name || "(unnamed)"}${model.format ? ` (${model.format})` : ""}`;
}
