// The Event Explorer's page. Every stored text is set with textContent (never innerHTML); the
// whole view lives in the URL's query string, so a view can be shared or bookmarked.
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;
const $ = (id) => document.getElementById(id);
let view = new URLSearchParams(location.search);
let trendChart = null;
let replayMarks = null;

// Control characters in stored text are shown escaped, as the command line shows them.
function shown(text) {
  return String(text).replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g,
    (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
}

function cut(text, length) { return text.length > length ? text.slice(0, length) + "…" : text; }

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = shown(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function when(seconds) { return seconds == null ? "never" : new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19); }

function showError(message) { $("error").textContent = message || ""; }

function range() {
  const now = Date.now() / 1000;
  const to = Number(view.get("to")) || now;
  const from = Number(view.get("from")) || to - Number(view.get("range") || 86400);
  const span = to - from;
  const steps = [60, 300, 900, 3600, 10800, 21600, 86400];
  const bucket = steps.find((s) => span / s <= 120) || Math.ceil(span / 120);
  return { from, to, bucket };
}

function selection(extra) {
  const { from, to, bucket } = range();
  const params = new URLSearchParams({ from, to, bucket });
  if (view.get("name")) params.set("name", view.get("name"));
  for (const f of view.getAll("f")) params.append("f", f);
  for (const [k, v] of Object.entries(extra || {})) params.set(k, v);
  return params;
}

async function api(path, params) {
  const response = await fetch(`api/${path}?${params || ""}`, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function post(path, document) {
  const response = await fetch(`api/${path}`, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(document),
  });
  const body = await response.json();
  if (!response.ok && !body.problems) throw new Error(body.error || response.statusText);
  return body;
}

function go(change) {
  change(view);
  history.pushState(null, "", `?${view}`);
  render();
}

function chips() {
  const box = $("chips");
  clear(box);
  const items = [];
  if (view.get("name")) items.push(["name", view.get("name"), () => view.delete("name")]);
  for (const f of view.getAll("f")) {
    items.push(["", f, (v) => { const kept = v.getAll("f").filter((x) => x !== f); v.delete("f"); kept.forEach((x) => v.append("f", x)); }]);
  }
  for (const [label, text, remove] of items) {
    const chip = el("span", label ? `${label}: ${text}` : text, { class: "chip" });
    const x = el("button", "×", { "aria-label": `remove ${text}` });
    x.addEventListener("click", () => go(remove));
    chip.appendChild(x);
    box.appendChild(chip);
  }
}

function sizedChart(target, height, series, data) {
  const width = height > 80 ? Math.max(400, target.clientWidth || 900) : 260;
  return new uPlot({ width, height, series, legend: { show: height > 80 }, axes: height > 80 ? undefined : [{ show: false }, { show: false }], cursor: { show: height > 80 } }, data, target);
}

const PALETTE = ["#1d4ed8", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#9333ea"];

async function renderTrend() {
  const trend = await api("trend", selection());
  const target = $("trend-chart");
  clear(target);
  const names = Object.keys(trend.series);
  const data = [trend.buckets, ...names.map((n) => trend.series[n])];
  const series = [{}, ...names.map((n, i) => ({ label: shown(n), stroke: PALETTE[i % PALETTE.length], width: 2 }))];
  if (replayMarks && replayMarks.length === trend.buckets.length) {
    data.push(replayMarks);
    series.push({ label: "draft would fire", stroke: "#000", width: 2, dash: [4, 4] });
  }
  trendChart = sizedChart(target, 260, series, data);
  target.dataset.series = JSON.stringify(names);
  target.dataset.points = String(trend.buckets.length);
  const list = $("names");
  clear(list);
  let total = 0;
  for (const [name, count] of Object.entries(trend.totals).sort((a, b) => b[1] - a[1])) {
    total += count;
    const item = el("li", `${name} (${count})`, { "data-name": name });
    if (view.get("name") === name) item.classList.add("focused");
    item.addEventListener("click", () => go((v) => (v.get("name") === name ? v.delete("name") : v.set("name", name))));
    list.appendChild(item);
  }
  $("trend-total").textContent = `${total} events`;
}

async function renderDimensions() {
  const select = $("dimension");
  if (select.options.length) { select.value = view.get("dimension") || "name"; return; }
  const { dimensions } = await api("dimensions");
  for (const d of dimensions) select.appendChild(el("option", d, { value: d }));
  select.value = view.get("dimension") || "name";
  select.addEventListener("change", () => go((v) => v.set("dimension", select.value)));
}

async function renderBreakdown() {
  const dimension = view.get("dimension") || "name";
  const result = await api("breakdown", selection({ dimension }));
  const body = $("values");
  clear(body);
  for (const { value, count, trend } of result.values) {
    const row = el("tr", undefined, { "data-value": value === null ? "" : value });
    row.appendChild(el("td", value === null ? "(none)" : value));
    row.appendChild(el("td", count));
    const cell = el("td", undefined, { class: "spark" });
    row.appendChild(cell);
    body.appendChild(row);
    if (trend.length) sizedChart(cell, 40, [{}, { stroke: "#1d4ed8", width: 1 }], [result.buckets, trend]);
    if (value !== null) row.addEventListener("click", () => go((v) => v.append("f", `${dimension}:${value}`)));
  }
}

async function renderEvents(before) {
  const params = selection(before ? { before } : {});
  const page = await api("events", params);
  const body = $("event-rows");
  if (!before) clear(body);
  for (const e of page.events) {
    const row = el("tr", undefined, { "data-id": e.id, "data-seq": e.seq });
    for (const text of [when(e.at), e.name, e.ip, e.user, cut(JSON.stringify(e.properties), 300)]) row.appendChild(el("td", text));
    row.addEventListener("click", () => openEvent(e.id));
    body.appendChild(row);
  }
  $("events-total").textContent = `${page.total} matching`;
  const more = $("more");
  more.hidden = !page.more;
  more.onclick = () => renderEvents(page.events[page.events.length - 1].seq);
}

async function openEvent(id) {
  const found = await api("event", new URLSearchParams({ id }));
  $("event-detail").hidden = false;
  $("event-id").textContent = id;
  $("event-json").textContent = JSON.stringify(found.event, null, 2);
  const list = $("event-decisions");
  clear(list);
  for (const d of found.decisions) list.appendChild(el("li", `${when(d.at)} ${d.playbook}: ${d.action} (${d.status})`));
  if (!found.decisions.length) list.appendChild(el("li", "none"));
}

async function renderDecisions() {
  const all = $("all-decisions").checked;
  const { decisions } = await api("decisions", all ? "all=1" : "");
  const body = $("decision-rows");
  clear(body);
  for (const d of decisions) {
    const row = el("tr", undefined, { "data-id": d.id });
    for (const text of [when(d.at), d.playbook, d.action, JSON.stringify(d.key), d.status, when(d.expires), d.events.length, d.stopped]) row.appendChild(el("td", text));
    const cell = el("td");
    if (d.live) {
      const button = el("button", "remove");
      button.addEventListener("click", async () => {
        if (!confirm(`Remove ${d.action} of ${d.playbook} on ${JSON.stringify(d.key)}?`)) return;
        await post("remove", { id: d.id }).catch((e) => showError(e.message));
        renderDecisions();
      });
      cell.appendChild(button);
    }
    row.appendChild(cell);
    body.appendChild(row);
  }
}

async function replayDraft() {
  const { from, to, bucket } = range();
  const result = await post("replay", { playbooks: $("draft").value, from, to, bucket });
  const problems = $("replay-problems");
  clear(problems);
  if (result.problems) {
    for (const line of result.problems) problems.appendChild(el("li", line));
    $("replay-summary").textContent = "the draft has mistakes";
    return;
  }
  replayMarks = result.per_bucket;
  $("replay-summary").textContent = `${result.decisions.length} decisions on ${result.keys} keys; their blocks would have stopped ${result.stopped} events`;
  await renderTrend();
}

async function renderSpool() {
  let report;
  try { report = await api("spool"); } catch (e) { return; }
  $("spool").hidden = false;
  const summary = $("spool-summary");
  clear(summary);
  const facts = { ...report.counts, ...Object.fromEntries(Object.entries(report.dropped).map(([k, v]) => [`dropped (${k})`, v])), ...Object.fromEntries(Object.entries(report.failures).map(([k, v]) => [`failed (${k})`, v])) };
  for (const [k, v] of Object.entries(facts)) { summary.appendChild(el("dt", k)); summary.appendChild(el("dd", v)); }
  for (const status of ["pending", "rejected"]) {
    const list = $(`spool-${status}`);
    clear(list);
    for (const e of report[status]) {
      const extra = [e.last_error, e.next_attempt_at && `next attempt ${e.next_attempt_at}`].filter(Boolean).join("; ");
      list.appendChild(el("li", `${e.timestamp} ${e.name} ${extra}`));
    }
  }
}

async function render() {
  showError("");
  chips();
  for (const b of document.querySelectorAll("#range button[data-range]")) b.classList.toggle("active", b.dataset.range === (view.get("range") || "86400") && !view.get("from"));
  try {
    await renderDimensions();
    await Promise.all([renderTrend(), renderBreakdown(), renderEvents(), renderDecisions()]);
  } catch (e) {
    showError(e.message);
  }
}

for (const b of document.querySelectorAll("#range button[data-range]")) {
  b.addEventListener("click", () => go((v) => { v.set("range", b.dataset.range); v.delete("from"); v.delete("to"); }));
}
$("apply").addEventListener("click", () => go((v) => {
  const from = Date.parse($("from").value + "Z") / 1000, to = Date.parse($("to").value + "Z") / 1000;
  if (from && to) { v.set("from", from); v.set("to", to); }
}));
$("all-decisions").addEventListener("change", renderDecisions);
$("replay").addEventListener("click", () => replayDraft().catch((e) => showError(e.message)));
window.addEventListener("popstate", () => { view = new URLSearchParams(location.search); render(); });
api("playbooks").then((p) => { $("draft").value = p.text; }).catch(() => {});
render().then(() => { document.body.dataset.ready = "1"; });
renderSpool();
