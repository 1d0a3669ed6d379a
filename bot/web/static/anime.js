// The Anime page: search by name and genre, an anime's details, recommendations with their reasons, and this
// browser's favourites (the browser id travels as X-Anibot-Browser).

import { api, get, query } from "./api.js";
import { h, notice, replace, uid } from "./dom.js";

const RECOMMENDATIONS = 10;

/** A link to an http(s) address from the server, or nothing (never a javascript: or data: URL). */
function webLink(address, text) {
  if (typeof address !== "string" || !/^https?:\/\//i.test(address)) return null;
  return h("p", {}, h("a", { href: address, rel: "noopener noreferrer", target: "_blank", text }));
}

export function mount(root) {
  const state = { alive: true, favourites: new Map(), page: 1, last: { q: "", genre: "" } };
  const nameId = uid("anime-name");
  const genreId = uid("anime-genre");
  const name = h("input", { id: nameId, name: "q", type: "search", maxlength: "200", autocomplete: "off" });
  const genre = h("select", { id: genreId, name: "genre" }, h("option", { value: "", text: "Any genre" }));
  const searchStatus = h("p", { class: "status", role: "status", "aria-live": "polite" });
  const hits = h("div", { class: "anime-hits" });
  const pager = h("div", { class: "pager" });
  const details = h("section", { class: "anime-details", "aria-live": "polite", "aria-label": "Details" });
  const favList = h("div", { class: "favourites-list" });
  const form = h(
    "form",
    { class: "search-form", role: "search" },
    h("div", { class: "field" }, h("label", { for: nameId, text: "Name" }), name),
    h("div", { class: "field" }, h("label", { for: genreId, text: "Genre" }), genre),
    h("button", { type: "submit", text: "Search" }),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.last = { q: name.value.trim(), genre: genre.value };
    search(1);
  });

  root.append(
    h(
      "section",
      { class: "page anime", "aria-labelledby": "anime-title" },
      h("h2", { id: "anime-title", text: "Anime" }),
      h("p", { class: "intro", text: "Search the catalogue, read about an anime and get recommendations." }),
      form,
      searchStatus,
      hits,
      pager,
      details,
      h(
        "section",
        { class: "favourites", "aria-labelledby": "fav-title" },
        h("h3", { id: "fav-title", text: "Your favourites (this browser)" }),
        favList,
      ),
    ),
  );

  loadGenres();
  loadFavourites();

  async function loadGenres() {
    try {
      const body = await get("/v1/genres");
      if (!state.alive) return;
      for (const g of body.genres || []) genre.append(h("option", { value: g, text: g }));
    } catch (error) {
      if (state.alive) searchStatus.textContent = `Genres could not be loaded: ${error.message}`;
    }
  }

  async function search(page) {
    state.page = page;
    searchStatus.textContent = "Searching…";
    try {
      const body = await get(`/v1/anime/search${query({ q: state.last.q, genre: state.last.genre, page })}`);
      if (!state.alive) return;
      const items = body.items || [];
      searchStatus.textContent = items.length
        ? `Page ${body.page || page} of ${body.pages || 1}.`
        : body.message || "Nothing found.";
      replace(hits, items.length ? h("ul", { class: "anime-list" }, items.map(animeItem)) : null);
      drawPager(body.page || page, body.pages || 1);
    } catch (error) {
      if (!state.alive) return;
      searchStatus.textContent = "";
      replace(hits, notice(error.message, "error"));
      replace(pager);
    }
  }

  function drawPager(page, pages) {
    if (pages <= 1) {
      replace(pager);
      return;
    }
    replace(
      pager,
      h("button", { type: "button", disabled: page <= 1, text: "Previous", onclick: () => search(page - 1) }),
      h("span", { text: ` ${page} / ${pages} ` }),
      h("button", { type: "button", disabled: page >= pages, text: "Next", onclick: () => search(page + 1) }),
    );
  }

  function animeId(item) {
    return item.id ?? item.anime_id ?? null;
  }

  function favouriteButton(item) {
    const id = animeId(item);
    if (id === null) return null;
    const button = h("button", { type: "button", class: "fav-toggle", dataset: { animeId: String(id) } });
    const paint = () => {
      const on = state.favourites.has(String(id));
      button.setAttribute("aria-pressed", on ? "true" : "false");
      button.textContent = on ? "★ Favourite" : "☆ Add to favourites";
      button.setAttribute("aria-label", `${on ? "Remove" : "Add"} ${item.title} ${on ? "from" : "to"} favourites`);
    };
    paint();
    button.addEventListener("anibot:favourites", paint);
    button.addEventListener("click", async () => {
      const on = state.favourites.has(String(id));
      button.disabled = true;
      try {
        const body = await api(on ? "DELETE" : "PUT", `/v1/favourites/${encodeURIComponent(id)}`);
        setFavourites(body.items || []);
      } catch (error) {
        replace(favList, notice(error.message, "error"));
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  function animeItem(item) {
    const facts = [item.kind, item.year, (item.genres || []).join(", "), item.score ? `score ${item.score}` : ""]
      .filter(Boolean)
      .join(" · ");
    return h(
      "li",
      { class: "anime-item" },
      h("p", { class: "anime-title", text: item.title }),
      facts ? h("p", { class: "hint", text: facts }) : null,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", text: "Details", onclick: () => showDetails(item.title) }),
        favouriteButton(item),
      ),
    );
  }

  async function showDetails(title) {
    replace(details, h("p", { class: "status", text: `Loading ${title}…` }));
    try {
      const [answer, recs] = await Promise.all([
        get(`/v1/anime${query({ title })}`),
        get(`/v1/recommend${query({ title, n: RECOMMENDATIONS })}`).catch((error) => ({ error })),
      ]);
      if (!state.alive) return;
      const anime = answer.anime;
      if (!anime) {
        replace(details, notice(answer.message || `No anime called ${title}.`, "info"));
        return;
      }
      const others = [anime.english_title, anime.japanese_title, ...(anime.other_names || [])]
        .filter((t) => t && t !== anime.title)
        .join(" / ");
      const facts = [
        ["Score", anime.score],
        ["Type", anime.kind],
        ["Episodes", anime.episodes],
        ["Aired", anime.aired || anime.year],
        ["Studios", (anime.studios || []).join(", ")],
        ["Genres", (anime.genres || []).join(", ")],
        ["Themes", (anime.themes || []).join(", ")],
      ].filter(([, v]) => v !== null && v !== undefined && v !== "");
      replace(
        details,
        h("h3", { class: "details-title", text: anime.title }),
        others ? h("p", { class: "hint", text: others }) : null,
        h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })])),
        anime.synopsis ? h("p", { class: "synopsis", text: anime.synopsis }) : null,
        webLink(anime.mal_url, "MyAnimeList page"),
        favouriteButton(anime),
        h("h4", { text: `If you liked ${anime.title}` }),
        recommendations(recs),
      );
    } catch (error) {
      if (state.alive) replace(details, notice(error.message, "error"));
    }
  }

  function recommendations(recs) {
    if (recs.error) return notice(recs.error.message, "error");
    const items = recs.items || [];
    if (!items.length) return notice(recs.message || "Nothing to recommend.", "info");
    return h(
      "ol",
      { class: "recommendations" },
      items.map((item) =>
        h(
          "li",
          { class: "recommendation" },
          h("p", { class: "anime-title" }, item.title, item.year ? ` (${item.year})` : ""),
          item.reason ? h("p", { class: "reason", text: item.reason }) : null,
          h(
            "div",
            { class: "actions" },
            h("button", { type: "button", text: "Details", onclick: () => showDetails(item.title) }),
            favouriteButton(item),
          ),
        ),
      ),
    );
  }

  async function loadFavourites() {
    try {
      const body = await get("/v1/favourites");
      if (state.alive) setFavourites(body.items || []);
    } catch (error) {
      if (state.alive) replace(favList, notice(error.message, "error"));
    }
  }

  function setFavourites(items) {
    state.favourites = new Map(items.map((item) => [String(animeId(item)), item]));
    replace(
      favList,
      items.length
        ? h(
            "ul",
            { class: "anime-list" },
            items.map((item) =>
              h(
                "li",
                { class: "anime-item favourite" },
                h("p", { class: "anime-title", text: item.title }),
                h(
                  "div",
                  { class: "actions" },
                  h("button", { type: "button", text: "Details", onclick: () => showDetails(item.title) }),
                  favouriteButton(item),
                ),
              ),
            ),
          )
        : h("p", { class: "hint", text: "None yet: press “Add to favourites” on an anime." }),
    );
    for (const button of root.querySelectorAll(".fav-toggle")) {
      button.dispatchEvent(new CustomEvent("anibot:favourites"));
    }
  }

  return () => {
    state.alive = false;
  };
}
