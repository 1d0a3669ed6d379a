// The page's entry: the token box and the hash routes (#/analyse, #/anime, #/admin). Each page module exports
// mount(root) -> unmount(); a route change or a new token unmounts the page shown and mounts the next.

import * as admin from "./admin.js";
import * as analyse from "./analyse.js";
import * as anime from "./anime.js";
import { browserId, getToken, setToken } from "./api.js";
import { clear } from "./dom.js";

const PAGES = { analyse, anime, admin };
const TITLES = { analyse: "Analyse", anime: "Anime", admin: "Admin" };
const DEFAULT_PAGE = "analyse";

let unmount = null;
let current = null;

function routeOf(hash) {
  const name = String(hash || "").replace(/^#\/?/, "").split(/[/?]/)[0];
  return Object.hasOwn(PAGES, name) ? name : null;
}

function show(name, { focus = false } = {}) {
  const main = document.getElementById("main");
  if (unmount) unmount();
  unmount = null;
  clear(main);
  current = name;
  for (const link of document.querySelectorAll("[data-route]")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${TITLES[name]} · anibot`;
  document.body.dataset.page = name;
  unmount = PAGES[name].mount(main) || null;
  if (focus) main.focus({ preventScroll: true });
}

function onHashChange() {
  const name = routeOf(location.hash);
  if (!name) {
    location.replace(`#/${DEFAULT_PAGE}`);
    return;
  }
  show(name, { focus: current !== null });
}

function tokenBox() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const status = document.getElementById("token-status");
  const forget = document.getElementById("token-forget");
  const paint = () => {
    status.textContent = getToken() ? "A token is saved in this browser." : "No token saved.";
  };
  input.value = getToken();
  paint();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value);
    paint();
  });
  forget.addEventListener("click", () => {
    input.value = "";
    setToken("");
    paint();
  });
  // a new token can open (or close) what the page shows: show it again with the new one
  window.addEventListener("anibot:token", () => {
    if (current) show(current);
  });
}

function start() {
  browserId();
  tokenBox();
  window.addEventListener("hashchange", onHashChange);
  onHashChange();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
