// The admin console: every figure comes from the admin API, every text goes into the page as
// text (never as HTML), and the admin key lives in this tab's session storage only.
"use strict";

const KEY = "citadel-admin-key";
const REFRESH_MS = 2000;
let timer = null;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: {
      Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`,
      "Content-Type": "application/json",
      Accept: "application/json",
    },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// Signing in and out.

async function signIn() {
  const key = document.getElementById("admin-key").value.trim();
  sessionStorage.setItem(KEY, key);
  try {
    await api("/admin/actors");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    document.getElementById("sign-in-error").textContent = `Not signed in: ${error.message}`;
    return;
  }
  document.getElementById("admin-key").value = "";
  started();
}

function started() {
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  show("actors");
}

function signOut() {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  document.querySelectorAll(".view").forEach((view) => (view.hidden = true));
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-in").hidden = false;
}

// Views.

const VIEWS = { actors: actors, backends: backends, keys: keys, usage: usage, config: config };
const LIVE = new Set(["actors", "backends"]);

function show(name) {
  clearInterval(timer);
  document.querySelectorAll(".view").forEach((view) => (view.hidden = view.id !== name));
  document.querySelectorAll("nav button[data-view]").forEach((button) =>
    button.classList.toggle("active", button.dataset.view === name));
  const render = () => VIEWS[name]().catch((error) => {
    if (error.status === 401 || error.status === 403) signOut();
  });
  render();
  if (LIVE.has(name)) timer = setInterval(render, REFRESH_MS);
}

async function actors() {
  const { actors: tree } = await api("/admin/actors");
  const root = document.getElementById("actor-tree");
  root.replaceChildren(...tree.map((node) => actorItem(node, true)));
}

function actorItem(node, top) {
  const item = el("li", { "data-path": node.path },
    el("span", { class: "name", text: node.name }), " ",
    el("span", { class: `state-${node.state}`, text: node.state }),
    el("span", { class: "hint", text: `  ${node.class} · restarts ${node.restarts} · ` +
      `mailbox ${node.mailbox.depth}/${node.mailbox.capacity}` }));
  if (!top) {
    item.append(" ", el("button", { class: "restart", text: "Restart", onclick: () => restart(node.path) }));
  }
  if (node.children.length) item.append(el("ul", {}, ...node.children.map((c) => actorItem(c, false))));
  return item;
}

async function restart(path) {
  await api(`/admin/actors/${path}/restart`, { method: "POST" });
  await actors();
}

async function backends() {
  const { backends: rows } = await api("/admin/backends");
  const body = document.querySelector("#backend-table tbody");
  body.replaceChildren(...rows.map((row) => el("tr", {},
    ...[row.name, row.model, row.health ?? row.state, row.circuit, row.in_flight,
      row.latency_ms === undefined ? "" : Number(row.latency_ms).toFixed(1),
      row.served, row.failed].map((value) => el("td", { text: value ?? "" })))));
}

async function keys() {
  const { keys: rows } = await api("/admin/keys");
  const body = document.querySelector("#key-table tbody");
  body.replaceChildren(...rows.map((key) => {
    const limits = [["rpm", key.rpm], ["tpm", key.tpm], ["concurrent", key.max_concurrent]]
      .filter(([, value]) => value !== null).map(([name, value]) => `${name} ${value}`).join(", ");
    const budget = key.budget
      ? `${key.budget.spent} of ${key.budget.tokens} per ${key.budget.period} (${key.budget.remaining} left)`
      : "";
    const state = key.revoked_at ? "revoked" : "active";
    const actions = el("td");
    if (!key.revoked_at && key.source === "store") {
      actions.append(
        el("button", { class: "revoke", text: "Revoke", onclick: () => keyAction(key.id, "revoke") }),
        " ",
        el("button", { class: "rotate", text: "Rotate", onclick: () => keyAction(key.id, "rotate") }));
    }
    return el("tr", { "data-key": key.id },
      el("td", { text: key.id }), el("td", { text: key.name }), el("td", { text: key.models.join(", ") }),
      el("td", { text: limits }), el("td", { text: budget }), el("td", { class: "state", text: state }),
      actions);
  }));
}

async function createKey() {
  const value = (id) => document.getElementById(id).value.trim();
  const scopes = { name: value("key-name") };
  if (value("key-models")) scopes.models = value("key-models").split(",").map((m) => m.trim());
  for (const [field, id] of [["rpm", "key-rpm"], ["tpm", "key-tpm"]]) {
    if (value(id)) scopes[field] = Number(value(id));
  }
  if (value("key-budget")) scopes.budget = { tokens: Number(value("key-budget")), period: value("key-period") };
  if (document.getElementById("key-admin").checked) scopes.admin = true;
  const error = document.getElementById("keys-error");
  error.textContent = "";
  try {
    const created = await api("/admin/keys", { method: "POST", body: JSON.stringify(scopes) });
    showNewKey(created);
  } catch (failure) {
    error.textContent = failure.message;
  }
  await keys();
}

function showNewKey(created) {
  const shown = document.getElementById("new-key");
  shown.textContent = `${created.key}  (key ${created.id}: copy it now, it is not shown again)`;
  shown.hidden = false;
}

async function keyAction(id, action) {
  const answer = await api(`/admin/keys/${id}/${action}`, { method: "POST" });
  if (action === "rotate") showNewKey(answer);
  await keys();
}

async function usage() {
  for (const group of ["key", "model"]) {
    const { usage: rows } = await api(`/admin/usage?by=day,${group}`);
    drawChart(document.getElementById(`chart-${group}`), rows, group);
  }
}

const COLOURS = ["#5b8def", "#e8833a", "#3aa675", "#b25bd6", "#d6455b", "#8a8f99"];

// Grouped bars: a group of bars per day, one bar per series, drawn as SVG.
function drawChart(container, rows, group) {
  const ns = "http://www.w3.org/2000/svg";
  const days = [...new Set(rows.map((row) => row.day))].sort();
  const series = [...new Set(rows.map((row) => row[group] ?? "-"))].sort();
  const max = Math.max(1, ...rows.map((row) => row.total_tokens));
  const width = 640, height = 220, left = 60, bottom = 30;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height + 20 * series.length);
  svg.setAttribute("role", "img");
  const slot = (width - left) / Math.max(1, days.length);
  const bar = Math.max(2, (slot - 8) / Math.max(1, series.length));
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("text", { x: 4, y: 12, "font-size": 11 }, `${max} tokens`);
  add("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#999" });
  days.forEach((day, d) => {
    add("text", { x: left + d * slot + 2, y: height - bottom + 16, "font-size": 11 }, day);
    series.forEach((name, s) => {
      const row = rows.find((r) => r.day === day && (r[group] ?? "-") === name);
      if (!row) return;
      const h = (row.total_tokens / max) * (height - bottom - 20);
      const rect = add("rect", { class: "bar", x: left + d * slot + 4 + s * bar, y: height - bottom - h,
        width: bar - 1, height: h, fill: COLOURS[s % COLOURS.length], "data-series": name,
        "data-tokens": row.total_tokens });
      rect.append(Object.assign(document.createElementNS(ns, "title"),
        { textContent: `${name}, ${day}: ${row.total_tokens} tokens, ${row.requests} requests` }));
    });
  });
  series.forEach((name, s) => {
    add("rect", { x: left, y: height + 4 + 20 * s, width: 12, height: 12, fill: COLOURS[s % COLOURS.length] });
    add("text", { x: left + 18, y: height + 14 + 20 * s, "font-size": 12 }, name);
  });
  container.replaceChildren(svg);
}

async function config() {
  const { config: shown, config_path: path } = await api("/admin/config");
  document.getElementById("config-text").textContent =
    `${path ? `# ${path}\n` : ""}${JSON.stringify(shown, null, 2)}`;
}

async function reload() {
  const result = document.getElementById("reload-result");
  try {
    const answer = await api("/admin/reload", { method: "POST" });
    result.textContent = `Reloaded: ${JSON.stringify(answer)}`;
  } catch (error) {
    result.textContent = `Not reloaded: ${error.message}`;
  }
  await config();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in-button").addEventListener("click", signIn);
  document.getElementById("admin-key").addEventListener("keydown", (event) => {
    if (event.key === "Enter") signIn();
  });
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("create-key-button").addEventListener("click", createKey);
  document.getElementById("reload-button").addEventListener("click", reload);
  document.querySelectorAll("nav button[data-view]").forEach((button) =>
    button.addEventListener("click", () => show(button.dataset.view)));
  if (sessionStorage.getItem(KEY)) started();
});
