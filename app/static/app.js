// The xmr search page: text -> images/texts, image -> texts/images, "more like this", upload.
// Plain JavaScript against the public HTTP API; no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { objectUrls: [] };

function apiKey() { return localStorage.getItem("xmr-api-key") || ""; }
function headers() { return apiKey() ? { "X-API-Key": apiKey() } : {}; }
function target() { return document.querySelector("input[name=target]:checked").value; }
function collection() { return localStorage.getItem("xmr-collection") || "default"; }
// the routes of the chosen collection; `default` keeps the plain /v1 routes
function base() {
  return collection() === "default" ? "/v1" : `/v1/collections/${encodeURIComponent(collection())}`;
}
function k() { return Math.max(1, Math.min(200, parseInt($("k").value, 10) || 24)); }

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response;
}

async function searchText(query) {
  const params = new URLSearchParams({ q: query, k: k(), target: target() });
  setStatus(`Searching ${target()} for “${query}”…`);
  const body = await (await api(`${base()}/search/text?${params}`)).json();
  show(body, `“${query}”`);
}

async function searchImage(blob, what = target() === "images" ? "images" : "texts") {
  const form = new FormData();
  form.append("file", blob, blob.name || "query");
  form.append("k", k());
  form.append("target", what);
  setStatus(`Searching ${what} with an image…`);
  const body = await (await api(`${base()}/search/image`, { method: "POST", body: form })).json();
  show(body, "the image");
}

async function imageUrl(contentUrl) {
  if (!apiKey()) return contentUrl; // the browser may fetch and cache it directly
  const blob = await (await api(contentUrl)).blob();
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

function show(body, what) {
  state.objectUrls.forEach(URL.revokeObjectURL);
  state.objectUrls = [];
  const grid = $("results");
  grid.replaceChildren(...body.results.map(card));
  setStatus(`${body.results.length} results for ${what} in ${body.took_ms.toFixed(1)} ms`);
}

function card(hit) {
  const item = document.createElement("article");
  item.className = `hit ${hit.kind}`;
  item.dataset.id = hit.id;
  const described = JSON.stringify({ id: hit.id, kind: hit.kind, score: hit.score, metadata: hit.metadata }, null, 2);
  item.title = described;
  if (hit.kind === "image") {
    const img = document.createElement("img");
    img.alt = hit.id;
    img.loading = "lazy";
    imageUrl(hit.content_url).then((url) => { img.src = url; }).catch((e) => setStatus(e.message, true));
    img.addEventListener("click", () => openDetails(described));
    item.append(img);
  } else {
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = hit.text;
    text.addEventListener("click", () => openDetails(described));
    item.append(text);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = hit.id;
  meta.append(score, id);
  if (hit.kind === "image") {
    const more = document.createElement("button");
    more.className = "secondary more-like-this";
    more.type = "button";
    more.textContent = "more like this";
    more.addEventListener("click", () => moreLikeThis(hit).catch((e) => setStatus(e.message, true)));
    meta.append(more);
  }
  item.append(meta);
  return item;
}

async function moreLikeThis(hit) {
  // by the item's stored vector: no upload, no model call
  const params = new URLSearchParams({ k: k(), target: "images" });
  setStatus(`Searching images like ${hit.id}…`);
  const body = await (await api(`${base()}/items/${encodeURIComponent(hit.id)}/similar?${params}`)).json();
  show(body, `items like ${hit.id}`);
}

function openDetails(text) {
  $("details-body").textContent = text;
  $("details").showModal();
}

function preview(file) {
  const img = $("query-preview");
  img.src = URL.createObjectURL(file);
  img.hidden = false;
}

function useQueryImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { setStatus(`${file.name} is not an image`, true); return; }
  preview(file);
  searchImage(file).catch((e) => setStatus(e.message, true));
}

$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("query").value.trim();
  if (query) searchText(query).catch((e) => setStatus(e.message, true));
});

$("query-file").addEventListener("change", (event) => useQueryImage(event.target.files[0]));

const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  useQueryImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) useQueryImage(file);
});

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = [...$("upload-files").files];
  if (!files.length) { setStatus("choose images to index first", true); return; }
  const form = new FormData();
  files.forEach((file) => form.append("files", file, file.name));
  form.append("ids", JSON.stringify(files.map((file) => file.name)));
  setStatus(`Indexing ${files.length} images…`);
  try {
    const body = await (await api(`${base()}/images`, { method: "POST", body: form })).json();
    setStatus(`Indexed ${body.ids.length} images: ${body.ids.join(", ")}`);
  } catch (e) { setStatus(e.message, true); }
});

async function loadCollections() {
  const picker = $("collection");
  let listed = [];
  try {
    listed = (await (await api("/v1/collections")).json()).collections;
  } catch (e) { setStatus(e.message, true); return; }
  if (!listed.some((c) => c.name === collection())) localStorage.removeItem("xmr-collection");
  picker.replaceChildren(...listed.map((c) => {
    const option = document.createElement("option");
    option.value = c.name;
    option.textContent = `${c.name} · ${c.model_id}${c.status === "reindexing" ? " (re-embedding)" : ""}`;
    option.selected = c.name === collection();
    return option;
  }));
}

$("collection").addEventListener("change", (event) => {
  localStorage.setItem("xmr-collection", event.target.value);
  $("results").replaceChildren();
  setStatus(`Searching in ${event.target.value}`);
});

$("api-key").value = apiKey();
$("api-key").addEventListener("change", (event) => {
  localStorage.setItem("xmr-api-key", event.target.value.trim());
  loadCollections();
});
loadCollections();
