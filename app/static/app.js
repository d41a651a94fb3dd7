// The xmr search page: text and/or an image (weighted), "not" words, keyword/hybrid ranking, a
// score cutoff, a capture-date range, "more/less like this", near-duplicates, upload. The grid
// shows thumbnails; a click opens the original. The URL holds the query, so a
// search can be shared and the back button goes back. Plain JavaScript against the public HTTP
// API; no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { objectUrls: [], image: null, steer: [] }; // steer: [{ id, weight }]
const LESS_WEIGHT = -0.5;
const NOT_WEIGHT = -0.5;

function apiKey() { return localStorage.getItem("xmr-api-key") || ""; }
function headers() { return apiKey() ? { "X-API-Key": apiKey() } : {}; }
function target() { return document.querySelector("input[name=target]:checked").value; }
function mode() { return document.querySelector("input[name=mode]:checked").value; }
function minScore() { const v = parseFloat($("min-score").value); return v > 0 ? v : null; }
function imageWeight() { return parseFloat($("image-weight").value) || 1; }
function collection() { return localStorage.getItem("xmr-collection") || "default"; }
// the routes of the chosen collection; `default` keeps the plain /v1 routes
function base() {
  return collection() === "default" ? "/v1" : `/v1/collections/${encodeURIComponent(collection())}`;
}
function k() { return Math.max(1, Math.min(200, parseInt($("k").value, 10) || 24)); }
// the capture-date range as a metadata filter on exif.taken_at (both ends are whole days)
function dateFilter() {
  const range = {};
  if ($("taken-from").value) range.gte = $("taken-from").value;
  if ($("taken-to").value) range.lte = $("taken-to").value;
  return Object.keys(range).length ? { "exif.taken_at": range } : null;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}
// a search the user has since replaced was aborted: its answer must not overwrite the newer one
const failed = (e) => { if (e.name !== "AbortError") setStatus(e.message, true); };

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response;
}

// -- the query in the URL ---------------------------------------------------------------------
function queryParams() {
  const params = new URLSearchParams();
  const text = $("query").value.trim();
  if (text) params.set("q", text);
  const not = $("not").value.trim();
  if (not) params.set("not", not);
  params.set("target", target());
  if (mode() !== "vector") params.set("mode", mode());
  if (minScore() !== null) params.set("min_score", minScore());
  if (k() !== 24) params.set("k", k());
  if ($("taken-from").value) params.set("from", $("taken-from").value);
  if ($("taken-to").value) params.set("to", $("taken-to").value);
  if (state.steer.length) params.set("items", state.steer.map((s) => `${s.weight < 0 ? "-" : ""}${s.id}`).join(","));
  return params;
}

function remember(params) {
  const url = `${location.pathname}?${params}`;
  if (url !== `${location.pathname}${location.search}`) history.pushState(null, "", url);
}

function restore() {
  const params = new URLSearchParams(location.search);
  $("query").value = params.get("q") || "";
  $("not").value = params.get("not") || "";
  const wantedTarget = params.get("target") || "images";
  document.querySelector(`input[name=target][value=${wantedTarget === "texts" ? "texts" : "images"}]`).checked = true;
  const wantedMode = ["keyword", "hybrid"].includes(params.get("mode")) ? params.get("mode") : "vector";
  document.querySelector(`input[name=mode][value=${wantedMode}]`).checked = true;
  $("min-score").value = params.get("min_score") || "0";
  showMinScore();
  if (params.get("k")) $("k").value = params.get("k");
  $("taken-from").value = params.get("from") || "";
  $("taken-to").value = params.get("to") || "";
  state.steer = (params.get("items") || "").split(",").filter(Boolean).map((entry) => (
    entry.startsWith("-") ? { id: entry.slice(1), weight: LESS_WEIGHT } : { id: entry, weight: 1 }
  ));
  showSteering();
  if (params.get("view") === "duplicates") {
    $("threshold").value = params.get("threshold") || "0.95";
    openDuplicates(false);
    findDuplicates(false).catch(failed);
  } else if (params.get("q") || state.steer.length) {
    closeDuplicates();
    search(false).catch(failed);
  }
}

// -- searching --------------------------------------------------------------------------------
// Only the latest search may show its results: starting one aborts the one still in flight, and
// an answer that arrives after it was replaced is dropped, so a slow earlier answer (a cutoff, the
// page before going back) never overwrites a newer one.
let inFlight = null;
function replaceInFlight() {
  if (inFlight) inFlight.abort();
  inFlight = new AbortController();
  return inFlight.signal;
}

async function latestJson(path, signal, options = {}) {
  const body = await (await api(path, { ...options, signal })).json();
  if (signal.aborted) throw new DOMException("replaced by a newer search", "AbortError");
  return body;
}

// One text alone goes to GET /search/text (mode, cutoff); one item alone to /similar; anything
// combined (an image, "not" words, items to steer by) is one POST /v1/search.
async function search(push = true) {
  const text = $("query").value.trim();
  const not = $("not").value.trim();
  if (!text && !state.image && !state.steer.length) { setStatus("type something or drop an image", true); return; }
  if (push) remember(queryParams());
  closeDuplicates();
  if (text && !not && !state.image && !state.steer.length) return searchText(text);
  if (!text && !not && !state.image && state.steer.length === 1 && state.steer[0].weight > 0) {
    return similarTo(state.steer[0].id);
  }
  return searchComposite(text, not);
}

async function searchText(query) {
  const params = new URLSearchParams({ q: query, k: k(), target: target(), mode: mode() });
  if (minScore() !== null) params.set("min_score", minScore());
  if (dateFilter()) params.set("filter", JSON.stringify(dateFilter()));
  setStatus(`Searching ${target()} for “${query}”…`);
  const body = await latestJson(`${base()}/search/text?${params}`, replaceInFlight());
  show(body, `“${query}”`);
}

async function similarTo(id) {
  // by the item's stored vector: no upload, no model call
  const params = new URLSearchParams({ k: k(), target: target() });
  if (minScore() !== null) params.set("min_score", minScore());
  if (dateFilter()) params.set("filter", JSON.stringify(dateFilter()));
  setStatus(`Searching ${target()} like ${id}…`);
  const path = `${base()}/items/${encodeURIComponent(id)}/similar?${params}`;
  const body = await latestJson(path, replaceInFlight());
  show(body, `items like ${id}`);
}

function compositeRequest(text, not) {
  const query = [];
  if (text) query.push({ text, weight: 1 });
  if (state.image) query.push({ image_file: 0, weight: imageWeight() });
  if (not) query.push({ text: not, weight: NOT_WEIGHT });
  state.steer.forEach((s) => query.push({ item: s.id, weight: s.weight }));
  const request = { query, target: target(), k: k(), mode: mode() };
  if (minScore() !== null) request.min_score = minScore();
  if (dateFilter()) request.filter = dateFilter();
  return request;
}

async function searchComposite(text, not) {
  const request = compositeRequest(text, not);
  const form = new FormData();
  form.append("request", JSON.stringify(request));
  if (state.image) form.append("files", state.image, state.image.name || "query");
  setStatus(`Searching ${target()}…`);
  const body = await latestJson(`${base()}/search`, replaceInFlight(), { method: "POST", body: form });
  const parts = [text && `“${text}”`, state.image && "the image", not && `not “${not}”`,
    state.steer.length && `${state.steer.length} items`].filter(Boolean);
  show(body, parts.join(" + "));
}

async function imageUrl(contentUrl) {
  if (!apiKey()) return contentUrl; // the browser may fetch and cache it directly
  const blob = await (await api(contentUrl)).blob();
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

function releaseImages() {
  state.objectUrls.forEach(URL.revokeObjectURL);
  state.objectUrls = [];
}

function show(body, what) {
  releaseImages();
  $("results").replaceChildren(...body.results.map(card));
  const cut = minScore() !== null ? ` at or above ${minScore()}` : "";
  setStatus(`${body.results.length} results for ${what}${cut} in ${body.took_ms.toFixed(1)} ms`);
}

function thumbnail(hit, described) {
  const img = document.createElement("img");
  img.alt = hit.id;
  img.loading = "lazy";
  // the small rendition; the original only when the picture is opened
  imageUrl(hit.thumbnail_url || hit.content_url).then((url) => { img.src = url; }).catch(failed);
  img.addEventListener("click", () => openDetails(described, hit.content_url));
  return img;
}

// the day a photo was taken, as its EXIF says (local time there)
function takenOn(hit) {
  const taken = hit.metadata?.exif?.taken_at;
  return typeof taken === "string" ? taken.slice(0, 10) : "";
}

function button(className, label, onClick) {
  const b = document.createElement("button");
  b.className = `secondary ${className}`;
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function card(hit) {
  const item = document.createElement("article");
  item.className = `hit ${hit.kind}`;
  item.dataset.id = hit.id;
  const shown = { id: hit.id, kind: hit.kind, score: hit.score, metadata: hit.metadata };
  if (hit.vector_score !== null && hit.vector_score !== undefined) {
    Object.assign(shown, { vector_score: hit.vector_score, keyword_score: hit.keyword_score });
  }
  const described = JSON.stringify(shown, null, 2);
  item.title = described;
  if (hit.kind === "image") {
    item.append(thumbnail(hit, described));
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
  id.title = hit.id;
  const facts = document.createElement("div");
  facts.className = "facts";
  facts.append(score, id);
  if (takenOn(hit)) {
    const taken = document.createElement("time");
    taken.className = "taken";
    taken.dateTime = takenOn(hit);
    taken.textContent = takenOn(hit);
    facts.append(taken);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(
    button("more-like-this", "more like this", () => moreLikeThis(hit).catch(failed)),
    button("less-like-this", "less like this", () => lessLikeThis(hit).catch(failed)));
  meta.append(facts, actions);
  item.append(meta);
  return item;
}

async function moreLikeThis(hit) {
  // a fresh query: this item alone, among items of its own kind
  $("query").value = "";
  $("not").value = "";
  clearQueryImage();
  document.querySelector(`input[name=target][value=${hit.kind === "image" ? "images" : "texts"}]`).checked = true;
  state.steer = [{ id: hit.id, weight: 1 }];
  showSteering();
  await search();
}

async function lessLikeThis(hit) {
  // the query as it is, pushed away from this item
  state.steer = state.steer.filter((s) => s.id !== hit.id).concat([{ id: hit.id, weight: LESS_WEIGHT }]);
  showSteering();
  await search();
}

function showSteering() {
  $("steering").hidden = !state.steer.length;
  $("steering-items").textContent = state.steer.map((s) => `${s.weight > 0 ? "more" : "less"} like ${s.id}`).join(", ");
}

function openDetails(text, originalUrl = null) {
  $("details-body").textContent = text;
  const img = $("details-image");
  img.hidden = !originalUrl;
  img.removeAttribute("src");
  if (originalUrl) imageUrl(originalUrl).then((url) => { img.src = url; }).catch(failed);
  $("details").showModal();
}

// -- the query image ----------------------------------------------------------------------------
function preview(file) {
  const img = $("query-preview");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("image-weight-label").hidden = false;
  $("query-image-clear").hidden = false;
}

function clearQueryImage() {
  state.image = null;
  $("query-preview").hidden = true;
  $("image-weight-label").hidden = true;
  $("query-image-clear").hidden = true;
}

// HEIC and AVIF files often come without a type (the browser does not know them)
const IMAGE_NAME = /\.(jpe?g|png|webp|gif|bmp|tiff?|heic|heif|avif)$/i;
const isImage = (file) => file.type.startsWith("image/") || IMAGE_NAME.test(file.name);

function useQueryImage(file) {
  if (!file) return;
  if (!isImage(file)) { setStatus(`${file.name} is not an image`, true); return; }
  state.image = file;
  preview(file);
  search().catch(failed);
}

function showMinScore() {
  $("min-score-value").textContent = minScore() === null ? "off" : minScore().toFixed(2);
}

// -- near-duplicates ----------------------------------------------------------------------------
function openDuplicates(push = true) {
  $("duplicates").hidden = false;
  $("results").replaceChildren();
  if (push) remember(new URLSearchParams({ view: "duplicates", threshold: $("threshold").value }));
}

function closeDuplicates() {
  $("duplicates").hidden = true;
  $("groups").replaceChildren();
}

async function findDuplicates(push = true) {
  const threshold = $("threshold").value;
  if (push) remember(new URLSearchParams({ view: "duplicates", threshold }));
  const params = new URLSearchParams({ threshold, target: "images", limit: 200 });
  setStatus(`Looking for images at least ${threshold} alike…`);
  const signal = replaceInFlight();
  let body = await latestJson(`${base()}/duplicates?${params}`, signal);
  if (body.job_id) body = await followJob(body.job_id, signal);
  releaseImages();
  $("groups").replaceChildren(...body.groups.map(duplicateGroup));
  setStatus(`${body.total_groups} groups of near-duplicates (similarity ≥ ${threshold})`);
}

async function followJob(jobId, signal) {
  for (;;) {
    const job = await latestJson(`/v1/jobs/${encodeURIComponent(jobId)}`, signal);
    if (job.status === "done") return job.result;
    if (!["queued", "running"].includes(job.status)) throw new Error(`the job ${job.status}: ${job.error || ""}`);
    setStatus(`Looking for duplicates: ${job.done} of ${job.total || "?"} images…`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function duplicateGroup(group) {
  const row = document.createElement("div");
  row.className = "group";
  row.dataset.ids = group.ids.join(",");
  const caption = document.createElement("p");
  caption.textContent = `${group.ids.length} images, least similarity ${group.min_score.toFixed(3)}`;
  const strip = document.createElement("div");
  strip.className = "strip";
  group.ids.forEach((id) => {
    const hit = { id, content_url: `${base()}/items/${encodeURIComponent(id)}/content` };
    const figure = document.createElement("figure");
    const label = document.createElement("figcaption");
    label.textContent = id;
    figure.append(thumbnail(hit, id), label);
    strip.append(figure);
  });
  row.append(caption, strip);
  return row;
}

// -- wiring ------------------------------------------------------------------------------------
$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search().catch(failed);
});
$("not").addEventListener("keydown", (event) => {
  if (event.key === "Enter") { event.preventDefault(); search().catch(failed); }
});
document.querySelectorAll("input[name=mode]").forEach((radio) => radio.addEventListener("change", () => {
  if ($("query").value.trim()) search().catch(failed);
}));
$("min-score").addEventListener("input", showMinScore);
$("min-score").addEventListener("change", () => {
  if ($("query").value.trim() || state.image || state.steer.length) search().catch(failed);
});
$("image-weight").addEventListener("input", () => { $("image-weight-value").textContent = imageWeight().toFixed(1); });
$("image-weight").addEventListener("change", () => search().catch(failed));
$("query-image-clear").addEventListener("click", clearQueryImage);
$("steering-clear").addEventListener("click", () => { state.steer = []; showSteering(); });
$("duplicates-open").addEventListener("click", () => openDuplicates());
$("duplicates-find").addEventListener("click", () => findDuplicates().catch(failed));
window.addEventListener("popstate", restore);

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
  const file = [...(event.clipboardData?.files || [])].find(isImage);
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
  } catch (e) { failed(e); }
});

async function loadCollections() {
  const picker = $("collection");
  let listed = [];
  try {
    listed = (await (await api("/v1/collections")).json()).collections;
  } catch (e) { failed(e); return; }
  if (!listed.some((c) => c.name === collection())) localStorage.removeItem("xmr-collection");
  picker.replaceChildren(...listed.map((c) => {
    const option = document.createElement("option");
    option.value = c.name;
    // the name a person gave it and the model's name; the full model id on hover
    option.textContent = `${c.name} · ${c.model}${c.status === "reindexing" ? " (re-embedding)" : ""}`;
    option.title = c.model_id;
    option.selected = c.name === collection();
    return option;
  }));
}

$("collection").addEventListener("change", (event) => {
  localStorage.setItem("xmr-collection", event.target.value);
  $("results").replaceChildren();
  setStatus(`Searching in ${event.target.value}`);
});

["taken-from", "taken-to"].forEach((id) => $(id).addEventListener("change", () => {
  if ($("query").value.trim() || state.image || state.steer.length) search().catch(failed);
}));

$("api-key").value = apiKey();
$("api-key").addEventListener("change", (event) => {
  localStorage.setItem("xmr-api-key", event.target.value.trim());
  loadCollections();
});
loadCollections();
restore();
