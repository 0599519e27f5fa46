// The search page: pick a collection, give an image (drop, paste, file, camera) or words,
// and show the matching products.

import { api, ApiError, el, initErrorBanner, showError } from "./common.js";

const ALL = "__all__";
const STORAGE_KEY = "catalens.collection";
const PREFERRED_META = ["brand", "category", "price"];
const HIDDEN_META = new Set(["title", "name", "id", "images", "image", "preview_image", "url", "product_url"]);
const MAX_META = 3;

const $ = (id) => document.getElementById(id);
const select = $("collection");
const dropZone = $("drop-zone");
const fileInput = $("file-input");
const cameraInput = $("camera-input");
const textForm = $("text-form");
const textQuery = $("text-query");
const topK = $("top-k");
const querySection = $("query");
const preview = $("query-preview");
const thumb = preview.parentElement;
const queryLabel = $("query-label");
const statusLine = $("status");
const resultsSection = $("results-section");
const resultsList = $("results");
const template = $("result-template");
const notice = $("calibration-notice");
const noticeDetail = notice.querySelector("[data-testid=calibration-notice-detail]");

const infoCache = new Map();
let collections = [];
let inFlight = null;
let previewUrl = null;

// -- collections -------------------------------------------------------------------------

async function loadCollections() {
  let data;
  try {
    data = await api("/v1/collections");
  } catch (err) {
    select.replaceChildren(el("option", { value: "", text: "Unavailable" }));
    showError(err.message, "Could not load collections:");
    return;
  }
  collections = Array.isArray(data) ? data : (data && data.collections) || [];
  select.replaceChildren();
  if (collections.length === 0) {
    select.append(el("option", { value: "", text: "No collections yet" }));
    select.disabled = true;
    showError("Ingest a catalog first, e.g. `catalens ingest --collection shop --source products.csv`.", "No collections.");
    return;
  }
  if (collections.length > 1) select.append(el("option", { value: ALL, text: "All collections" }));
  for (const c of collections) {
    select.append(el("option", { value: c.name, text: c.products != null ? `${c.name} (${c.products})` : c.name }));
  }
  const wanted = new URLSearchParams(location.search).get("collection") || localStorage.getItem(STORAGE_KEY);
  const names = new Set(collections.map((c) => c.name));
  if (wanted && (names.has(wanted) || (wanted === ALL && collections.length > 1))) select.value = wanted;
  await onCollectionChange();
}

async function collectionInfo(name) {
  if (!infoCache.has(name)) {
    infoCache.set(name, api(`/v1/collections/${encodeURIComponent(name)}`).catch(() => ({})));
  }
  return infoCache.get(name);
}

/** true, false, or undefined when the API does not say. */
async function textTower(name) {
  if (name !== ALL) {
    const info = await collectionInfo(name);
    return typeof info.has_text_tower === "boolean" ? info.has_text_tower : undefined;
  }
  const towers = await Promise.all(collections.map((c) => textTower(c.name)));
  if (towers.some((t) => t === true)) return true;
  return towers.every((t) => t === false) ? false : undefined;
}

async function onCollectionChange() {
  const name = select.value;
  try {
    localStorage.setItem(STORAGE_KEY, name);
  } catch {
    /* private mode: not remembered */
  }
  const tower = await textTower(name);
  if (select.value !== name) return;
  textForm.hidden = tower === false;
}

// -- queries -----------------------------------------------------------------------------

function searchPath() {
  const name = select.value;
  return name === ALL || !name ? "/v1/search" : `/v1/collections/${encodeURIComponent(name)}/search`;
}

function imageFrom(list) {
  for (const item of list || []) {
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && (!file.type || file.type.startsWith("image/"))) return file;
  }
  return null;
}

function showQuery({ file, text }) {
  querySection.hidden = false;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  thumb.classList.remove("broken");
  thumb.hidden = !file;
  if (file) {
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    const kb = Math.max(1, Math.round(file.size / 1024));
    queryLabel.textContent = `${file.name || "Pasted image"} · ${kb} KB`;
  } else {
    preview.hidden = true;
    preview.removeAttribute("src");
    queryLabel.textContent = `“${text}”`;
  }
}

async function search({ file, text }) {
  if (!select.value) return;
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  showError(null);
  showQuery({ file, text });
  statusLine.textContent = "Searching…";
  document.body.classList.add("busy");
  const k = Number(topK.value) || 12;
  let options;
  if (file) {
    const form = new FormData();
    form.append("image", file, file.name || "pasted.png");
    form.append("top_k", String(k));
    options = { method: "POST", body: form };
  } else {
    options = {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ text, top_k: k }),
    };
  }
  try {
    const started = performance.now();
    const data = await api(searchPath(), { ...options, signal: controller.signal });
    if (inFlight !== controller) return;
    const results = Array.isArray(data) ? data : (data && data.results) || [];
    const own = await displayImages(results);
    if (inFlight !== controller) return;
    renderResults(results, (data && data.query_id) || null, own);
    showCalibrationNotice(results);
    if (results.length) scrollToResults();
    const took = data && typeof data.took_ms === "number" ? data.took_ms : performance.now() - started;
    statusLine.textContent = results.length
      ? `${results.length} ${results.length === 1 ? "match" : "matches"} in ${Math.round(took)} ms`
      : "No products matched.";
  } catch (err) {
    if (controller.signal.aborted) return;
    renderResults([], null, new Map());
    resultsSection.hidden = true;
    statusLine.textContent = "";
    const prefix = err instanceof ApiError && err.status ? "Search failed:" : "Error:";
    showError(err.message, prefix);
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      document.body.classList.remove("busy");
    }
  }
}

// -- results -----------------------------------------------------------------------------

function metaEntries(metadata) {
  const entries = [];
  const seen = new Set();
  const usable = (value) =>
    (typeof value === "string" && value.trim() && value.length <= 48 && !/^(https?:|data:|\/)/.test(value)) ||
    typeof value === "number";
  for (const key of PREFERRED_META) {
    if (usable(metadata[key])) {
      entries.push([key, metadata[key]]);
      seen.add(key);
    }
  }
  for (const [key, value] of Object.entries(metadata)) {
    if (entries.length >= MAX_META) break;
    if (seen.has(key) || HIDDEN_META.has(key.toLowerCase()) || key.startsWith("_") || !usable(value)) continue;
    entries.push([key, value]);
  }
  return entries.slice(0, MAX_META);
}

const label = (key) => key.replace(/[_-]+/g, " ").replace(/^\w/, (c) => c.toUpperCase());

function placeholder(media, title) {
  media.classList.add("no-image");
  media.dataset.initial = (title || "?").trim().charAt(0).toUpperCase();
}

const percent = (p) => `${Math.round(Math.max(0, Math.min(1, p)) * 100)}%`;

/** The headline of a calibrated hit: its verdict and the probability that it is the product. */
const VERDICTS = {
  match: () => "Match",
  ambiguous: () => "Close call",
  no_match: (rank) => (rank === 1 ? "Probably not in the catalog" : "Unlikely"),
};

function showScore(card, hit) {
  const headline = card.querySelector(".headline");
  const bar = card.querySelector(".score-bar span");
  // The raw cosine of the photo and the matched image: what the score came from, not a chance.
  const cosine = Number(hit.cosine ?? hit.score) || 0;
  const cosineText = `cosine similarity ${cosine.toFixed(4)}`;
  const verdict = VERDICTS[hit.verdict];
  if (verdict && hit.probability != null) {
    const p = Number(hit.probability) || 0;
    headline.textContent = `${verdict(hit.rank)} · ${percent(p)}`;
    headline.classList.add(hit.verdict);
    headline.title = `Calibrated probability that this is the product: ${p.toFixed(3)} · ${cosineText}`;
    bar.style.width = percent(p);
    card.dataset.verdict = hit.verdict;
    return hit.verdict === "match";
  }
  headline.textContent = `Similarity ${cosine.toFixed(2)}`;
  headline.classList.add("similarity");
  headline.title = `${cosineText} (not a probability: the collection is not calibrated)`;
  bar.style.width = percent(cosine);
  return false;
}

// -- calibration notice ------------------------------------------------------------------

async function calibrationText(name) {
  const base = `${name}: a sync fits a calibration from the catalog's own images (products with two or more images help), and confirmed shopper photos (“Is this it? Yes”) calibrate it too`;
  try {
    const c = await api(`/v1/collections/${encodeURIComponent(name)}/calibration`);
    return `${base} (now ${c.products_with_several_images} ${c.products_with_several_images === 1 ? "product has" : "products have"} 2+ images, ${c.confirmed_photos} of ${c.confirmed_needed} photos confirmed).`;
  } catch {
    return `${base}.`;
  }
}

/** Say once, above the results, when scores are not probabilities and what would fix it. */
async function showCalibrationNotice(results) {
  const names = [...new Set(results.filter((h) => h.verdict == null).map((h) => h.collection || select.value))];
  notice.hidden = names.length === 0;
  if (!names.length) return;
  noticeDetail.textContent = "";
  const texts = await Promise.all(names.map(calibrationText));
  noticeDetail.textContent = `${texts.join(" ")} Until then the scores compare the photo with each product’s images and are not the chance of a match.`;
}

function scrollToResults() {
  const reduced = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  // From the query (its photo and "N matches") down: on a phone the results start below the screen.
  querySection.scrollIntoView({ block: "start", behavior: reduced ? "auto" : "smooth" });
}

/** Each hit's product's own catalog image (collection -> product id -> URL). */
async function displayImages(results) {
  const wanted = new Map();
  for (const hit of results) {
    const name = hit.collection || select.value;
    if (!wanted.has(name)) wanted.set(name, new Set());
    wanted.get(name).add(hit.product_id);
  }
  const found = new Map();
  await Promise.all(
    [...wanted].map(async ([name, ids]) => {
      const query = [...ids].map((id) => `product_id=${encodeURIComponent(id)}`).join("&");
      try {
        const data = await api(`/v1/collections/${encodeURIComponent(name)}/display-images?${query}`);
        found.set(name, new Map(Object.entries((data && data.images) || {})));
      } catch {
        found.set(name, new Map()); // the matched image stands in
      }
    }),
  );
  return found;
}

// -- feedback ----------------------------------------------------------------------------

let toastTimer = null;

function toast(message) {
  const node = $("toast");
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.hidden = true;
  }, 4000);
}

async function sendFeedback(hit, queryId, verdict, productId) {
  const name = hit.collection || select.value;
  return api(`/v1/collections/${encodeURIComponent(name)}/feedback`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ query_id: queryId, verdict, product_id: productId }),
  });
}

function wireFeedback(card, hit, results, queryId) {
  const box = card.querySelector(".feedback");
  if (!queryId) return; // words, or the server keeps no queries
  box.hidden = false;
  const yes = box.querySelector("[data-testid=feedback-yes]");
  const no = box.querySelector("[data-testid=feedback-no]");
  const form = box.querySelector("form");
  const choice = box.querySelector("select");
  const typed = box.querySelector("input");
  const wrong = box.querySelector("[data-testid=feedback-wrong]");
  const title = hit.title || hit.product_id;
  choice.append(el("option", { value: "", text: "Pick the right product…" }));
  for (const other of results) {
    if (other.product_id === hit.product_id || (other.collection || "") !== (hit.collection || "")) continue;
    choice.append(el("option", { value: other.product_id, text: other.title || other.product_id }));
  }
  const send = async (verdict, productId, message) => {
    try {
      await sendFeedback(hit, queryId, verdict, productId);
      box.classList.add("done");
      form.hidden = true;
      toast(message);
    } catch (err) {
      showError(err.message, "Feedback failed:");
    }
  };
  yes.addEventListener("click", () => send("correct", hit.product_id, `Thanks! Saved your photo as ${title}.`));
  no.addEventListener("click", () => {
    form.hidden = !form.hidden;
    no.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) choice.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const productId = typed.value.trim() || choice.value;
    if (!productId) {
      send("wrong", hit.product_id, `Thanks! Noted that it is not ${title}.`);
      return;
    }
    const name = choice.selectedOptions[0] && choice.value === productId ? choice.selectedOptions[0].textContent : productId;
    send("actually", productId, `Thanks! Saved your photo as ${name}.`);
  });
  wrong.addEventListener("click", () => send("wrong", hit.product_id, `Thanks! Noted that it is not ${title}.`));
}

function renderCard(hit, results, queryId, own) {
  const card = template.content.firstElementChild.cloneNode(true);
  const title = hit.title || hit.product_id || "Untitled";
  card.dataset.productId = hit.product_id ?? "";
  card.querySelector(".rank").textContent = `#${hit.rank ?? ""}`;
  const media = card.querySelector(".card-media");
  const img = card.querySelector("[data-testid=result-image]");
  const matched = hit.image_url || (/^https?:/.test(hit.image || "") ? hit.image : null);
  const ownUrl = (own.get(hit.collection || select.value) || new Map()).get(hit.product_id) || null;
  const src = ownUrl || matched;
  if (ownUrl && matched && ownUrl !== matched) {
    const figure = card.querySelector(".matched");
    const small = figure.querySelector("img");
    small.src = matched;
    small.alt = `The image of ${title} that matched your photo`;
    small.addEventListener("error", () => figure.remove());
    figure.hidden = false;
  }
  if (src) {
    img.src = src;
    img.alt = title;
    img.addEventListener("error", () => {
      img.remove();
      placeholder(media, title);
    });
  } else {
    img.remove();
    placeholder(media, title);
  }
  card.querySelector(".card-title").textContent = title;
  card.querySelector(".card-title").title = title;
  const meta = card.querySelector(".meta");
  const metadata = hit.metadata && typeof hit.metadata === "object" ? hit.metadata : {};
  for (const [key, value] of metaEntries(metadata)) {
    meta.append(el("div", { class: `meta-item meta-${key}` }, el("dt", { text: label(key) }), el("dd", { text: String(value) })));
  }
  if (select.value === ALL && hit.collection) {
    meta.append(el("div", { class: "meta-item meta-collection" }, el("dt", { text: "Collection" }), el("dd", { text: hit.collection })));
  }
  card.classList.toggle("strong", showScore(card, hit));
  wireFeedback(card, hit, results, queryId);
  return card;
}

function renderResults(results, queryId, own) {
  resultsList.replaceChildren(...results.map((hit) => renderCard(hit, results, queryId, own)));
  resultsSection.hidden = results.length === 0;
}

// -- input wiring ------------------------------------------------------------------------

function onPicked(input) {
  const file = input.files && input.files[0];
  if (file) search({ file });
  input.value = "";
}

// A file the browser cannot draw still goes to the API, which says what is wrong with it.
preview.addEventListener("error", () => {
  if (!preview.getAttribute("src")) return;
  preview.hidden = true;
  thumb.classList.add("broken");
});

fileInput.addEventListener("change", () => onPicked(fileInput));
cameraInput.addEventListener("change", () => onPicked(cameraInput));
select.addEventListener("change", onCollectionChange);
topK.addEventListener("change", () => {
  const text = textQuery.value.trim();
  if (!querySection.hidden && preview.hidden && text) search({ text });
});

textForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textQuery.value.trim();
  if (text) search({ text });
});

dropZone.addEventListener("keydown", (event) => {
  if (event.target === dropZone && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault();
    fileInput.click();
  }
});

let dragDepth = 0;
const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!hasFiles(event)) return;
  dragDepth += 1;
  dropZone.classList.add("dragging");
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) dropZone.classList.remove("dragging");
});
window.addEventListener("dragover", (event) => {
  if (hasFiles(event)) event.preventDefault();
});
window.addEventListener("drop", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  dropZone.classList.remove("dragging");
  const file = imageFrom(event.dataTransfer.files);
  if (file) search({ file });
  else showError("Drop an image file (JPEG, PNG, WebP…).", "Not an image:");
});

document.addEventListener("paste", (event) => {
  const file = imageFrom(event.clipboardData?.files) || imageFrom(event.clipboardData?.items);
  if (!file) return;
  event.preventDefault();
  search({ file });
});

initErrorBanner();
loadCollections();
