// Request captures (routing.yaml `capture:`): the last captured exchanges, bodies redacted.
//   /v1/captures        the list, newest first             every 3 s while the page is visible
//   /v1/captures/{id}   one exchange, when its row is clicked
// The card stays hidden while capture is off. The admin key is the one dashboard.js asked for.

import { duration, el } from "./charts.js";

const KEY_STORAGE = "turnout.adminKey";
const state = { selected: null, timer: null };

async function fetchJson(path) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  // 401/403: dashboard.js asks for the key; the next poll uses it.
  if (!response.ok) return null;
  return response.json();
}

function statusText(entry) {
  if (entry.status === null) return entry.done ? "–" : "running";
  return String(entry.status);
}

function renderList(answer) {
  const card = document.getElementById("captures-card");
  card.hidden = !answer.enabled;
  if (!answer.enabled) return;
  document.getElementById("captures-empty").hidden = answer.data.length > 0;
  document.querySelector("#captures tbody").replaceChildren(
    ...answer.data.map((c) =>
      el(
        "tr",
        { class: c.id === state.selected ? "selected" : "", "data-id": c.id, onclick: () => select(c.id), title: c.note || null },
        el("td", { class: "mono muted", text: new Date(c.ts * 1000).toLocaleTimeString([], { hour12: false }) }),
        el("td", { class: "strong", text: c.model }),
        el("td", { class: "muted", text: c.key_id || c.agent_id }),
        el("td", { class: "muted", text: `${c.path}${c.stream ? " · stream" : ""}` }),
        el("td", { class: "capture-status", text: statusText(c) }),
        el("td", { class: "num", text: `${c.request_bytes} → ${c.response_bytes} B` }),
        el("td", { class: "num", text: duration(c.duration_ms) }),
        el("td", { class: "mono muted small", text: c.request_id.slice(0, 12), title: c.request_id }),
      ),
    ),
  );
}

function half(title, part) {
  const headers = Object.entries(part.headers).map(([k, v]) => `${k}: ${v}`).join("\n");
  const cut = part.truncated ? " (cut at capture.max_bytes)" : "";
  return el(
    "div",
    { class: "capture-half" },
    el("h3", { text: `${title}${cut}` }),
    el("pre", { class: "capture-headers", text: headers }),
    el("pre", { class: "capture-body", text: part.body }),
  );
}

async function select(id) {
  state.selected = id;
  for (const row of document.querySelectorAll("#captures tbody tr")) row.classList.toggle("selected", row.dataset.id === String(id));
  const detail = document.getElementById("capture-detail");
  const entry = await fetchJson(`/v1/captures/${id}`);
  if (entry === null) {
    detail.replaceChildren(el("div", { class: "muted small", text: "This capture is no longer kept." }));
  } else {
    detail.replaceChildren(half("Request", entry.request), half(`Response ${statusText(entry)}`, entry.response));
  }
  detail.hidden = false;
}

async function refresh() {
  try {
    const answer = await fetchJson("/v1/captures");
    if (answer !== null) renderList(answer);
  } catch {
    // Unreachable gateway: dashboard.js says so in its connection pill.
  }
  state.timer = setTimeout(refresh, document.hidden ? 15000 : 3000);
}

refresh();
