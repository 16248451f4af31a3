// pylvs status page: polls lvsd's read-only JSON API and redraws.  No framework, no CDN.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function human(n, unit) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  const steps = ["", "k", "M", "G", "T"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1000 && i < steps.length - 1) { v /= 1000; i++; }
  const digits = i === 0 ? (Number.isInteger(v) ? 0 : 1) : (v < 10 ? 2 : v < 100 ? 1 : 0);
  return v.toFixed(digits) + (steps[i] ? " " + steps[i] : "") + (unit ? (steps[i] ? "" : " ") + unit : "");
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const steps = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < steps.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + steps[i];
}

const SVG = "http://www.w3.org/2000/svg";

function spark(svg, values) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = 120, h = 28;
  if (!values || values.length < 2) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", "0"); line.setAttribute("x2", String(w));
    line.setAttribute("y1", String(h - 1)); line.setAttribute("y2", String(h - 1));
    line.setAttribute("class", "base");
    svg.appendChild(line);
    return;
  }
  const max = Math.max(...values, 1e-9);
  const n = values.length;
  const pts = values.map((v, i) => [(i / (n - 1)) * w, h - 2 - (v / max) * (h - 4)]);
  const d = pts.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join(" ");
  const area = document.createElementNS(SVG, "path");
  area.setAttribute("d", d + ` L${w} ${h} L0 ${h} Z`);
  area.setAttribute("class", "area");
  const line = document.createElementNS(SVG, "path");
  line.setAttribute("d", d);
  line.setAttribute("class", "line");
  svg.appendChild(area);
  svg.appendChild(line);
  const title = document.createElementNS(SVG, "title");
  title.textContent = `last ${Math.round(n * 2 / 60)} min, peak ${human(max)}`;
  svg.appendChild(title);
}

function newSpark() {
  const s = document.createElementNS(SVG, "svg");
  s.setAttribute("viewBox", "0 0 120 28");
  s.setAttribute("preserveAspectRatio", "none");
  s.setAttribute("class", "spark");
  s.setAttribute("aria-hidden", "true");
  return s;
}

const FORWARD = { masq: "Masq", route: "Route", tunnel: "Tunnel", local: "Local", bypass: "Bypass" };

function serviceTitle(s) {
  if (s.fwmark !== null && s.fwmark !== undefined) return `FWM ${s.fwmark}` + (s.af === "inet6" ? " IPv6" : "");
  const addr = s.af === "inet6" ? `[${s.address}]` : s.address;
  return `${s.protocol.toUpperCase()} ${addr}:${s.port}`;
}

function health(d) {
  if (d.health && d.health.state) {
    const st = d.health.state;
    const why = st === "down" && d.health.failed_checker ? ` (${d.health.failed_checker})` : "";
    return [st + why, st === "up" || st === "sorry-in" ? "ok" : st === "down" ? "bad" : "warn", d.health.last_failure || ""];
  }
  if (d.overloaded) return ["overloaded", "warn"];
  if (d.weight === 0) return ["quiesced", "warn"];
  if (!d.available) return ["unavailable", "bad"];
  return ["in service", "ok"];
}

function renderServices(data, history) {
  const box = $("services");
  const svcs = data.services || [];
  $("svc-count").textContent = svcs.length === data.total_services
    ? `${svcs.length} service${svcs.length === 1 ? "" : "s"}`
    : `first ${svcs.length} of ${data.total_services}`;
  if (!svcs.length) {
    box.replaceChildren(el("p", "empty", "No virtual service yet: lvsadm -A -t VIP:PORT -s rr"));
    return;
  }
  const frag = document.createDocumentFragment();
  for (const s of svcs) {
    const card = el("article", "svc");
    const head = el("div", "svc-head");
    const title = el("div", "svc-title");
    title.appendChild(el("span", "vip", serviceTitle(s)));
    title.appendChild(el("span", "chip", s.scheduler));
    if (s.persistent) title.appendChild(el("span", "chip", `persistent ${s.timeout}s`));
    if (s.one_packet) title.appendChild(el("span", "chip", "one-packet"));
    if (s.pe_name) title.appendChild(el("span", "chip", `pe ${s.pe_name}`));
    head.appendChild(title);
    const stats = el("div", "svc-stats");
    const r = s.rates;
    stats.appendChild(el("span", "stat", "")).append(el("b", null, human(r.cps)), " conn/s");
    stats.appendChild(el("span", "stat", "")).append(el("b", null, bytes(r.inbps + r.outbps) + "/s"));
    stats.appendChild(el("span", "stat muted", `${human(s.counters.conns)} total`));
    const sp = newSpark();
    const hist = history && history.services ? history.services[s.id] : null;
    spark(sp, hist ? hist.cps : []);
    stats.appendChild(sp);
    head.appendChild(stats);
    card.appendChild(head);

    const wrap = el("div", "scroll");
    const table = el("table", "dests");
    const thead = el("thead");
    const hr = el("tr");
    const narrow = window.matchMedia("(max-width: 760px)").matches;
    for (const [t, c] of [["Real server", ""], ["Forward", "opt"], [narrow ? "Wt" : "Weight", "num"], ["Health", ""],
      [narrow ? "Act" : "Active", "num"], [narrow ? "Inact" : "Inactive", "num"], ["Conn/s", "num opt"], ["Bytes/s", "num opt"], ["Share", "share opt"]]) {
      hr.appendChild(el("th", c, t));
    }
    thead.appendChild(hr);
    table.appendChild(thead);
    const tbody = el("tbody");
    const totalConns = s.destinations.reduce((a, d) => a + d.active_conns + d.inactive_conns, 0);
    for (const d of s.destinations) {
      const tr = el("tr");
      const addr = d.af === "inet6" ? `[${d.address}]:${d.port}` : `${d.address}:${d.port}`;
      tr.appendChild(el("td", "mono", addr));
      tr.appendChild(el("td", "opt", FORWARD[d.forward] || d.forward));
      tr.appendChild(el("td", "num", d.weight));
      const [htext, hcls, hwhy] = health(d);
      const ht = el("td");
      const badge = el("span", "badge " + hcls, htext);
      if (hwhy) badge.title = hwhy;
      ht.appendChild(badge);
      tr.appendChild(ht);
      tr.appendChild(el("td", "num", d.active_conns));
      tr.appendChild(el("td", "num", d.inactive_conns));
      tr.appendChild(el("td", "num opt", human(d.rates.cps)));
      tr.appendChild(el("td", "num opt", bytes(d.rates.inbps + d.rates.outbps)));
      const share = el("td", "share opt");
      const bar = el("span", "bar");
      const fill = el("span", "fill");
      const pct = totalConns ? (100 * (d.active_conns + d.inactive_conns)) / totalConns : 0;
      fill.style.width = pct.toFixed(1) + "%";
      bar.appendChild(fill);
      share.appendChild(bar);
      share.appendChild(el("span", "pct", pct.toFixed(0) + "%"));
      tr.appendChild(share);
      tbody.appendChild(tr);
    }
    if (!s.destinations.length) {
      const tr = el("tr");
      const td = el("td", "empty", "no real server: lvsadm -a … -r RIP:PORT");
      td.colSpan = 9;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    table.appendChild(tbody);
    wrap.appendChild(table);
    card.appendChild(wrap);
    frag.appendChild(card);
  }
  box.replaceChildren(frag);
}

function renderTotals(data, status, history) {
  const t = data.totals;
  $("t-cps").textContent = human(t.rates.cps);
  $("t-bps").textContent = bytes(t.rates.inbps + t.rates.outbps) + "/s";
  let active = 0, inact = 0;
  for (const s of data.services || []) for (const d of s.destinations) { active += d.active_conns; inact += d.inactive_conns; }
  $("t-active").textContent = human(active);
  $("t-inact").textContent = human(inact);
  $("t-conns").textContent = human(t.counters.conns);
  $("t-bytes").textContent = bytes(t.counters.inbytes + t.counters.outbytes);
  $("t-entries").textContent = status ? human(status.connections) : "—";
  if (history && history.total) {
    spark($("s-cps"), history.total.cps);
    spark($("s-bps"), history.total.bps);
  }
}

function renderStatus(status) {
  if (!status) return;
  $("version").textContent = "v" + status.version;
  const up = Math.round(status.uptime);
  const h = Math.floor(up / 3600), m = Math.floor((up % 3600) / 60), s = up % 60;
  $("who").textContent = `lvsd pid ${status.pid} · up ${h ? h + "h " : ""}${m}m ${s}s · ${status.services} services`;
  const warn = $("warnings");
  if (status.warnings && status.warnings.length) {
    warn.hidden = false;
    warn.textContent = "⚠ " + status.warnings.slice(-3).join(" · ");
  } else {
    warn.hidden = true;
  }
}

function renderEvents(ev) {
  const ol = $("events");
  const items = (ev.events || []).slice(-30).reverse();
  const frag = document.createDocumentFragment();
  for (const e of items) {
    const li = el("li", "ev " + e.kind);
    const when = new Date(e.time * 1000);
    li.appendChild(el("time", null, when.toLocaleTimeString()));
    li.appendChild(el("span", "kind", e.kind));
    li.appendChild(el("span", "text", e.text));
    frag.appendChild(li);
  }
  if (!items.length) frag.appendChild(el("li", "empty", "nothing yet"));
  ol.replaceChildren(frag);
}

function renderConns(c) {
  $("conn-count").textContent = c.total > c.shown ? `first ${c.shown} of ${c.total}` : `${c.total}`;
  const tb = $("conns");
  const frag = document.createDocumentFragment();
  const ep = (x, af) => (af === "inet6" || (x.address || "").includes(":") ? `[${x.address}]:${x.port}` : `${x.address}:${x.port}`);
  for (const e of c.conns) {
    const tr = el("tr");
    tr.appendChild(el("td", "opt", e.protocol));
    tr.appendChild(el("td", "mono", ep(e.client, e.af)));
    tr.appendChild(el("td", "mono opt", e.fwmark ? `FWM ${e.fwmark}` : ep(e.virtual, e.af)));
    tr.appendChild(el("td", "mono", ep(e.destination, e.destination.af)));
    tr.appendChild(el("td", null, e.template ? "template" : e.state));
    tr.appendChild(el("td", "num", e.expires_in + " s"));
    frag.appendChild(tr);
  }
  if (!c.conns.length) {
    const tr = el("tr");
    const td = el("td", "empty", "no connection entries");
    td.colSpan = 6;
    tr.appendChild(td);
    frag.appendChild(tr);
  }
  tb.replaceChildren(frag);
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

let ticks = 0;
async function poll() {
  try {
    const [services, history, events, status, conns] = await Promise.all([
      getJSON("/api/services?limit=100"),
      getJSON("/api/history"),
      getJSON("/api/events"),
      getJSON("/api/status"),
      getJSON("/api/conns?limit=15"),
    ]);
    renderStatus(status);
    renderTotals(services, status, history);
    renderServices(services, history);
    renderEvents(events);
    renderConns(conns);
    ticks++;
    $("dot").className = "dot on";
    $("updated").textContent = "live · " + new Date().toLocaleTimeString();
    document.body.dataset.updates = String(ticks);
  } catch (err) {
    $("dot").className = "dot off";
    $("updated").textContent = "lvsd unreachable";
  }
}

poll();
setInterval(poll, POLL_MS);
