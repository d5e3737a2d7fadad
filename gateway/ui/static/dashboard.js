// The turnout dashboard: polls the admin API and draws engines, usage charts and live requests.
//   /engine/events            each role's state change as it happens (SSE), when roles exist
//   /engine/status            engines, their states, providers, peers   every 2 s (0.5 s while
//                             swapping and the event stream is down; 10 s while it is up)
//   /v1/requests/recent       the live table, in-flight count, rate-limit refusals   every 2 s
//   /v1/requests/series       the charts and the totals above them (the usage log)   every 5 s
// When the API answers 401/403 the page asks for the admin key and keeps it in sessionStorage.

import { compact, drawChart, drawLegend, duration, durationTick, el } from "./charts.js";
import { renderFleet } from "./fleet.js";

const KEY_STORAGE = "turnout.adminKey";
const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
const PALETTE = ["#4f7cff", "#16b89a", "#f0a020", "#9b6cf0", "#2fb3e0", "#ef6fa0", "#7dba3c", "#8d6e63"];
const RECENT_ROWS = 100;

const state = {
  range: sessionStorage.getItem("turnout.range") || "1h",
  by: sessionStorage.getItem("turnout.by") || "model",
  cursor: 0,
  recent: [],
  colors: { model: new Map(), agent: new Map() }, // stable colours per name, per grouping
  pending: new Map(), // role -> action label while a button's request runs
  fastUntil: 0, // poll engines quickly until then (a swap was asked for)
  engines: null,
  series: null,
  authWaiting: null,
  live: false, // /engine/events is being read: engine changes arrive without polling
  following: false, // the event stream's loop runs (it retries while the stream is down)
  locked: false, // the admin key was asked for and refused: stop polling until one is given
};

// --- the API, with the admin key --------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET" } = {}) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store" });
  } catch (error) {
    setConnection(false, "gateway unreachable");
    throw error;
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 || response.status === 403) {
    const message = body?.error?.message || `HTTP ${response.status}`;
    await askForKey(message, Boolean(key));
    return api(path, { method });
  }
  setConnection(true);
  if (!response.ok && response.status !== 202) {
    throw new ApiError(response.status, body?.error?.message || `HTTP ${response.status}`);
  }
  return body;
}

function askForKey(reason, hadKey, voluntary = false) {
  if (state.authWaiting) return state.authWaiting;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = voluntary
    ? "The key this tab sends to the admin API."
    : hadKey
      ? `The gateway refused that key: ${reason}`
      : "Engines, usage and requests are admin-only on this gateway. Enter its admin key (auth.admin_key in routing.yaml).";
  input.value = "";
  state.authWaiting = new Promise((resolve) => {
    const done = (key) => {
      dialog.removeEventListener("close", onClose);
      state.authWaiting = null;
      if (key) {
        sessionStorage.setItem(KEY_STORAGE, key);
        state.locked = false;
        document.body.classList.remove("locked");
        resolve();
      } else if (voluntary) {
        resolve();
      } else {
        state.locked = true;
        document.body.classList.add("locked");
        // Stays pending: polling stops until a key is given with the header button.
      }
    };
    const onClose = () => done(dialog.returnValue === "ok" ? input.value.trim() : "");
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    input.focus();
  });
  return state.authWaiting;
}

function setConnection(ok, text) {
  const pill = document.getElementById("connection");
  pill.dataset.ok = ok ? "yes" : "no";
  if (!ok) pill.querySelector(".label").textContent = text;
}

// --- polling ------------------------------------------------------------------------------------

function every(task, interval) {
  let timer = null;
  const run = async () => {
    clearTimeout(timer);
    if (!state.locked) {
      try {
        await task();
      } catch (error) {
        if (!(error instanceof TypeError)) console.warn(error);
      }
    }
    timer = setTimeout(run, interval());
  };
  run();
  return run; // call to refresh now
}

const slowWhenHidden = (ms) => () => (document.hidden ? ms * 5 : ms);

// --- engines ------------------------------------------------------------------------------------

const STATE_LABEL = { ready: "ready", starting: "loading", stopping: "stopping", stopped: "stopped", sleeping: "sleeping", failed: "failed" };
const GATEWAY_LABEL = { ready: "ready", loading: "loading", switching: "switching", idle: "idle", failed: "failed" };

async function refreshEngines() {
  const status = await api("/engine/status");
  state.engines = status;
  const pill = document.getElementById("connection");
  pill.dataset.state = status.state;
  const role = status.switching_to || status.role;
  pill.querySelector(".label").textContent = `${GATEWAY_LABEL[status.state] || status.state}${role ? ` · ${role}` : ""}`;
  renderEngines(status);
  renderProviders(status.providers || {});
  renderGpus(status.gpus || []);
  renderFleet(status.peers || {});
  // Only with local roles: without, /engine/events answers 404 and polling is all there is.
  if (!state.following && Object.keys(status.engines || {}).length) followEngineEvents();
}

// --- engine events: state changes as they happen ---------------------------------------------------
// Read with fetch rather than EventSource: EventSource cannot send the admin key (an
// Authorization header), so on a gateway with auth.admin_key it would only ever get 401.

const EVENTS_RETRY_MS = 5000;

async function followEngineEvents() {
  state.following = true;
  while (true) {
    let status = 0;
    if (!state.locked) {
      try {
        status = await readEngineEvents();
      } catch (error) {
        if (!(error instanceof TypeError)) console.warn(error);
      }
    }
    state.live = false;
    if (status === 404) break; // no local roles after all: polling alone
    await new Promise((resolve) => setTimeout(resolve, EVENTS_RETRY_MS));
  }
  state.following = false;
}

// Reads the stream until it ends; answers the HTTP status when it was refused.
async function readEngineEvents() {
  const headers = { Accept: "text/event-stream" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch("/engine/events", { headers, cache: "no-store" });
  if (!response.ok || !response.body) return response.status;
  state.live = true;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let data = [];
  while (true) {
    const { value, done } = await reader.read();
    if (done) return 200;
    const lines = (pending + value).split(/\r\n|\r|\n/);
    pending = lines.pop();
    for (const line of lines) {
      if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      else if (line === "" && data.length) {
        onEngineEvent(JSON.parse(data.join("\n")));
        data = [];
      }
    }
  }
}

// {role, state, stage, subject, text, at}: the row changes now; the rest of the status (pid,
// uptime, what is loaded) follows with one /engine/status read once a burst of events settles.
let eventRefresh = null;
function onEngineEvent(event) {
  const engine = state.engines?.engines?.[event.role];
  if (engine) {
    engine.state = event.state;
    engine.stage_text = event.text;
    renderEngines(state.engines);
  }
  clearTimeout(eventRefresh);
  eventRefresh = setTimeout(() => refreshEnginesNow(), 150);
}

function renderEngines(status) {
  const body = document.querySelector("#engines tbody");
  const names = Object.keys(status.engines || {});
  document.getElementById("engines-empty").hidden = names.length > 0;
  document.getElementById("engines").hidden = names.length === 0;
  document.getElementById("unload-all").disabled = !names.some((n) => status.engines[n].state !== "stopped");
  const loaded = status.loaded || [];
  document.getElementById("engine-summary").textContent = names.length
    ? `${loaded.length ? `${loaded.join(", ")} loaded` : "nothing loaded"} · ${names.length} role${names.length === 1 ? "" : "s"}`
    : "";
  body.replaceChildren(...names.map((name) => engineRow(name, status.engines[name], status)));
}

function engineRow(name, engine, status) {
  const pending = state.pending.get(name);
  const shown = pending ? "starting" : engine.state;
  const switching = status.switching_to === name && engine.state !== "ready";
  const row = el("tr", { "data-role": name, "data-state": engine.state });
  const badge = el("span", { class: `badge state-${shown}`, title: engine.stage_text || null }, el("span", { class: "dot" }), el("span", { text: pending || STATE_LABEL[engine.state] || engine.state }));
  const error = engine.last_error ? el("div", { class: "engine-error", text: engine.last_error, title: engine.last_error }) : null;
  const model = (engine.model || "").split("/").pop();
  row.append(
    el("td", {}, el("div", { class: "role-name", text: name }), engine.group ? el("div", { class: "muted small", text: `group ${engine.group}${engine.persistent ? " · persistent" : ""}` }) : null, engine.gpus && engine.gpus.devices ? el("div", { class: "muted small", text: `GPU ${engine.gpus.devices.join(",")}`, title: engine.gpus.reason }) : null),
    el("td", {}, badge, switching ? el("span", { class: "muted small", text: " requested" }) : null, error),
    el("td", { class: "muted", text: engine.engine }),
    el("td", { class: "mono ellipsis", text: model, title: engine.model }),
    el("td", { class: "num mono", text: engine.pid ?? "–" }),
    el("td", { class: "num", text: engine.uptime_seconds != null ? duration(engine.uptime_seconds * 1000) : "–" }),
    el("td", { class: "num", text: engine.last_swap_seconds != null ? duration(engine.last_swap_seconds * 1000) : "–" }),
    el("td", { class: "num", text: `${engine.inflight} / ${engine.queue}` }),
    el(
      "td",
      { class: "actions" },
      el("button", {
        class: "btn primary small",
        "data-action": "switch",
        text: "Switch",
        title: `Load ${name} (evicting what does not fit beside it)`,
        disabled: Boolean(pending) || engine.state === "ready" || engine.state === "starting",
        onclick: () => act(name, "Switching", `/engine/switch/${encodeURIComponent(name)}`),
      }),
      el("button", {
        class: "btn small",
        "data-action": "unload",
        text: "Unload",
        title: `Stop ${name}'s engine (waits for its requests)`,
        disabled: Boolean(pending) || engine.state === "stopped",
        onclick: () => act(name, "Unloading", `/engine/unload?role=${encodeURIComponent(name)}`),
      }),
    ),
  );
  return row;
}

async function act(role, label, path) {
  state.pending.set(role, label);
  state.fastUntil = Date.now() + 120000;
  if (state.engines) renderEngines(state.engines);
  try {
    const result = await api(path, { method: "POST" });
    toast(`${role || "all roles"}: ${result.status}`);
  } catch (error) {
    toast(`${label} ${role || "all"} failed: ${error.message}`, true);
  } finally {
    state.pending.delete(role);
    refreshEnginesNow();
  }
}

// Free VRAM per GPU (as the gateway last read nvidia-smi); hidden without a GPU.
function renderGpus(gpus) {
  const list = document.getElementById("gpus");
  list.hidden = gpus.length === 0;
  const gib = (mb) => `${(mb / 1024).toFixed(1)} GiB`;
  list.replaceChildren(
    el("span", { class: "muted small", text: "GPUs" }),
    ...gpus.map((g) => el("span", { class: "chip up", "data-gpu": g.index, title: g.name }, el("span", { text: `GPU ${g.index}` }), el("span", { class: "muted", text: `${gib(g.free_mb)} free of ${gib(g.total_mb)}` }))),
  );
}

function renderProviders(providers) {
  const list = document.getElementById("providers");
  const names = Object.keys(providers);
  list.hidden = names.length === 0;
  list.replaceChildren(
    el("span", { class: "muted small", text: "Providers" }),
    ...names.map((name) => {
      const p = providers[name];
      return el("span", { class: `chip ${p.available ? "up" : "down"}`, title: `${p.kind} · ${p.base_url}\n${p.detail}` }, el("span", { class: "dot" }), el("span", { text: name }), el("span", { class: "muted", text: p.local ? "local" : p.kind }));
    }),
  );
}

// --- usage: totals and charts ---------------------------------------------------------------------

function colorFor(key, space = state.by) {
  const colors = state.colors[space];
  if (!colors.has(key)) colors.set(key, colorAt(colors.size));
  return colors.get(key);
}

// The n-th name's colour: the palette first, then hues a golden angle apart (never the same
// twice), so the 9th model no longer wears the 1st one's colour.
function colorAt(n) {
  if (n < PALETTE.length) return PALETTE[n];
  const i = n - PALETTE.length;
  const hue = (17 + i * 137.508) % 360;
  return `hsl(${hue.toFixed(1)} ${60 + (i % 3) * 10}% ${48 + (i % 2) * 8}%)`;
}

async function refreshUsage() {
  const series = await api(`/v1/requests/series?since=${state.range}&by=${state.by}`);
  state.series = series;
  renderTotals(series.totals);
  renderCharts(series);
}

function renderTotals(totals) {
  const limited = totals.rate_limited || 0;
  const setKpi = (name, value, sub) => {
    const card = document.querySelector(`[data-kpi="${name}"]`);
    card.querySelector(".kpi-value").textContent = value;
    card.querySelector(".kpi-sub").textContent = sub;
  };
  const requests = totals.requests || 0;
  setKpi("requests", compact(requests), `in the last ${state.range}`);
  setKpi("tokens", compact(totals.prompt_tokens + totals.completion_tokens), `${compact(totals.prompt_tokens || 0)} in · ${compact(totals.completion_tokens || 0)} out`);
  setKpi("cache", ...cacheHits(totals.prompt_tokens || 0, totals.cached_tokens || 0));
  setKpi("latency", duration(totals.latency_ms_p50), `p95 ${duration(totals.latency_ms_p95)}`);
  setKpi("ttft", duration(totals.ttft_ms_p50), `p95 ${duration(totals.ttft_ms_p95)}`);
  const errors = totals.errors || 0;
  setKpi("errors", compact(errors), requests ? `${((100 * errors) / requests).toFixed(1)}% of requests` : "no requests");
  setKpi("limited", compact(limited), limited ? "refused with 429" : "none refused");
  document.querySelector('[data-kpi="limited"]').classList.toggle("alert", limited > 0);
  document.querySelector('[data-kpi="errors"]').classList.toggle("warn", errors > limited);
}

// The prompt-cache hit rate: cached / prompt tokens (prompt tokens include the cached ones).
function cacheHits(prompt, cached) {
  if (!prompt) return ["–", "no prompt tokens"];
  return [`${((100 * cached) / prompt).toFixed(1)}%`, `${compact(cached)} of ${compact(prompt)} in cached`];
}

function buckets(series) {
  const width = series.bucket_seconds;
  const first = Math.floor(series.since / width) * width;
  const times = [];
  for (let t = first; t < series.until; t += width) times.push(t);
  const index = new Map(times.map((t, i) => [t, i]));
  return { times, index };
}

function byKey(series, index, n, field, empty = 0) {
  const result = new Map(series.keys.map((k) => [k, new Array(n).fill(empty)]));
  for (const point of series.data) {
    const i = index.get(point.t);
    if (i !== undefined) result.get(point.key)[i] = point[field];
  }
  return result;
}

function renderCharts(series) {
  const { times, index } = buckets(series);
  const n = times.length;
  const space = series.by === "agent" ? "agent" : "model";
  const keys = series.keys;
  const base = { times, bucket: series.bucket_seconds };
  const stacked = (field) => keys.map((key) => ({ name: key, color: colorFor(key, space), values: byKey(series, index, n, field).get(key) }));
  const tokens = keys.map((key) => {
    const prompt = byKey(series, index, n, "prompt_tokens").get(key);
    const completion = byKey(series, index, n, "completion_tokens").get(key);
    return { name: key, color: colorFor(key, space), values: prompt.map((p, i) => p + completion[i]) };
  });
  const what = space;
  drawChart(document.getElementById("chart-tokens"), { ...base, kind: "bar", series: tokens, label: `tokens per ${what}`, empty: "No tokens in this range" });
  drawChart(document.getElementById("chart-requests"), { ...base, kind: "bar", series: stacked("requests"), integer: true, label: `requests per ${what}`, empty: "No requests in this range" });
  const p50 = byKey(series, index, n, "latency_ms_p50", null);
  const p95 = byKey(series, index, n, "latency_ms_p95", null);
  const latency = keys.flatMap((key) => [
    { name: `${key} p50`, color: colorFor(key, space), values: p50.get(key) },
    { name: `${key} p95`, color: colorFor(key, space), values: p95.get(key), dash: true },
  ]);
  drawChart(document.getElementById("chart-latency"), { ...base, kind: "line", series: latency, format: duration, tickFormat: durationTick, label: "latency percentiles", empty: "No answered requests in this range" });
  const limited = new Array(n).fill(0);
  for (const point of series.data) {
    const i = index.get(point.t);
    if (i !== undefined) limited[i] += point.rate_limited;
  }
  drawChart(document.getElementById("chart-limits"), { ...base, kind: "bar", series: [{ name: "429 refused", color: "#e5484d", values: limited }], integer: true, label: "rate-limit rejections", empty: "No rate-limit rejections in this range", height: 150 });
  const legend = keys.map((key) => ({ name: key, color: colorFor(key, space) }));
  for (const id of ["legend-tokens", "legend-requests"]) drawLegend(document.getElementById(id), legend);
  drawLegend(document.getElementById("legend-latency"), [...legend, { name: "p50", color: "var(--muted)" }, { name: "p95", color: "var(--muted)", dash: true }]);
}

// --- live requests and rate-limit refusals -----------------------------------------------------

async function refreshRecent() {
  const answer = await api(`/v1/requests/recent?after=${state.cursor}&limit=${RECENT_ROWS}`);
  if (answer.cursor < state.cursor) {
    // The gateway restarted: its cursor starts over.
    state.recent = [];
    state.cursor = 0;
    return refreshRecent();
  }
  const fresh = new Set(answer.data.map((r) => r.seq));
  if (state.cursor === 0) fresh.clear();
  state.recent = [...answer.data, ...state.recent].slice(0, RECENT_ROWS);
  state.cursor = answer.cursor;
  document.getElementById("inflight").textContent = answer.in_flight;
  document.getElementById("recent-note").textContent = answer.usage_log ? "" : "usage log is off (usage.enabled: false): nothing is recorded";
  renderRecent(fresh);
  renderRejections(answer.rejections);
}

// A 429 is turnout's own refusal (rate limit or budget) only when no upstream was called:
// an upstream's 429 passed through names its provider, and is that upstream's answer.
function statusBadge(row) {
  const code = row.status;
  const refused = code === 429 && !row.provider;
  const kind = refused ? "limited" : code === 499 ? "gone" : code >= 500 ? "bad" : code >= 400 ? "warn" : "ok";
  const label = refused ? "429 limited" : code === 429 ? "429 upstream" : code === 499 ? "499 cancelled" : String(code);
  return el("span", { class: `status status-${kind}`, text: label, title: code === 429 && !refused ? `rate-limited by ${row.provider}, not by turnout` : null });
}

function renderRecent(fresh) {
  const body = document.querySelector("#recent tbody");
  document.getElementById("recent-empty").hidden = state.recent.length > 0;
  body.replaceChildren(
    ...state.recent.map((r) => {
      const when = new Date(r.ts * 1000);
      const target = r.provider ? `${r.role ? r.role : r.provider}${r.upstream_model && r.upstream_model !== r.role ? ` · ${r.upstream_model}` : ""}` : "–";
      const cached = r.cached_tokens ? ` (${compact(r.cached_tokens)} cached)` : "";
      const tokens = r.prompt_tokens || r.completion_tokens ? `${compact(r.prompt_tokens)}${cached} → ${compact(r.completion_tokens)}${r.estimated ? " ≈" : ""}` : "–";
      return el(
        "tr",
        { class: fresh.has(r.seq) ? "fresh" : "", "data-status": r.status, title: r.notes || null },
        el("td", { class: "mono muted", text: when.toLocaleTimeString([], { hour12: false }) }),
        el("td", {}, el("span", { class: "agent-dot", "data-key": r.agent_id }), el("span", { text: r.agent_id })),
        el("td", { class: "strong", text: r.model }),
        el("td", { class: "muted ellipsis", text: target }),
        el("td", {}, statusBadge(r)),
        el("td", { class: "muted", text: `${r.ingress}${r.stream ? " · stream" : ""}` }),
        el("td", { class: "num", text: tokens }),
        el("td", { class: "num", text: duration(r.ttft_ms) }),
        el("td", { class: "num strong", text: duration(r.duration_ms) }),
        el("td", { class: "mono muted small", text: r.request_id.slice(0, 12), title: r.request_id }),
      );
    }),
  );
  for (const dot of body.querySelectorAll(".agent-dot")) dot.style.background = colorFor(dot.dataset.key, "agent");
}

function renderRejections(rejections) {
  const list = document.getElementById("rejections");
  const total = rejections.reduce((sum, r) => sum + r.count, 0);
  document.getElementById("rejections-total").textContent = total ? `${total} since start` : "";
  if (!rejections.length) {
    list.replaceChildren(el("div", { class: "muted small", text: "No request has been refused by a rate limit since the gateway started." }));
    return;
  }
  const most = Math.max(...rejections.map((r) => r.count));
  list.replaceChildren(
    ...rejections.map((r) => {
      const bar = el("span", { class: "meter-fill" });
      bar.style.width = `${Math.max(4, (100 * r.count) / most)}%`;
      return el("div", { class: "rejection" }, el("span", { class: "strong", text: r.scope }), el("span", { class: "muted", text: `${r.limit} limit` }), el("span", { class: "meter" }, bar), el("span", { class: "num strong", text: r.count }));
    }),
  );
}

// --- small things -------------------------------------------------------------------------------

let toastTimer = null;
function toast(text, bad = false) {
  const node = document.getElementById("toast");
  node.textContent = text;
  node.classList.toggle("bad", bad);
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (node.hidden = true), 4000);
}

function stamp() {
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
}

let refreshEnginesNow = () => {};

function enginePollInterval() {
  // While the event stream is up it says what changes; the poll only keeps pid and uptime fresh.
  // Peers' changes are not in this gateway's stream: with peers the status stays the feed.
  const peers = Object.keys(state.engines?.peers || {}).length > 0;
  if (state.live && !peers) return slowWhenHidden(10000)();
  const busy = Date.now() < state.fastUntil || state.engines?.state === "loading" || state.engines?.state === "switching";
  return busy ? 500 : slowWhenHidden(2000)();
}

function start() {
  const range = document.getElementById("range");
  range.value = state.range in RANGES ? state.range : "1h";
  state.range = range.value;
  for (const button of document.querySelectorAll("#group-by button")) {
    button.setAttribute("aria-pressed", String(button.dataset.by === state.by));
  }
  refreshEnginesNow = every(async () => {
    await refreshEngines();
    stamp();
  }, enginePollInterval);
  const refreshRecentNow = every(refreshRecent, slowWhenHidden(2000));
  const refreshUsageNow = every(refreshUsage, slowWhenHidden(5000));
  range.addEventListener("change", () => {
    state.range = range.value;
    sessionStorage.setItem("turnout.range", state.range);
    refreshUsageNow();
  });
  document.getElementById("group-by").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    state.by = button.dataset.by;
    sessionStorage.setItem("turnout.by", state.by);
    for (const b of document.querySelectorAll("#group-by button")) b.setAttribute("aria-pressed", String(b === button));
    refreshUsageNow();
  });
  document.getElementById("unload-all").addEventListener("click", () => act("", "Unloading all", "/engine/unload"));
  const enterKey = async () => {
    await askForKey("", false, true);
    refreshEnginesNow();
    refreshRecentNow();
    refreshUsageNow();
  };
  document.getElementById("key-button").addEventListener("click", enterKey);
  document.getElementById("locked-key").addEventListener("click", enterKey);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => state.series && renderCharts(state.series), 150);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      refreshEnginesNow();
      refreshRecentNow();
    }
  });
}

start();
