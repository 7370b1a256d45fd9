// The vsearch page: plain JavaScript against /api/v1, no build step.
"use strict";

function queryBody() {
  const file = $("file").files[0];
  const k = $("k").value || "10";
  if (file) {
    const form = new FormData();
    form.append("file", file);
    form.append("k", k);
    return { body: form };
  }
  const url = $("url").value.trim();
  if (!url) throw new Error("Choose an image file or paste an image URL first.");
  return { body: JSON.stringify({ url, k: Number(k) }), headers: { "Content-Type": "application/json" } };
}

function showResults(data) {
  const grid = $("results");
  grid.replaceChildren();
  $("took").textContent = `${data.results.length} results in ${data.took_ms} ms (index v${data.index_version}), verdict: ${data.verdict}`;
  data.results.forEach((hit, rank) => {
    const card = document.createElement("figure");
    card.className = "card result";
    card.dataset.id = hit.id;
    const img = document.createElement("img");
    authorizedSrc(hit.thumbnail_url).then((src) => { img.src = src; });
    img.alt = hit.label || hit.source || hit.id;
    const link = document.createElement("a");
    link.href = `${api}/images/${hit.id}/content`;
    link.target = "_blank";
    link.addEventListener("click", async (event) => {
      if (!headers().Authorization) return;
      event.preventDefault();
      const src = await authorizedSrc(link.href);
      if (src) window.open(src, "_blank");
    });
    link.append(img);
    const caption = document.createElement("figcaption");
    // Ordered by `match`; the number shown is the cosine similarity; the verdict is tagged.
    const titles = { exact: "the same picture, resized or re-encoded", copy: "an edited copy of this image",
                     similar: "similar content", none: "not close" };
    const verdict = hit.verdict && hit.verdict !== "none"
      ? ` <span class="verdict ${hit.verdict}" title="${titles[hit.verdict]}">${hit.verdict}</span>` : "";
    caption.innerHTML = `<div class="score">#${rank + 1} · ${hit.score.toFixed(3)}${verdict}</div>`;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = hit.label || "";
    label.title = hit.source || "";
    const source = document.createElement("div");
    source.className = "label";
    source.textContent = (hit.source || "").split("/").pop();
    caption.append(label, source);
    card.append(link, caption);
    grid.append(card);
  });
  if (!data.results.length) say("No images indexed yet.");
}

async function search(event) {
  event.preventDefault();
  try {
    const request = queryBody();
    if (!$("file").files[0]) showQuery($("url").value.trim());
    say("Searching…");
    const data = await call("/search", { method: "POST", ...request });
    say("");
    showResults(data);
  } catch (error) {
    say(error.message, true);
  }
}

async function addToIndex() {
  try {
    const file = $("file").files[0];
    let request;
    if (file) {
      const form = new FormData();
      form.append("file", file);
      request = { body: form };
    } else {
      const url = $("url").value.trim();
      if (!url) throw new Error("Choose an image file or paste an image URL first.");
      request = { body: JSON.stringify({ url }), headers: { "Content-Type": "application/json" } };
    }
    const data = await call("/images", { method: "POST", ...request });
    say(`Queued as job ${data.job_id.slice(0, 8)}.`);
    refreshJobs();
  } catch (error) {
    say(error.message, true);
  }
}

function showQuery(src) {
  const box = $("query-preview");
  box.replaceChildren();
  if (!src) return;
  const img = document.createElement("img");
  img.src = src;
  img.alt = "query";
  box.append(img);
}

function preview() {
  const file = $("file").files[0];
  $("drop").querySelector("span").textContent = file ? file.name : dropText;
  if (file) $("url").value = "";  // one query at a time: the file replaces a pasted URL
  showQuery(file ? URL.createObjectURL(file) : null);
}

function urlTyped() {
  if (!$("url").value.trim() || !$("file").files.length) return;
  $("file").value = "";  // ...and a pasted URL replaces the chosen file
  preview();
}

async function refreshJobs() {
  try {
    const { jobs } = await call("/jobs?limit=10");
    const rows = jobs.map((job) => {
      const tr = document.createElement("tr");
      const total = job.total ?? 0;
      const done = job.done + job.failed;
      tr.innerHTML = `<td>${job.job_id.slice(0, 8)}</td><td>${job.kind || ""}</td><td>${job.state}</td>
        <td><progress max="${total || 1}" value="${done}"></progress> ${done}/${job.total ?? "?"}</td>
        <td>${job.failed}</td><td>${new Date(job.created_at * 1000).toLocaleTimeString()}</td>`;
      return tr;
    });
    document.querySelector("#jobs tbody").replaceChildren(...rows);
    const index = await call("/index");
    $("index-state").textContent = `${index.count + index.pending} images · index v${index.version}`;
  } catch (error) {
    $("index-state").textContent = error.message;
  }
}

$("search-form").addEventListener("submit", search);
$("add-button").addEventListener("click", addToIndex);
$("file").addEventListener("change", preview);
$("url").addEventListener("input", urlTyped);
const drop = $("drop");
const dropText = drop.querySelector("span").textContent;
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  $("file").files = e.dataTransfer.files;
  preview();
});
refreshJobs();
setInterval(refreshJobs, 2000);
