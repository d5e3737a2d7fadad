// The fleet panel: other turnouts named under peers: in routing.yaml, as this gateway last saw
// them (the "peers" object of /engine/status; gateway/peers/watcher.py `describe`). Drawn from
// the status the dashboard already reads: no request of its own.

import { el } from "./charts.js";

const STATE_LABEL = { ready: "ready", starting: "loading", stopping: "stopping", stopped: "stopped", sleeping: "sleeping", failed: "failed" };

export function renderFleet(peers) {
  const names = Object.keys(peers || {});
  document.getElementById("fleet-card").hidden = names.length === 0;
  if (!names.length) return;
  const up = names.filter((n) => peers[n].reachable).length;
  document.getElementById("fleet-summary").textContent = `${up} of ${names.length} peer${names.length === 1 ? "" : "s"} reachable`;
  document.querySelector("#fleet tbody").replaceChildren(...names.flatMap((name) => peerRows(name, peers[name])));
}

// One row per role the peer runs or is routed to; a peer never reached has none yet: one row.
function peerRows(name, peer) {
  const roles = [...new Set([...Object.keys(peer.roles || {}), ...(peer.serves || [])])];
  const rows = (roles.length ? roles : [null]).map((role) => roleRow(name, peer, role));
  rows[0].prepend(
    el("td", { rowspan: rows.length, class: "peer-cell" }, el("div", { class: "role-name", text: name }), el("div", { class: "muted small mono ellipsis", text: peer.url, title: peer.url })),
    el("td", { rowspan: rows.length, class: "peer-cell" }, reachability(peer)),
  );
  return rows;
}

function reachability(peer) {
  if (!peer.reachable) {
    const error = peer.error || "unreachable";
    return el("div", {}, el("span", { class: "chip down", "data-reachable": "no" }, el("span", { class: "dot" }), el("span", { text: "unreachable" })), el("div", { class: "engine-error", text: error, title: error }));
  }
  const seen = peer.seen_seconds_ago != null ? `seen ${peer.seen_seconds_ago < 1 ? "just now" : `${Math.round(peer.seen_seconds_ago)} s ago`}` : "";
  const how = peer.following_events ? "events live" : "polled";
  return el("div", {}, el("span", { class: "chip up", "data-reachable": "yes" }, el("span", { class: "dot" }), el("span", { text: "reachable" })), el("div", { class: "muted small", text: [how, seen].filter(Boolean).join(" · ") }));
}

// While the peer is unreachable its roles' last states are stale: shown as unknown, the last
// one in the tooltip (turnout routes nothing to it until it answers again).
function roleRow(name, peer, role) {
  const seen = role !== null ? peer.roles?.[role] : undefined;
  const known = peer.reachable && seen !== undefined;
  const state = known ? seen.state : "unknown";
  const routed = role !== null && (peer.serves || []).includes(role);
  const title = !peer.reachable && seen ? `last seen ${STATE_LABEL[seen.state] || seen.state}` : null;
  return el(
    "tr",
    { "data-peer": name, "data-role": role ?? "", "data-state": state },
    el("td", { class: "strong", text: role ?? "–" }),
    el("td", {}, el("span", { class: `badge state-${state}`, title }, el("span", { class: "dot" }), el("span", { text: STATE_LABEL[state] || state }))),
    el("td", { class: "num", "data-queue": "", text: known ? String(seen.queue) : "–" }),
    el("td", { class: "muted small", text: role === null ? "" : routed ? "yes" : "no", title: routed ? `this gateway sends ${role} requests here` : null }),
  );
}
