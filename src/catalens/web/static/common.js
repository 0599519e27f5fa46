// Shared helpers for the catalens pages: API calls, error text, small DOM utilities.

export const ROOT = document.body.dataset.root || "";

/** An error from the API, carrying its `{error, detail}` body. */
export class ApiError extends Error {
  constructor(status, error, detail) {
    super(detail || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
    this.detail = detail;
  }
}

/** Human-readable text for FastAPI-style details: a string, or a list of `{loc, msg}`. */
export function detailText(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => (d && typeof d === "object" ? [fieldName(d.loc), d.msg].filter(Boolean).join(": ") : String(d)))
      .join("; ");
  }
  if (typeof detail === "object" && detail.msg) return String(detail.msg);
  return JSON.stringify(detail);
}

function fieldName(loc) {
  return Array.isArray(loc) ? loc.filter((p) => p !== "body" && p !== "query").join(".") : "";
}

/** Fetch JSON from the API; throws `ApiError` with the server's reason on failure. */
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(ROOT + path, { headers: { Accept: "application/json" }, ...options });
  } catch (err) {
    throw new ApiError(0, "network", `The server could not be reached (${err.message}).`);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const detail = body ? detailText(body.detail ?? body.message ?? body.error) : "";
    throw new ApiError(
      response.status,
      body && body.error,
      detail || `${response.status} ${response.statusText || "error"}`,
    );
  }
  return body;
}

/** Show or hide the page's error banner (`#error`). */
export function showError(message, title) {
  const banner = document.getElementById("error");
  if (!banner) return;
  if (!message) {
    banner.hidden = true;
    return;
  }
  if (title) document.getElementById("error-title").textContent = title;
  document.getElementById("error-detail").textContent = message;
  banner.hidden = false;
}

export function initErrorBanner() {
  const close = document.getElementById("error-close");
  if (close) close.addEventListener("click", () => showError(null));
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

const numberFormat = new Intl.NumberFormat();
export const formatCount = (n) => (typeof n === "number" ? numberFormat.format(n) : "–");

/** "3 minutes ago" for a Unix time in seconds (or an ISO string). */
export function timeAgo(value) {
  const ms = typeof value === "number" ? value * 1000 : Date.parse(value);
  if (!Number.isFinite(ms)) return "";
  const seconds = Math.round((ms - Date.now()) / 1000);
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const units = [
    ["year", 31536000],
    ["month", 2592000],
    ["day", 86400],
    ["hour", 3600],
    ["minute", 60],
    ["second", 1],
  ];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === "second") {
      return rtf.format(Math.round(seconds / size), unit);
    }
  }
  return "";
}

export function formatDate(value) {
  const ms = typeof value === "number" ? value * 1000 : Date.parse(value);
  return Number.isFinite(ms) ? new Date(ms).toLocaleString() : "";
}
