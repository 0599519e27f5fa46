// The catalog page: every collection with its model, counts, last sync and failed images.

import { api, el, formatCount, formatDate, initErrorBanner, ROOT, showError, timeAgo } from "./common.js";

const list = document.getElementById("collections");
const statusLine = document.getElementById("status");
const template = document.getElementById("collection-template");

/** The failed images in a collection's info, whatever the list is called. */
function failedList(info) {
  for (const key of ["failed", "failures", "failed_images_list", "failed_images"]) {
    if (Array.isArray(info[key])) return info[key];
  }
  return [];
}

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

function renderCollection(summary, info) {
  const node = template.content.firstElementChild.cloneNode(true);
  const data = { ...summary, ...info };
  node.dataset.collection = data.name;
  node.querySelector("h2").textContent = data.name;
  const link = node.querySelector("[data-role=search-link]");
  link.href = `${ROOT}/?collection=${encodeURIComponent(data.name)}`;
  link.setAttribute("aria-label", `Search ${data.name}`);
  const model = [data.model, data.dim && `${data.dim}-d`, data.index, data.store].filter(Boolean).join(" · ");
  node.querySelector(".model").textContent = model;
  node.querySelector("[data-testid=collection-products]").textContent = formatCount(data.products);
  node.querySelector("[data-testid=collection-images]").textContent = formatCount(data.images);
  const failed = failedList(info);
  const failedCount = typeof summary.failed_images === "number" ? summary.failed_images : failed.length;
  const failedCell = node.querySelector("[data-testid=collection-failed]");
  failedCell.textContent = formatCount(failedCount);
  failedCell.classList.toggle("bad", failedCount > 0);
  const sync = lastSyncText(data.last_sync);
  const syncCell = node.querySelector("[data-testid=collection-last-sync]");
  syncCell.textContent = sync.text;
  if (sync.note) syncCell.append(el("small", { text: sync.note }));
  if (sync.title) syncCell.title = sync.title;

  if (failed.length) {
    const details = node.querySelector("details");
    details.hidden = false;
    details.querySelector("summary").textContent =
      `${failed.length} failed ${failed.length === 1 ? "image" : "images"}`;
    const body = details.querySelector("tbody");
    for (const f of failed) {
      body.append(
        el(
          "tr",
          { "data-testid": "failed-image" },
          el("td", { text: f.product_id ?? "" }),
          el("td", { class: "ref", text: f.ref ?? f.image ?? "", title: f.ref ?? "" }),
          el("td", { text: f.reason ?? f.error ?? "" }),
        ),
      );
    }
  }
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
  const infos = await Promise.all(
    summaries.map((s) => api(`/v1/collections/${encodeURIComponent(s.name)}`).catch(() => ({}))),
  );
  list.replaceChildren(...summaries.map((s, i) => renderCollection(s, infos[i] || {})));
  const products = summaries.reduce((n, s) => n + (s.products || 0), 0);
  statusLine.textContent = `${summaries.length} ${summaries.length === 1 ? "collection" : "collections"}, ${formatCount(products)} products`;
}

initErrorBanner();
load();
