// The catalog page: every collection with its model, counts, calibration, last sync report,
// failed images, a searchable paged product list, and "Sync now" for collections with a source.

import { api, el, formatCount, formatDate, initErrorBanner, ROOT, showError, timeAgo } from "./common.js";

const PAGE_SIZE = 20;
const POLL_MS = 400;
const list = document.getElementById("collections");
const statusLine = document.getElementById("status");
const template = document.getElementById("collection-template");

const path = (name, rest = "") => `/v1/collections/${encodeURIComponent(name)}${rest}`;
const plural = (n, one, many) => `${formatCount(n)} ${n === 1 ? one : many}`;

function lastSyncText(sync) {
  if (!sync) return { text: "Never", note: "", title: "" };
  const when = sync.finished_at ?? sync.at ?? sync.time ?? sync.started_at;
  const changes = [];
  if (typeof sync.added === "number") changes.push(`${formatCount(sync.added)} added`);
  if (typeof sync.removed === "number") changes.push(`${formatCount(sync.removed)} removed`);
  return {
    text: (when != null && timeAgo(when)) || "Done",
    note: changes.join(" · "),
    title: when != null ? formatDate(when) : "",
  };
}

const REPORT_LABELS = {
  finished_at: "Finished",
  seconds: "Took",
  products: "Products",
  added: "Added",
  updated: "Updated",
  removed: "Removed",
  images_embedded: "Images embedded",
  images_failed: "Images failed",
  rejected_rows: "Rejected rows",
};

function reportValue(key, value) {
  if (key === "finished_at" || key.endsWith("_at")) return formatDate(value);
  if (key === "seconds" && typeof value === "number") return `${value.toFixed(1)} s`;
  if (typeof value === "number") return formatCount(value);
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function renderReport(node, sync) {
  const details = node.querySelector("[data-testid=last-sync-report]");
  details.hidden = !sync;
  if (!sync) return;
  const dl = details.querySelector("dl");
  dl.replaceChildren();
  for (const [key, value] of Object.entries(sync)) {
    if (value == null) continue;
    const label = REPORT_LABELS[key] || key.replace(/_/g, " ").replace(/^\w/, (c) => c.toUpperCase());
    dl.append(el("div", { "data-key": key }, el("dt", { text: label }), el("dd", { text: reportValue(key, value) })));
  }
}

function renderCalibration(node, name, info) {
  const cell = node.querySelector("[data-testid=collection-calibration]");
  const hint = node.querySelector("[data-testid=calibration-hint]");
  cell.textContent = info.calibrated ? "Calibrated" : "Not calibrated";
  cell.classList.toggle("bad", !info.calibrated);
  hint.hidden = Boolean(info.calibrated);
  if (info.calibrated) return;
  hint.textContent =
    "Results show similarity, not a probability. A sync fits a calibration from the catalog's own images (products with two or more images help); confirmed shopper photos (“Is this it? Yes”) calibrate it too.";
  api(path(name, "/calibration"))
    .then((c) => {
      hint.textContent += ` Now ${plural(c.products_with_several_images, "product has", "products have")} 2+ images and ${formatCount(c.confirmed_photos)} of ${c.confirmed_needed} photos are confirmed.`;
    })
    .catch(() => {});
}

function renderFailed(node, info) {
  const failed = Array.isArray(info.failures) ? info.failures : [];
  const details = node.querySelector("details.failed");
  details.hidden = failed.length === 0;
  if (!failed.length) return;
  details.querySelector("summary").textContent =
    `${failed.length} failed ${failed.length === 1 ? "image" : "images"}`;
  details.querySelector("tbody").replaceChildren(
    ...failed.map((f) =>
      el(
        "tr",
        { "data-testid": "failed-image" },
        el("td", { text: f.product_id ?? "" }),
        el("td", { class: "ref", text: f.ref ?? f.image ?? "", title: f.ref ?? "" }),
        el("td", { text: f.reason ?? f.error ?? "" }),
      ),
    ),
  );
}

function renderInfo(node, info) {
  const model = [info.model, info.dim && `${info.dim}-d`, info.index, info.store].filter(Boolean).join(" · ");
  node.querySelector(".model").textContent = model;
  node.querySelector("[data-testid=collection-products]").textContent = formatCount(info.products);
  node.querySelector("[data-testid=collection-images]").textContent = formatCount(info.images);
  node.querySelector("[data-testid=collection-confirmed]").textContent = formatCount(info.confirmed_views ?? 0);
  const failedCell = node.querySelector("[data-testid=collection-failed]");
  failedCell.textContent = formatCount(info.failed_images);
  failedCell.classList.toggle("bad", info.failed_images > 0);
  const sync = lastSyncText(info.last_sync);
  const syncCell = node.querySelector("[data-testid=collection-last-sync]");
  syncCell.textContent = sync.text;
  if (sync.note) syncCell.append(el("small", { text: sync.note }));
  syncCell.title = sync.title;
  renderReport(node, info.last_sync);
  if (typeof info.calibrated === "boolean") renderCalibration(node, info.name, info);
  renderFailed(node, info);
  node.querySelector("[data-testid=sync-now]").hidden = !info.source;
}

// -- products ----------------------------------------------------------------------------

function productRow(p) {
  const cell = el("td", { class: "thumb" });
  if (p.image_url) {
    const img = el("img", { src: p.image_url, alt: p.title || p.id, loading: "lazy", width: 48, height: 48 });
    img.addEventListener("error", () => img.replaceWith(el("span", { class: "no-thumb", "aria-hidden": "true" })));
    cell.append(img);
  } else {
    cell.append(el("span", { class: "no-thumb", title: "No image loaded" }));
  }
  const num = (n, testid, bad = false) =>
    el("td", { class: `num${bad && n > 0 ? " bad" : ""}`, "data-testid": testid, text: formatCount(n) });
  return el(
    "tr",
    { "data-testid": "product-row", "data-product-id": p.id },
    cell,
    el("td", { "data-testid": "product-title", text: p.title || "" }),
    el("td", { class: "ref", "data-testid": "product-id", text: p.id }),
    num(p.images, "product-images"),
    num(p.failed_images, "product-failed", true),
    num(p.confirmed_photos, "product-confirmed"),
  );
}

function wireProducts(node, name, index) {
  const form = node.querySelector("[data-role=product-search]");
  const input = form.querySelector("input");
  const labelNode = form.querySelector("label");
  input.id = `product-search-${index}`;
  labelNode.htmlFor = input.id;
  labelNode.textContent = `Search the products of ${name} by title or id`;
  const body = node.querySelector("[data-testid=product-table] tbody");
  const prev = node.querySelector("[data-testid=page-prev]");
  const next = node.querySelector("[data-testid=page-next]");
  const pageInfo = node.querySelector("[data-testid=page-info]");
  const view = { search: "", offset: 0, serial: 0 };

  async function show() {
    const serial = ++view.serial;
    const query = new URLSearchParams({ search: view.search, offset: String(view.offset), limit: String(PAGE_SIZE) });
    let page;
    try {
      page = await api(path(name, `/catalog?${query}`));
    } catch (err) {
      showError(err.message, "Could not load the products:");
      return;
    }
    if (serial !== view.serial) return;
    body.replaceChildren(...page.products.map(productRow));
    if (page.products.length === 0) {
      body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: view.search ? `No product matches “${view.search}”.` : "No products yet." })));
    }
    const first = page.total ? page.offset + 1 : 0;
    const last = page.offset + page.products.length;
    pageInfo.textContent = `${formatCount(first)}–${formatCount(last)} of ${plural(page.total, "product", "products")}`;
    prev.disabled = page.offset === 0;
    next.disabled = last >= page.total;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    view.search = input.value.trim();
    view.offset = 0;
    show();
  });
  input.addEventListener("search", () => {
    if (input.value === "" && view.search) form.requestSubmit();
  });
  prev.addEventListener("click", () => {
    view.offset = Math.max(0, view.offset - PAGE_SIZE);
    show();
  });
  next.addEventListener("click", () => {
    view.offset += PAGE_SIZE;
    show();
  });
  return show;
}

// -- sync --------------------------------------------------------------------------------

function jobText(job) {
  if (job.state === "failed") return `Sync failed: ${job.error || "unknown error"}`;
  if (job.state === "succeeded") {
    const c = job.counts || {};
    const parts = [
      `${formatCount(c.products_added ?? 0)} added`,
      `${formatCount(c.products_updated ?? 0)} updated`,
      `${formatCount(c.products_removed ?? 0)} removed`,
      `${plural(c.images_embedded ?? 0, "image", "images")} embedded`,
    ];
    if (c.images_failed) parts.push(`${plural(c.images_failed, "image", "images")} failed`);
    return `Sync done: ${parts.join(" · ")}`;
  }
  const progress = job.total ? ` ${formatCount(job.done)}/${formatCount(job.total)}` : "";
  return `Syncing… ${job.stage || job.state}${progress}`;
}

function wireSync(node, name, refresh) {
  const button = node.querySelector("[data-testid=sync-now]");
  const line = node.querySelector("[data-testid=sync-status]");
  button.setAttribute("aria-label", `Sync ${name} now from its source`);
  button.addEventListener("click", async () => {
    button.disabled = true;
    line.hidden = false;
    line.className = "sync-status";
    line.textContent = "Starting the sync…";
    try {
      let job = await api(path(name, "/sync"), { method: "POST", headers: { Accept: "application/json" } });
      while (job.state === "queued" || job.state === "running") {
        line.textContent = jobText(job);
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        job = await api(`/v1/jobs/${encodeURIComponent(job.id)}`);
      }
      line.textContent = jobText(job);
      line.classList.add(job.state === "succeeded" ? "good" : "bad");
      line.dataset.state = job.state;
      await refresh();
    } catch (err) {
      line.textContent = `Sync failed: ${err.message}`;
      line.classList.add("bad");
      line.dataset.state = "failed";
    } finally {
      button.disabled = false;
    }
  });
}

// -- collections -------------------------------------------------------------------------

function renderCollection(summary, index) {
  const node = template.content.firstElementChild.cloneNode(true);
  const name = summary.name;
  node.dataset.collection = name;
  node.querySelector("h2").textContent = name;
  const link = node.querySelector("[data-role=search-link]");
  link.href = `${ROOT}/?collection=${encodeURIComponent(name)}`;
  link.setAttribute("aria-label", `Search ${name}`);
  renderInfo(node, summary);
  const showProducts = wireProducts(node, name, index);
  const refresh = async () => {
    const info = await api(path(name)).catch(() => null);
    if (info) renderInfo(node, info);
    await showProducts();
  };
  wireSync(node, name, refresh);
  refresh();
  return node;
}

async function load() {
  let summaries;
  try {
    const data = await api("/v1/collections");
    summaries = Array.isArray(data) ? data : (data && data.collections) || [];
  } catch (err) {
    statusLine.textContent = "";
    showError(err.message);
    return;
  }
  if (summaries.length === 0) {
    statusLine.textContent = "No collections yet. Ingest a catalog to create one.";
    return;
  }
  list.replaceChildren(...summaries.map((s, i) => renderCollection(s, i)));
  const products = summaries.reduce((n, s) => n + (s.products || 0), 0);
  statusLine.textContent = `${plural(summaries.length, "collection", "collections")}, ${plural(products, "product", "products")}`;
}

initErrorBanner();
load();
