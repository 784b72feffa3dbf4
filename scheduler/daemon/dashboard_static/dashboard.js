// The mlq dashboard: polls the dashboard's read-only /api/ endpoints and draws the
// queue, the nodes, the teams' use and one job's timeline and log. Plain DOM, no
// framework and no build step; every value from the API goes in as text, never as
// markup (job names, reasons and logs come from users).
"use strict";

const POLL_MS = 2000;
const LOG_KEEP = 64 * 1024; // characters of a log the page keeps, the newest

let openJob = null; // {id, stream, offset, run, text}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

class SessionEnded extends Error {}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) throw new SessionEnded((await response.json()).message);
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || `${path}: HTTP ${response.status}`);
  return body;
}

function jobLink(id) {
  return el("a", { href: `#job/${id}`, class: "job-link", "data-job": String(id) }, String(id));
}

function stateCell(state) {
  return el("td", { class: `state state-${state.toLowerCase()}` }, state);
}

function shortTime(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? iso : at.toLocaleString();
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function drawQueue(data) {
  const rows = data.jobs.map((j) =>
    el("tr", { "data-job": String(j.id), "data-state": j.state },
      el("td", {}, jobLink(j.id)),
      el("td", {}, j.name), el("td", {}, j.team), el("td", {}, j.user),
      el("td", {}, j.priority_class), stateCell(j.state),
      el("td", {}, j.node || ""), el("td", { class: "reason" }, j.reason || "")));
  fill(document.querySelector("#queue tbody"), rows);
  document.getElementById("queue-empty").hidden = rows.length > 0;
  const recent = data.recent.map((j) =>
    el("tr", { "data-job": String(j.id), "data-state": j.state },
      el("td", {}, jobLink(j.id)),
      el("td", {}, j.name), el("td", {}, j.team), el("td", {}, j.user), stateCell(j.state),
      el("td", {}, j.exit_code === null || j.exit_code === undefined ? (j.signal || "") : String(j.exit_code)),
      el("td", {}, shortTime(j.ended_at)), el("td", { class: "reason" }, j.reason || "")));
  fill(document.querySelector("#recent tbody"), recent);
  const more = data.jobs.length >= data.limit ? ` (the first ${data.limit} shown)` : "";
  document.getElementById("counts").textContent = `${data.running} running, ${data.pending} pending${more}`;
}

function gpuBox(node, gpu) {
  const box = el("div", { class: "gpu" }, el("div", { class: "gpu-name" }, `GPU ${gpu.index} ${gpu.name || gpu.model || ""}`));
  if (gpu.mig && gpu.mig.length) {
    for (const m of gpu.mig) {
      box.append(el("div", { class: m.job ? "slice held" : "slice free" },
        `${m.profile || "slice"} `, m.job ? jobLink(m.job) : "free"));
    }
  } else {
    box.classList.add(gpu.job ? "held" : "free");
    box.append(el("div", { class: "holder" }, gpu.job ? jobLink(gpu.job) : "free"));
  }
  return box;
}

function drawNodes(data) {
  const out = data.nodes.map((n) => {
    const gpus = el("div", { class: "gpus" }, ...n.gpus.map((g) => gpuBox(n, g)));
    if (!n.gpus.length) gpus.append(el("span", { class: "empty" }, n.gpu_problem || "no GPUs"));
    return el("div", { class: `node node-${n.state}`, "data-node": n.name },
      el("h3", {}, n.name, " ", el("span", { class: "node-state" }, n.state), n.reason ? ` (${n.reason})` : ""),
      el("p", {}, `CPUs ${n.cpus_used} of ${n.cpus}, memory ${n.memory_used} of ${n.memory}`),
      gpus);
  });
  document.getElementById("nodes").replaceChildren(...out);
}

function fmt(resource, value) {
  if (value === undefined || value === null) return "-";
  if (resource === "memory") {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = value, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${Math.round(v * 10) / 10}${units[i]}`;
  }
  if (resource === "cpu") return String(Math.round(value / 10) / 100); // millicores -> CPUs
  return String(Math.round(value * 100) / 100);
}

function sparkline(history, team, resource, top) {
  const width = 240, height = 36;
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img" });
  const points = history.map((p) => (p.teams[team] && p.teams[team].used[resource]) || 0);
  const max = Math.max(top || 0, ...points, 1e-9);
  const y = (v) => height - 2 - (v / max) * (height - 4);
  if (top) chart.append(svg("line", { x1: 0, x2: width, y1: y(top), y2: y(top), class: "guarantee-line" }));
  if (points.length > 1) {
    const step = width / (points.length - 1);
    const path = points.map((v, i) => `${(i * step).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { points: path, class: "use-line" }));
  }
  const title = svg("title", {});
  title.textContent = `${team} ${resource} over the last ${history.length} samples`;
  chart.append(title);
  return chart;
}

function drawTeams(data) {
  const out = data.teams.map((t) => {
    // what has a quota, and GPUs always: the team's own figures, not every flavour
    const resources = [...new Set(["gpu", ...Object.keys(t.guarantee), ...Object.keys(t.limit)])].sort();
    const rows = resources.map((r) => {
      const used = t.used[r] || 0, guarantee = t.guarantee[r], limit = t.limit[r];
      const bar = el("div", { class: "bar" });
      const scale = Math.max(limit || 0, guarantee || 0, used);
      if (scale > 0) {
        const fillBar = el("div", { class: guarantee !== undefined && used > guarantee ? "fill over" : "fill" });
        fillBar.style.width = `${Math.min(100, (used / scale) * 100)}%`;
        bar.append(fillBar);
      }
      if (guarantee) {
        const mark = el("div", { class: "mark", title: "guarantee" });
        mark.style.left = `${Math.min(100, (guarantee / scale) * 100)}%`;
        bar.append(mark);
      }
      return el("tr", { "data-resource": r },
        el("td", {}, r), el("td", { class: "used" }, fmt(r, used)), el("td", {}, fmt(r, guarantee)),
        el("td", {}, fmt(r, limit)), el("td", {}, bar), el("td", {}, sparkline(data.history, t.team, r, guarantee)));
    });
    return el("div", { class: "team", "data-team": t.team },
      el("h3", {}, t.team),
      el("table", { class: "team-table" },
        el("thead", {}, el("tr", {}, ...["RESOURCE", "USED", "GUARANTEE", "LIMIT", "USE", "OVER TIME"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  });
  document.getElementById("teams").replaceChildren(...out);
}

function showError(error) {
  const updated = document.getElementById("updated");
  updated.textContent = error instanceof SessionEnded ? error.message : `not updated: ${error.message}`;
  updated.className = "error";
}

async function drawJob() {
  if (!openJob) return;
  const job = await api(`/api/jobs/${openJob.id}`);
  document.getElementById("job-title").textContent = `Job ${job.id} ${job.name}: ${job.state}`;
  const facts = [["team", job.team], ["user", job.user], ["class", job.priority_class], ["node", job.node || ""],
    ["submitted", shortTime(job.submitted_at)], ["started", shortTime(job.started_at)], ["ended", shortTime(job.ended_at)],
    ["exit", job.exit_code ?? job.signal ?? ""], ["restarts", job.restart_count], ["reason", job.reason]];
  document.getElementById("job-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v ?? ""))]));
  document.getElementById("job-events").replaceChildren(...job.events.map((e) =>
    el("li", {}, el("time", {}, shortTime(e.at)), " ", el("strong", {}, e.state), e.reason ? ` ${e.reason}` : "")));
  const query = openJob.offset === null ? "" : `&offset=${openJob.offset}&run=${openJob.run}`;
  let chunk;
  try {
    chunk = await api(`/api/jobs/${openJob.id}/log?stream=${openJob.stream}${query}`);
  } catch (error) {
    if (error instanceof SessionEnded) throw error;
    document.getElementById("job-log").textContent = error.message; // e.g. not yours to read
    return;
  }
  if (openJob.offset !== null && chunk.run !== openJob.run) openJob.text = "";
  openJob.run = chunk.run;
  openJob.offset = chunk.next_offset;
  openJob.text = (openJob.text + chunk.data).slice(-LOG_KEEP);
  const pre = document.getElementById("job-log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = openJob.text;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

function openFromHash() {
  const match = /^#job\/(\d+)$/.exec(location.hash);
  const panel = document.getElementById("job-panel");
  if (!match) { openJob = null; panel.hidden = true; return; }
  const stream = document.getElementById("job-stream").value;
  openJob = { id: Number(match[1]), stream, offset: null, run: null, text: "" };
  panel.hidden = false;
  document.getElementById("job-log").textContent = "";
  drawJob().catch(showError);
}

async function refresh() {
  try {
    const [queue, nodes, teams] = await Promise.all([api("/api/queue"), api("/api/nodes"), api("/api/teams")]);
    drawQueue(queue);
    drawNodes(nodes);
    drawTeams(teams);
    await drawJob();
    const updated = document.getElementById("updated");
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    updated.className = "";
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (error) {
    showError(error);
    if (error instanceof SessionEnded) return; // no more polling: the page says what to do
  }
  setTimeout(refresh, POLL_MS);
}

async function start() {
  try {
    const who = await api("/api/whoami");
    document.getElementById("viewer").textContent = `signed in as ${who.user}${who.admin ? " (mlq admin)" : ""}`;
  } catch (error) {
    showError(error);
    return;
  }
  window.addEventListener("hashchange", openFromHash);
  document.getElementById("job-close").addEventListener("click", (event) => {
    event.preventDefault();
    history.replaceState(null, "", location.pathname);
    openFromHash();
  });
  document.getElementById("job-stream").addEventListener("change", openFromHash);
  openFromHash();
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
