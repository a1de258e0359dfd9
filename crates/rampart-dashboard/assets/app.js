// Rampart's dashboard. One event stream (/ui/events) carries every topic; each page renders
// from the latest values. Text goes in through textContent only (never HTML), and every
// change goes through the admin API, the same calls the CLI makes.

const state = {};
const history = { total: [], routes: new Map(), clusters: new Map() };
const HISTORY = 120;
const PAGE_SIZE = 50;
// Long lists (routes, cluster endpoints) are shown a page at a time.
const pagers = {};

function pager(name, render) {
  const p = { page: 0, render };
  pagers[name] = p;
  $(`${name}-prev`).addEventListener("click", () => {
    p.page = Math.max(0, p.page - 1);
    render();
  });
  $(`${name}-next`).addEventListener("click", () => {
    p.page += 1;
    render();
  });
  return p;
}

// The rows of the current page of `name`, its controls updated.
function paged(name, rows) {
  const p = pagers[name];
  const count = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  p.page = Math.min(p.page, count - 1);
  $(`${name}-page`).textContent = `page ${p.page + 1} of ${count}`;
  $(`${name}-prev`).disabled = p.page === 0;
  $(`${name}-next`).disabled = p.page >= count - 1;
  return rows.slice(p.page * PAGE_SIZE, (p.page + 1) * PAGE_SIZE);
}

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c === undefined || c === null ? "–" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows, emptyText) {
  const body = $(tableId).tBodies[0];
  const cols = $(tableId).tHead.rows[0].cells.length;
  const fresh = document.createElement("tbody");
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = el("td", emptyText || "nothing yet", "empty");
    td.colSpan = cols;
    tr.appendChild(td);
    fresh.appendChild(tr);
  }
  for (const r of rows) fresh.appendChild(r);
  body.replaceWith(fresh);
}

function badge(text) {
  return el("span", text, "state state-" + String(text).replace(/[^a-z_]/gi, "_"));
}

function num(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits ?? 2 });
}

function pct(v) {
  return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %";
}

// --- charts: SVG polylines, drawn with attributes only (the CSP allows no inline styles) ---

const SVG = "http://www.w3.org/2000/svg";

function draw(svg, values) {
  const w = 300;
  const h = 60;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const finite = values.map((v) => (typeof v === "number" && Number.isFinite(v) ? v : 0));
  const max = Math.max(1e-9, ...finite);
  const step = finite.length > 1 ? w / (HISTORY - 1) : 0;
  const offset = w - step * (finite.length - 1);
  const points = finite
    .map((v, i) => `${(offset + i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`)
    .join(" ");
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS(SVG, "polyline");
    svg.appendChild(line);
  }
  line.setAttribute("points", points);
}

function spark(values, label) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  draw(svg, values);
  return svg;
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

// --- pages ---

const pages = {
  overview() {
    const o = state.overview;
    if (!o) return;
    const t = o.total;
    $("total-rps").textContent = num(t.rps, 1);
    $("total-errors").textContent = pct(t.error_rate);
    $("total-p50").textContent = t.p50_ms === null ? "–" : num(t.p50_ms, 2) + " ms";
    $("total-p99").textContent = t.p99_ms === null ? "–" : num(t.p99_ms, 2) + " ms";
    const h = history.total;
    draw($("chart-rps"), h.map((p) => p.rps));
    draw($("chart-errors"), h.map((p) => p.error_rate));
    draw($("chart-p50"), h.map((p) => p.p50_ms));
    draw($("chart-p99"), h.map((p) => p.p99_ms));
    fill(
      "overview-routes",
      o.routes.map((r) => {
        const key = r.listener + "/" + r.route;
        const h = history.routes.get(key) || [];
        return row([
          r.listener, r.route, num(r.rps, 1), pct(r.error_rate), num(r.p50_ms), num(r.p99_ms), num(r.requests, 0),
          spark(h.map((p) => p.rps), `requests per second on ${key}`),
          spark(h.map((p) => p.p99_ms), `p99 latency on ${key}`),
        ]);
      }),
      "no requests yet",
    );
    fill(
      "overview-clusters",
      o.clusters.map((c) => {
        const h = history.clusters.get(c.cluster) || [];
        return row([
          c.cluster, num(c.rps, 1), pct(c.error_rate), num(c.p50_ms), num(c.p99_ms), num(c.requests, 0),
          spark(h.map((p) => p.rps), `requests per second to ${c.cluster}`),
          spark(h.map((p) => p.p99_ms), `upstream p99 latency of ${c.cluster}`),
        ]);
      }),
      "no requests yet",
    );
  },

  routes() {
    const r = state.routes;
    if (!r) return;
    $("routes-version").textContent =
      `config version ${r.version ?? "–"}` + (r.last_reload_error ? ` · last rejected reload: ${r.last_reload_error}` : "");
    const all = [];
    for (const table of r.route_tables || []) {
      for (const vh of table.virtual_hosts || []) {
        for (const [i, route] of (vh.routes || []).entries()) {
          const { match, name, filters, ...action } = route;
          all.push({
            table: table.name,
            vhost: vh.name,
            domains: (vh.domains || []).join(", "),
            route: name || `#${i + 1}`,
            match: JSON.stringify(match ?? {}),
            action: summarize(action),
          });
        }
      }
    }
    const q = $("routes-search").value.trim().toLowerCase();
    const hits = q ? all.filter((x) => Object.values(x).some((v) => String(v).toLowerCase().includes(q))) : all;
    const shown = paged("routes", hits);
    $("routes-count").textContent = `${hits.length} of ${all.length} routes`;
    fill("routes-table", shown.map((x) => row([x.table, x.vhost, x.domains, x.route, x.match, x.action])), "no routes");
    fill(
      "listeners-table",
      (r.listeners || []).map((l) => row([l.name, l.address, l.route_table ?? "–", (l.filters || []).map(filterName).join(", ") || "–"])),
      "no listeners",
    );
  },

  clusters() {
    const c = state.clusters;
    if (!c) return;
    const list = (c.data && c.data.clusters) || [];
    const q = $("clusters-search").value.trim().toLowerCase();
    const hits = [];
    for (const cl of list) {
      const eps = cl.endpoints && cl.endpoints.length ? cl.endpoints : [null];
      for (const ep of eps) {
        const text = (cl.name + " " + (ep ? ep.address : "")).toLowerCase();
        if (!q || text.includes(q)) hits.push([cl, ep]);
      }
    }
    $("clusters-count").textContent = `${hits.length} endpoint(s) in ${list.length} cluster(s)`;
    const rows = paged("clusters", hits).map(([cl, ep]) =>
      row([
        cl.name,
        cl.lb_policy,
        cl.active_requests,
        ep ? ep.address : "no endpoints",
        ep ? badge(ep.state) : "–",
        ep ? ep.ejections : "–",
        ep ? ep.total_requests : "–",
        ep ? ep.failures : "–",
      ]),
    );
    fill("clusters-table", rows, "no clusters");
  },

  policies() {
    const p = state.policies;
    if (!p) return;
    const tenants = Array.isArray(p.data) ? p.data : [];
    fill(
      "policies-table",
      tenants.map((t) => {
        const d = t.decisions || {};
        const rejected = t.rejected ? `${t.rejected.revision ?? ""}: ${t.rejected.error ?? JSON.stringify(t.rejected)}` : "–";
        const loaded = t.loaded_at ? new Date(t.loaded_at * 1000).toLocaleTimeString() : "–";
        return row([t.tenant, t.revision, loaded, t.engine, num(d.allowed, 0), num(d.denied, 0), num(d.errors, 0), rejected]);
      }),
      p.status === 404 ? "no policy engine in this gateway" : "no tenants",
    );
    const select = $("try-tenant");
    const names = tenants.map((t) => t.tenant);
    const current = [...select.options].map((o) => o.value);
    if (names.join() !== current.join()) {
      const keep = select.value;
      select.replaceChildren(...names.map((n) => el("option", n)));
      if (names.includes(keep)) select.value = keep;
    }
  },

  xds() {
    const x = state.xds;
    if (!x) return;
    if (x.error) {
      $("xds-snapshot").textContent = `control plane: ${x.error}`;
      fill("xds-table", [], "no control plane");
      return;
    }
    $("xds-snapshot").textContent = `snapshot ${x.snapshot ?? "–"}`;
    const rows = [];
    for (const [node, types] of Object.entries(x.nodes || {})) {
      for (const [type, s] of Object.entries(types)) {
        const nack = s.nacked ? `${s.nacked.version}: ${s.nacked.error}` : null;
        rows.push(row([node, type, s.sent, s.acked, nack ? badge("nacked") : "–"]));
        if (nack) rows[rows.length - 1].lastChild.appendChild(el("span", " " + nack));
      }
    }
    fill("xds-table", rows, "no proxies connected");
  },

  store() {
    const s = state.store;
    if (!s) return;
    if (s.error) {
      $("store-summary").textContent = `store: ${s.error}`;
      fill("store-table", [], "no store");
      return;
    }
    $("store-summary").textContent = `leader ${s.leader ?? "none"} · term ${s.term ?? "–"} · ${s.members.length} member(s)`;
    fill(
      "store-table",
      s.members.map((m) =>
        row([m.name || m.id, m.endpoint, badge(m.error ? "error" : m.role), m.term, m.index, m.applied, m.lag, m.revision, num(m.db_size, 0)]),
      ),
      "no members",
    );
    $("store-alarms").textContent = s.alarms && s.alarms.length ? `alarms: ${s.alarms.join(", ")}` : "no alarms";
  },

  functions() {
    const f = state.functions;
    if (!f) return;
    const list = (f.data && f.data.functions) || [];
    fill(
      "functions-table",
      list.map((x) => row([x.name, badge(x.state), num(x.invocations, 0), num(x.errors, 0), num(x.cold_starts, 0), x.rejected || x.route || "–"])),
      f.status === 404 ? "this gateway runs no functions" : "no functions deployed",
    );
    fill(
      "plugins-table",
      (state.plugins || []).map((p) => row([p.plugin, num(p.calls, 0), num(p.failures, 0)])),
      "no WASM plugins in the running config",
    );
  },

  flows() {
    const f = state.flows;
    if (!f) return;
    if (f.error) {
      $("flows-summary").textContent = `flow tracing: ${f.error}`;
      fill("flows-table", [], "no flow data");
      fill("flows-ports", [], "no flow data");
      return;
    }
    $("flows-summary").textContent = `${num(f.live, 0)} live flows · ${num(f.events_lost, 0)} events lost`;
    const by = $("flows-by").value;
    $("flows-key").textContent = by[0].toUpperCase() + by.slice(1);
    const groups = new Map();
    for (const n of f.named || []) {
      const k = n[by] || "–";
      const g = groups.get(k) || { closed: 0, sent: 0, received: 0 };
      g.closed += n.closed;
      g.sent += n.sent;
      g.received += n.received;
      groups.set(k, g);
    }
    const sorted = [...groups.entries()].sort((a, b) => b[1].closed - a[1].closed);
    fill("flows-table", sorted.map(([k, g]) => row([k, num(g.closed, 0), num(g.sent, 0), num(g.received, 0)])), "no labelled flows yet");
    fill("flows-ports", (f.ports || []).map((p) => row([p.port, num(p.opened, 0), num(p.closed, 0)])), "no flows yet");
  },
};

function summarize(action) {
  const keys = Object.keys(action);
  if (keys.length === 0) return "–";
  return keys
    .map((k) => {
      const v = action[k];
      return typeof v === "object" ? `${k}: ${JSON.stringify(v)}` : `${k}: ${v}`;
    })
    .join("; ");
}

function filterName(f) {
  if (typeof f === "string") return f;
  if (f && typeof f === "object") return f.name || Object.keys(f)[0] || "?";
  return "?";
}

// --- navigation ---

function current() {
  const name = location.hash.replace(/^#/, "");
  return pages[name] ? name : "overview";
}

function show() {
  const name = current();
  for (const s of document.querySelectorAll("section[data-page]")) s.hidden = s.dataset.page !== name;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#" + name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `Rampart · ${name}`;
  pages[name]();
}

// --- the feed ---

function record(o) {
  push(history.total, o.total);
  for (const r of o.routes) {
    const k = r.listener + "/" + r.route;
    if (!history.routes.has(k)) history.routes.set(k, []);
    push(history.routes.get(k), r);
  }
  for (const c of o.clusters) {
    if (!history.clusters.has(c.cluster)) history.clusters.set(c.cluster, []);
    push(history.clusters.get(c.cluster), c);
  }
}

const topics = ["overview", "routes", "clusters", "policies", "functions", "plugins", "xds", "store", "flows"];

function connect() {
  const feed = new EventSource("/ui/events");
  feed.onopen = () => {
    $("feed").textContent = "live";
  };
  feed.onerror = () => {
    $("feed").textContent = "reconnecting…";
  };
  for (const topic of topics) {
    feed.addEventListener(topic, (ev) => {
      const value = JSON.parse(ev.data);
      state[topic] = value;
      if (topic === "overview") record(value);
      const shownOn = topic === "plugins" ? "functions" : topic;
      if (current() === shownOn) pages[shownOn]();
      $("feed").textContent = "live · updated " + new Date().toLocaleTimeString();
    });
  }
}

async function tryDecision(ev) {
  ev.preventDefault();
  const tenant = $("try-tenant").value;
  const out = $("try-result");
  let input;
  try {
    input = JSON.parse($("try-input").value);
  } catch (e) {
    out.textContent = "The input is not JSON: " + e.message;
    return;
  }
  if (!tenant) {
    out.textContent = "No tenant to ask.";
    return;
  }
  const r = await fetch(`/policy/tenants/${encodeURIComponent(tenant)}/decide`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ input }),
    credentials: "same-origin",
  });
  const text = await r.text();
  let shown = text;
  try {
    const { trace, ...decision } = JSON.parse(text);
    shown = JSON.stringify(decision, null, 2);
    if (Array.isArray(trace)) {
      const lines = trace.flatMap((f) => f.lines.map(([n, code]) => `${f.path}:${n}  ${code}`));
      shown += "\n\nLines evaluated:\n" + lines.join("\n");
    }
  } catch (_) {
    // not JSON: shown as sent
  }
  out.textContent = `HTTP ${r.status}\n${shown}`;
}

addEventListener("hashchange", show);
pager("routes", () => pages.routes());
pager("clusters", () => pages.clusters());
for (const name of ["routes", "clusters"]) {
  $(`${name}-search`).addEventListener("input", () => {
    pagers[name].page = 0;
    pages[name]();
  });
}
$("flows-by").addEventListener("change", () => pages.flows());
$("try-form").addEventListener("submit", tryDecision);
show();
connect();
