// pylvs scheduler lab: the page only sends actions and draws what the server
// answers; every decision and explanation comes from the emulated kernel.
"use strict";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
let state = null;
let busy = 0;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k in e && k !== "list") e[k] = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg || "";
  box.hidden = !msg;
}

async function act(body) {
  busy++;
  document.body.dataset.busy = busy;
  try {
    const r = await fetch("/api/action", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)});
    const data = await r.json();
    if (!r.ok) {
      showError(data.error || ("HTTP " + r.status));
      if (data.state) render(data.state);
      return false;
    }
    showError("");
    render(data);
    return true;
  } catch (e) {
    showError("the lab server does not answer: " + e);
    return false;
  } finally {
    busy--;
    document.body.dataset.busy = busy;
  }
}

function serverColours(names) {
  const out = {};
  names.forEach((n, i) => { out[n] = PALETTE[i % PALETTE.length]; });
  return out;
}

function renderChart(st) {
  const rows = st.servers.concat(st.removed);
  const colours = serverColours(rows.map((r) => r.server));
  const W = 620, barH = 22, gap = 8, left = 110, H = Math.max(1, rows.length) * (barH + gap) + 24;
  const max = Math.max(1, ...rows.map((r) => r.flows));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const text = (x, y, s, anchor = "start") => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "12");
    t.setAttribute("text-anchor", anchor); t.setAttribute("font-family", "monospace");
    t.textContent = s; svg.append(t);
  };
  rows.forEach((r, i) => {
    const y = 8 + i * (barH + gap);
    const w = Math.round((W - left - 190) * r.flows / max);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", left); rect.setAttribute("y", y); rect.setAttribute("height", barH);
    rect.setAttribute("width", Math.max(w, 1)); rect.setAttribute("fill", colours[r.server]);
    if (r.removed) rect.setAttribute("opacity", "0.4");
    svg.append(rect);
    text(left - 6, y + 15, r.server, "end");
    const share = st.routed ? (100 * r.flows / st.routed).toFixed(1) : "0.0";
    const extra = r.removed ? " (removed)" : `  a=${r.active} i=${r.inactive}`;
    text(left + w + 6, y + 15, `${r.flows} (${share}%)${extra}`);
  });
  if (!rows.length) text(10, 20, "add real servers, then send flows");
  $("chart").replaceChildren(svg);
}

function renderServers(st) {
  const body = $("servers").querySelector("tbody");
  const rows = [];
  for (const s of st.servers) {
    const w = el("input", {type: "number", min: 0, value: s.weight, "aria-label": "weight of " + s.server});
    const u = el("input", {type: "number", min: 0, value: s.upper, "aria-label": "upper threshold of " + s.server});
    const l = el("input", {type: "number", min: 0, value: s.lower, "aria-label": "lower threshold of " + s.server});
    const save = el("button", {textContent: "Save", onclick: () =>
      act({op: "edit", server: s.server, weight: w.value, upper: u.value, lower: l.value})});
    const del = el("button", {textContent: "Remove", onclick: () => act({op: "remove", server: s.server})});
    const share = st.routed ? (100 * s.flows / st.routed).toFixed(1) + "%" : "-";
    rows.push(el("tr", {"data-server": s.server},
      el("td", {}, s.server), el("td", {}, w), el("td", {}, u), el("td", {}, l),
      el("td", {class: "active"}, String(s.active)), el("td", {class: "inactive"}, String(s.inactive)),
      el("td", {class: "flows", "data-server": s.server}, String(s.flows)),
      el("td", {class: "share"}, share), el("td", {}, save, del)));
  }
  for (const s of st.removed) {
    rows.push(el("tr", {class: "removed"}, el("td", {}, s.server), el("td", {colSpan: 5}, "removed"),
      el("td", {class: "flows", "data-server": s.server}, String(s.flows)), el("td", {}, ""), el("td", {}, "")));
  }
  body.replaceChildren(...rows);
}

function renderDecisions(st) {
  const items = st.decisions.slice().reverse().map((d) => {
    const [host, port] = d.flow;
    const to = d.real_server ? d.real_server + (d.state ? ` (${d.state})` : "") : "none" + (d.error ? ` (${d.error})` : "");
    const lines = (d.rule ? ["rule: " + d.rule] : []).concat(d.explain || []);
    return el("li", {value: d.i + 1, class: "decision", "data-i": d.i, "data-server": d.real_server || ""},
      el("details", {}, el("summary", {}, `${d.proto} ${host}:${port} -> ${d.vip}  =>  ${to}`),
        el("pre", {}, lines.join("\n"))));
  });
  $("decisions").replaceChildren(...items);
}

function renderFlags() {
  const sched = $("svc-sched").value;
  const flags = (state && state.sched_flags[sched]) || [];
  $("svc-flags").replaceChildren(...flags.map((f) =>
    el("label", {}, el("input", {type: "checkbox", value: f, class: "flag"}), " " + f)));
}

let plotTimer = null;
function refreshPlot(force) {
  if (!force && !$("autoplot").checked) return;
  clearTimeout(plotTimer);
  plotTimer = setTimeout(() => { $("plot").src = "/api/plot.svg?n=" + Date.now(); }, 300);
}

function render(st) {
  const first = state === null;
  state = st;
  if (first) {
    $("svc-sched").replaceChildren(...st.schedulers.map((n) => el("option", {value: n, textContent: n})));
    $("svc-sched").value = "wlc";
    renderFlags();
  }
  const svc = st.service;
  $("summary").textContent = svc
    ? `${svc.describe} scheduler ${svc.scheduler}${svc.persistent ? ", persistent " + svc.persistent + " s" : ""}`
      + ` - ${st.flows} flows, ${st.dropped} without a server`
    : "no virtual service yet";
  $("clock").textContent = `virtual clock ${st.clock.toFixed(1)} s, ${st.held} TCP connections held`;
  renderServers(st);
  renderChart(st);
  renderDecisions(st);
  refreshPlot(false);
}

function num(id) { return $(id).value; }

function wire() {
  $("svc-sched").onchange = renderFlags;
  $("svc-apply").onclick = () => act({
    op: "service", scheduler: $("svc-sched").value, proto: $("svc-proto").value, vip: $("svc-vip").value,
    flags: [...document.querySelectorAll("#svc-flags input.flag:checked")].map((x) => x.value),
    persistent: num("svc-persistent"), one_packet: $("svc-onepacket").checked});
  $("rs-add").onclick = () => act({op: "add", server: $("rs-addr").value, weight: num("rs-weight"),
                                   upper: num("rs-upper"), lower: num("rs-lower")});
  const send = (count) => act({op: "send", client: $("client").value, count, many: $("many").checked,
                               hold: $("hold").checked});
  $("send-one").onclick = () => send(1);
  $("send-burst").onclick = () => send(num("count"));
  $("close-client").onclick = () => act({op: "close", client: $("client").value});
  $("close-all").onclick = () => act({op: "close", client: "all"});
  $("advance").onclick = () => act({op: "advance", seconds: num("seconds")});
  $("reset").onclick = () => act({op: "reset"});
  $("autoplot").onchange = () => refreshPlot(true);
  $("show-scenario").onclick = async () => {
    const r = await fetch("/api/scenario");
    $("scenario").textContent = await r.text();
    $("scenario").hidden = false;
  };
}

// A link can set the lab up: ?scheduler=wrr&proto=udp&flags=sh-port&servers=10.1.0.1:80*1,10.1.0.2:80*2
async function preset() {
  const q = new URLSearchParams(location.search);
  if (!q.get("scheduler") || state.service) return;
  const ok = await act({op: "service", scheduler: q.get("scheduler"), proto: q.get("proto") || "udp",
                        flags: (q.get("flags") || "").split(",").filter(Boolean),
                        persistent: q.get("persistent") || 0, one_packet: q.get("one_packet") === "1"});
  if (!ok) return;
  for (const spec of (q.get("servers") || "").split(",").filter(Boolean)) {
    const [server, weight] = spec.split("*");
    if (!await act({op: "add", server, weight: weight || 1})) return;
  }
  $("svc-sched").value = q.get("scheduler");
  $("svc-proto").value = q.get("proto") || "udp";
  renderFlags();
}

async function start() {
  wire();
  const r = await fetch("/api/state");
  render(await r.json());
  await preset();
  document.body.dataset.ready = "1";
}
start();
