// Talking to the REST API: the bearer token and the browser id from localStorage, JSON and NDJSON answers,
// pictures fetched with the token (as blob: URLs). The token only ever travels in the Authorization header.

const TOKEN_KEY = "anibot.token";
const BROWSER_KEY = "anibot.browser";
const BROWSER_ID = /^[A-Za-z0-9_-]{22,64}$/;

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  const value = (token || "").trim();
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new CustomEvent("anibot:token"));
}

/** This browser's random id (whose favourites these are): made once, kept in localStorage. */
export function browserId() {
  let id = "";
  try {
    id = localStorage.getItem(BROWSER_KEY) || "";
  } catch {
    id = "";
  }
  if (!BROWSER_ID.test(id)) {
    const bytes = new Uint8Array(24);
    crypto.getRandomValues(bytes);
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("").slice(0, 32);
    try {
      localStorage.setItem(BROWSER_KEY, id);
    } catch {
      // private mode: the id lives as long as the page
    }
  }
  return id;
}

export function headers(extra = {}) {
  const all = { "X-Anibot-Browser": browserId(), ...extra };
  const token = getToken();
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

/** An API refusal or failure, with the server's code and message (or a network error). */
export class ApiError extends Error {
  constructor(status, code, message, body = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && body.error ? body.error : {};
  const message =
    error.message ||
    (response.status === 401
      ? "The server needs a token: type it in the API token box."
      : `The server answered ${response.status}.`);
  return new ApiError(response.status, error.code || `http_${response.status}`, message, body);
}

async function send(method, path, { json, form, signal } = {}) {
  const init = { method, headers: headers(), signal, credentials: "same-origin", cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  try {
    return await fetch(path, init);
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "The server could not be reached.");
  }
}

/** A JSON answer; throws ApiError for any status >= 400. */
export async function api(method, path, options = {}) {
  const response = await send(method, path, options);
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return {};
  return response.json();
}

export const get = (path, options) => api("GET", path, options);

/** A query string from an object (empty values left out). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * POST a form to a route that answers NDJSON (one JSON object a line); `onEvent(object)` for each line.
 * A plain JSON answer (a refusal before anything was queued, or a server that does not stream) is handed to
 * onEvent as a final "result" or "error" event, so callers see one shape.
 */
export async function postStream(path, form, onEvent, { signal } = {}) {
  const response = await send("POST", path, { form, signal });
  const type = response.headers.get("Content-Type") || "";
  if (!type.includes("ndjson")) {
    if (!response.ok) {
      const error = await errorOf(response);
      onEvent({ event: "error", status: error.status, error: { code: error.code, message: error.message } });
      return;
    }
    onEvent({ event: "result", ...(await response.json()) });
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let ended = false;
  const take = (line) => {
    const text = line.trim();
    if (!text) return;
    let event;
    try {
      event = JSON.parse(text);
    } catch {
      return; // a broken line: skipped, the final line still comes
    }
    if (event.event === "result" || event.event === "error") ended = true;
    onEvent(event);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let newline = buffered.indexOf("\n");
    while (newline >= 0) {
      take(buffered.slice(0, newline));
      buffered = buffered.slice(newline + 1);
      newline = buffered.indexOf("\n");
    }
  }
  take(buffered + decoder.decode());
  if (!ended) {
    onEvent({
      event: "error",
      status: 0,
      error: { code: "cut_off", message: "The answer was cut off before the result; send the picture again." },
    });
  }
}

/** A picture behind the token, as a blob: URL (revoke it when the picture goes). */
export async function pictureUrl(path, { signal } = {}) {
  const response = await send("GET", path, { signal });
  if (!response.ok) throw await errorOf(response);
  return URL.createObjectURL(await response.blob());
}
