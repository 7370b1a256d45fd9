// The duplicates page: review groups, change the keeper, accept; keyboard first. Plain JavaScript.
"use strict";
const PAGE = Number(new URLSearchParams(location.search).get("limit")) || 10;  // ?limit=N: groups a page
const state = { groups: [], current: 0, cursors: [null], page: 0, next: null, total: 0 };

function size(bytes) {
  if (bytes == null) return "";
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(0)} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}

function card(group, image, index) {
  const figure = document.createElement("figure");
  figure.className = "card member";
  figure.dataset.id = image.id;
  if (group.keep.includes(image.id)) figure.classList.add("keep");
  if (image.deleted) figure.classList.add("deleted");
  const img = document.createElement("img");
  authorizedSrc(image.thumbnail_url).then((src) => { img.src = src; });
  img.alt = image.source || image.id;
  img.addEventListener("click", () => { state.current = state.groups.indexOf(group); choose(index); });
  const caption = document.createElement("figcaption");
  const badge = image.deleted ? "deleted" : group.keep.includes(image.id) ? "keep" : "";
  caption.innerHTML = `<div class="score">${index + 1}. <span class="badge">${badge}</span>
    ${image.edited ? '<span class="edited" title="another member contains it">edited</span>' : ""}</div>`;
  const facts = document.createElement("div");
  facts.className = "label";
  facts.textContent = `${image.width}×${image.height} · ${size(image.size_bytes)} · ${
    new Date(image.created_at * 1000).toLocaleDateString()}`;
  const source = document.createElement("div");
  source.className = "label";
  source.textContent = (image.source || "").split("/").pop();
  source.title = image.source || "";
  caption.append(facts, source);
  figure.append(img, caption);
  return figure;
}

function render() {
  const box = $("groups");
  box.replaceChildren(...state.groups.map((group, n) => {
    const row = document.createElement("article");
    row.className = `group ${group.status}` + (n === state.current ? " current" : "");
    row.dataset.id = group.group_id;
    const title = document.createElement("h3");
    title.textContent = `${group.tier} · ${group.images.length} images · ${group.status}`;
    const strip = document.createElement("div");
    strip.className = "strip";
    strip.append(...group.images.map((image, i) => card(group, image, i)));
    row.append(title, strip);
    row.addEventListener("click", () => { state.current = n; render(); });
    return row;
  }));
  $("page").textContent = state.total ? `page ${state.page + 1} · ${state.total} groups` : "no groups";
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = !state.next;
  const current = box.querySelector(".group.current");
  if (current) current.scrollIntoView({ block: "nearest" });
}

async function load(page = state.page) {
  try {
    const params = new URLSearchParams({ limit: PAGE });
    if ($("tier").value) params.set("tier", $("tier").value);
    if ($("status").value) params.set("status", $("status").value);
    if (state.cursors[page]) params.set("cursor", state.cursors[page]);
    const data = await call(`/duplicates?${params}`);
    Object.assign(state, { groups: data.groups, next: data.next_cursor, total: data.total, page });
    state.cursors[page + 1] = data.next_cursor;
    state.current = Math.min(state.current, Math.max(0, state.groups.length - 1));
    $("summary").textContent = `${data.total} groups`;
    if ($("message").className === "error") say("");  // e.g. the 401 before a token was typed
    render();
  } catch (error) {
    say(error.message, true);
  }
}

function choose(index) {
  const group = state.groups[state.current];
  if (!group || index < 0 || index >= group.images.length || group.images[index].deleted) return;
  group.keep = [group.images[index].id];
  render();
}

function step(delta) {
  const group = state.groups[state.current];
  if (!group) return;
  const at = group.images.findIndex((im) => group.keep.includes(im.id));
  const n = group.images.length;
  for (let i = 1; i <= n; i++) {
    const next = (at + delta * i + n * n) % n;
    if (!group.images[next].deleted) return choose(next);
  }
}

async function accept() {
  const group = state.groups[state.current];
  if (!group) return;
  try {
    const body = { keep: group.keep, delete_others: $("delete-others").checked };
    const done = await call(`/duplicates/${group.group_id}/resolve`, {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    state.groups[state.current] = done;
    const removed = done.images.filter((im) => im.deleted && !done.keep.includes(im.id)).length;
    say(`Kept ${done.keep.length} of ${done.images.length}` + (removed ? `, deleted ${removed}.` : "."));
    const next = state.groups.findIndex((g, n) => n > state.current && g.status === "open");
    if (next >= 0) state.current = next;
    render();
  } catch (error) {
    say(error.message, true);
  }
}

async function scan() {
  try {
    const { job_id } = await call("/duplicates/scan", { method: "POST", body: "{}",
                                                          headers: { "Content-Type": "application/json" } });
    const bar = $("scan-progress");
    bar.hidden = false;
    say("Scanning…");
    for (;;) {
      const job = await call(`/jobs/${job_id}`);
      bar.max = job.total || 1;
      bar.value = job.done + job.failed;
      if (job.state === "done" || job.state === "failed") {
        bar.hidden = true;
        say(job.state === "done" ? "Scan finished." : `Scan failed: ${(job.errors.at(-1) || {}).error}`, job.state !== "done");
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    state.cursors = [null];
    load(0);
  } catch (error) {
    say(error.message, true);
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target.matches("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const moves = {
    j: () => { state.current = Math.min(state.current + 1, state.groups.length - 1); render(); },
    k: () => { state.current = Math.max(state.current - 1, 0); render(); },
    ArrowRight: () => step(1), ArrowLeft: () => step(-1), l: () => step(1), h: () => step(-1),
    a: accept, Enter: accept,
    n: () => { if (state.next) { state.current = 0; load(state.page + 1); } },
    p: () => { if (state.page > 0) { state.current = 0; load(state.page - 1); } },
  };
  const action = /^[1-9]$/.test(event.key) ? () => choose(Number(event.key) - 1) : moves[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});
$("tier").addEventListener("change", () => { state.cursors = [null]; load(0); });
$("status").addEventListener("change", () => { state.cursors = [null]; load(0); });
$("next-page").addEventListener("click", () => { state.current = 0; load(state.page + 1); });
$("prev-page").addEventListener("click", () => { state.current = 0; load(state.page - 1); });
$("scan-button").addEventListener("click", scan);
$("token").addEventListener("change", () => { state.cursors = [null]; load(0); });
if (document.body.dataset.tokenRequired === "true" && !headers().Authorization) {
  say("This server needs a token: enter it above to see the groups.", true);
} else {
  load(0);
}
