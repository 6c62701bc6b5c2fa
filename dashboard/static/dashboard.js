// Scalenode dashboard: renders the feed's frames. One WebSocket, reconnects with backoff and
// jitter; history arrives whole in the first frame, then one point per frame.
"use strict";
(() => {
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  // Nodes take colours from PALETTE only; other kinds of series have colours of their own
  // that no node ever gets, so a line's colour says what it is on every chart.
  const PALETTE = ["#56b4e9", "#009e73", "#e69f00", "#cc79a7", "#0072b2", "#d55e00",
                   "#8c6bb1", "#999933", "#44aa99", "#882255", "#6699cc", "#117733"];
  const QUANT = { p50: "#f0e442", p95: "#b5f5ec", p99: "#ff5370" };
  const TOTAL = "#e6e9ee";
  const state = {
    frame: null, hist: null, paused: false, behind: 0, windowS: 300, received: 0,
    sort: { key: "name", asc: true }, routeSort: { key: "rps", asc: false }, colors: new Map(), charts: {}, seriesKey: "",
    ws: null, retry: 0, retryAt: 0,
  };
  try {
    const saved = JSON.parse(localStorage.getItem("scalenode.dashboard") || "{}");
    if ([60, 300, 900].includes(saved.windowS)) state.windowS = saved.windowS;
  } catch (e) { /* private mode: defaults */ }

  // ---- formatting: fixed decimals and a unit on every number --------------------------
  const dash = "—";
  const fix = (x, d) => (x == null || !isFinite(x) ? dash : x.toFixed(d));
  const fmtRate = (x) => (x == null ? dash : x >= 1000 ? (x / 1000).toFixed(2) + "k" : x.toFixed(1));
  // Three significant digits down to 0.01 ms: a fast node's 0.12 ms is not "0.1".
  const fmtMs = (x) => (x == null ? dash : x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
  const fmtMsU = (x) => (x == null ? dash : fmtMs(x) + " ms");
  const fmtPct = (x, d) => (x == null || !isFinite(x) ? dash : x.toFixed(d) + " %");
  const two = (n) => String(n).padStart(2, "0");
  const hms = (t) => { const d = new Date(t * 1000); return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds()); };
  function fmtBytes(b) {
    if (b == null) return dash;
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return b.toFixed(1) + " " + units[i];
  }
  function fmtDur(s) {
    if (s == null) return dash;
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  // ---- stable node colours: from the name's hash, probing past colours already taken ----
  function colorOf(name) {
    if (state.colors.has(name)) return state.colors.get(name);
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    const taken = new Set(state.colors.values());
    let i = h % PALETTE.length;
    for (let n = 0; n < PALETTE.length && taken.has(PALETTE[i]); n++) i = (i + 1) % PALETTE.length;
    state.colors.set(name, PALETTE[i]);
    return PALETTE[i];
  }

  // ---- history: columns, trimmed to 15 minutes -----------------------------------------
  const MAX_POINTS = 3600;
  function mergeHistory(h) {
    if (h.full || !state.hist) { state.hist = h; return; }
    const H = state.hist;
    const n = H.t.length;
    for (const k of ["t", "rps", "p50", "p95", "p99", "error_pct", "cpu_percent", "nodes_live"]) H[k].push(...h[k]);
    for (const [name, vals] of Object.entries(h.nodes)) {
      if (!H.nodes[name]) H.nodes[name] = new Array(n).fill(null);
      H.nodes[name].push(...vals);
    }
    for (const name of Object.keys(H.nodes)) if (H.nodes[name].length < H.t.length) H.nodes[name].push(null);
    for (const [pool, s] of Object.entries(h.upstreams)) {
      if (!H.upstreams[pool]) H.upstreams[pool] = { rps: new Array(n).fill(null), error_pct: new Array(n).fill(null) };
      H.upstreams[pool].rps.push(...s.rps);
      H.upstreams[pool].error_pct.push(...s.error_pct);
    }
    const cut = H.t.length - MAX_POINTS;
    if (cut > 0) {
      for (const k of ["t", "rps", "p50", "p95", "p99", "error_pct", "cpu_percent", "nodes_live"]) H[k].splice(0, cut);
      for (const name of Object.keys(H.nodes)) {
        H.nodes[name].splice(0, cut);
        if (H.nodes[name].every((v) => v == null)) delete H.nodes[name];
      }
      for (const s of Object.values(H.upstreams)) { s.rps.splice(0, cut); s.error_pct.splice(0, cut); }
    }
  }
  function windowSlice(arr) {
    const t = state.hist.t;
    const from = (t.length ? t[t.length - 1] : 0) - state.windowS;
    let i = 0;
    while (i < t.length && t[i] < from) i++;
    return arr.slice(i);
  }

  // ---- sparklines: plain canvas ---------------------------------------------------------
  function spark(canvas, values, color) {
    if (!canvas) return;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    canvas.width = w * dpr; canvas.height = h * dpr;
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, w, h);
    const vals = values.slice(-120);
    const nums = vals.filter((v) => v != null);
    if (nums.length < 2) return;
    const max = Math.max(...nums, 1e-9);
    ctx.beginPath();
    let started = false;
    vals.forEach((v, i) => {
      if (v == null) { started = false; return; }
      const x = (i / (vals.length - 1)) * w, y = h - 2 - (v / max) * (h - 4);
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    });
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.stroke();
    ctx.lineTo(w, h); ctx.lineTo(0, h); ctx.closePath();
    ctx.globalAlpha = 0.12; ctx.fillStyle = color; ctx.fill();
  }

  // ---- uPlot charts, with a legend of their own that always shows the latest values ----
  const css = (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim();
  // Decimals a tick step needs (0.25 -> 2, 5 -> 0): every label of an axis gets the same.
  function decimals(step) {
    let d = 0;
    while (d < 6 && Math.abs(step * 10 ** d - Math.round(step * 10 ** d)) > 1e-6) d++;
    return d;
  }
  function axes(unit) {
    const grid = { stroke: css("--line"), width: 1 };
    return [
      // At least 90 px per time label: "23:09:52" never collides, at 800 px either.
      { stroke: css("--muted"), grid, ticks: grid, space: 90, values: (u, ticks) => ticks.map(clock) },
      { stroke: css("--muted"), grid, ticks: grid, size: 50, label: unit, labelSize: 18,
        values: (u, vals, axis, space, step) => vals.map((v) => v.toFixed(decimals(step))) },
    ];
  }
  function clock(t) {
    const d = new Date(t * 1000);
    const hm = two(d.getHours()) + ":" + two(d.getMinutes());
    return state.windowS > 300 ? hm : hm + ":" + two(d.getSeconds());
  }
  function lastValue(values) {
    return values.length ? values[values.length - 1] : null;
  }
  // The legend: each series' value at the cursor, or its newest one when not hovering.
  function renderLegend(u, idx) {
    const box = u.legendBox;
    if (!box || !u.spec) return;  // uPlot calls before the chart is fully made
    const items = u.spec.map((s, i) => {
      const values = u.data[i + 1] || [];
      const v = idx == null ? lastValue(values) : values[idx];
      return `<span class="li" data-series="${esc(s.label)}"><i style="background:${s.stroke}"></i>${esc(s.label)} <b class="num">${s.fmt(v)}</b></span>`;
    });
    const when = idx == null ? "now" : clock(u.data[0][idx]);
    box.innerHTML = `<span class="li when num">${when}</span>` + items.join("");
  }
  function makeChart(el, series, unit, key) {
    if (state.charts[key]) state.charts[key].destroy();
    el.innerHTML = "";
    const opts = {
      width: el.clientWidth || 600, height: 200,
      series: [{}, ...series.map(({ fmt, ...s }) => s)], axes: axes(unit),
      scales: {
        // The whole chosen window, filling from the right as history arrives.
        x: { time: true, range: (u, min, max) => [max - state.windowS, max] },
        y: { range: (u, min, max) => [0, Math.max(max * 1.15, unit === "ms" ? 0.1 : 1)] },
      },
      legend: { show: false }, cursor: { drag: { x: false, y: false } },
      hooks: { setCursor: [(u) => renderLegend(u, u.cursor.idx)] },
    };
    const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
    chart.spec = series;
    chart.legendBox = document.createElement("div");
    chart.legendBox.className = "legend";
    el.appendChild(chart.legendBox);
    state.charts[key] = chart;
    return chart;
  }
  function renderCharts() {
    const H = state.hist;
    if (!H) return;
    const t = windowSlice(H.t);
    // Only nodes with data in the window: a node gone for longer leaves chart and legend.
    const members = new Map((state.frame ? state.frame.nodes : []).map((n) => [n.name, n]));
    const names = Object.keys(H.nodes).sort()
      .filter((n) => members.has(n) && windowSlice(H.nodes[n]).some((v) => v != null));
    // A member out of the totals says why in the legend, rather than a number or a blank.
    const nodeFmt = (name) => (v) => {
      const m = state.frame && state.frame.nodes.find((n) => n.name === name);
      return m && !m.reporting ? (m.state || "stale") : rate(null, v);
    };
    const key = names.join("|");
    const rate = (u, v) => (v == null ? dash : fmtRate(v) + " req/s");
    if (key !== state.seriesKey || !state.charts.rps) {
      state.seriesKey = key;
      makeChart($("chart-rps"), [
        { label: "cluster", stroke: TOTAL, width: 2, fmt: (v) => rate(null, v) },
        ...names.map((n) => ({ label: n, stroke: colorOf(n), width: 1.5, fmt: nodeFmt(n) })),
      ], "req/s", "rps");
    }
    if (!state.charts.latency) {
      const lat = (v) => (v == null ? dash : fmtMs(v) + " ms");
      makeChart($("chart-latency"), [
        { label: "p50", stroke: QUANT.p50, width: 1.5, fmt: lat },
        { label: "p95", stroke: QUANT.p95, width: 1.5, dash: [6, 4], fmt: lat },
        { label: "p99", stroke: QUANT.p99, width: 2, fmt: lat },
      ], "ms", "latency");
    }
    state.charts.rps.setData([t, windowSlice(H.rps), ...names.map((n) => windowSlice(H.nodes[n]))]);
    state.charts.latency.setData([t, windowSlice(H.p50), windowSlice(H.p95), windowSlice(H.p99)]);
    for (const chart of [state.charts.rps, state.charts.latency]) renderLegend(chart, chart.cursor.idx);
  }

  // ---- tiles --------------------------------------------------------------------------
  // Threshold colours (with the number itself as the text): amber from `warn`, red from `bad`.
  const level = (x, warn, bad) => (x == null ? "" : x >= bad ? "state-bad" : x >= warn ? "state-warn" : "");
  function renderTiles(f) {
    const c = f.cluster;
    $("served-by").textContent = f.served_by;
    const st = c.states || { up: [], stale: [], down: [], left: [] };
    $("instance-count").textContent = String(st.up.length + st.stale.length);
    $("healthy-count").textContent = [`${c.healthy} healthy`, st.stale.length ? `${st.stale.length} stale` : "",
      st.down.length ? `${st.down.length} down` : ""].filter(Boolean).join(" · ");
    // Who the totals leave out, and why: a late node is not a node that left.
    const out = [...st.stale.map((n) => `${n} stale`), ...st.down.map((n) => `${n} down`)];
    $("reporting").textContent = `${c.reporting}/${c.nodes} reporting` + (out.length ? ` · left out of totals: ${out.join(", ")}` : "");
    $("reporting").className = st.stale.length || st.down.length ? "state-warn" : "";
    document.querySelectorAll("[data-agg]").forEach((el) => { el.textContent = `cluster + per node · ${c.reporting}/${c.nodes} reporting`; });
    $("rps").textContent = fmtRate(c.rps);
    $("errors").textContent = fix(c.error_pct, 2);
    $("errors").className = "num " + level(c.error_pct, 1, 5);
    $("p50").textContent = fmtMs(c.p50);
    $("p95").textContent = fmtMs(c.p95);
    $("p95").className = "num " + level(c.p95, 0.8 * c.replicas.p95_target_ms, c.replicas.p95_target_ms);
    $("p99").textContent = fmtMs(c.p99);
    $("inflight").textContent = fix(c.in_flight, c.in_flight < 1 ? 2 : 1);
    $("cpu").textContent = fix(c.cpu_percent, 1);
    $("cpu").className = "num " + level(c.cpu_percent, 0.8 * c.replicas.scale_up_cpu, c.replicas.scale_up_cpu);
    $("interval").textContent = String(f.interval);
    const r = c.replicas;
    const arrow = { up: ["▲", "up"], down: ["▼", "down-arrow"], hold: ["=", "hold"] }[r.direction];
    $("replicas").innerHTML = `${r.replicas} <small>${r.direction === "hold" ? "= now" : "from " + r.current}</small> <span class="${arrow[1]}">${arrow[0]}</span>`;
    $("replicas-reason").textContent = `${r.reason} · min ${r.minimum}, max ${r.maximum}`;
    const H = state.hist;
    spark($("spark-rps"), windowSlice(H.rps), css("--accent"));
    spark($("spark-errors"), windowSlice(H.error_pct), c.error_pct > 0 ? css("--bad") : css("--ok"));
    const banner = $("banner");
    if (c.problem) { banner.hidden = false; banner.className = "banner info"; banner.textContent = "▲ " + c.problem; }
    else if (state.ws && state.ws.readyState === 1) banner.hidden = true;
  }

  // ---- nodes table and load distribution -----------------------------------------------
  const STATE_ORDER = { up: 0, stale: 1, down: 2, left: 3 };
  function nodeState(n) {
    const state = n.state || (n.stale ? "stale" : "up");
    if (state === "left") return ["◆", "state-left", "left", "at " + hms(n.last_seen)];
    if (state === "down") return ["■", "state-bad", "down", "last seen " + hms(n.last_seen)];
    if (state === "stale") return ["◌", "state-stale", `stale ${n.age.toFixed(0)} s`, "out of totals"];
    if (n.skewed) return ["▲", "state-warn", "skewed"];
    return ["●", "state-ok", "up"];
  }
  function renderEvents(f) {
    const words = { joined: "joined", down: "down", left: "left", back: "back", restarted: "restarted" };
    const events = (f.events || []).slice(0, 6).map((e) =>
      `<span class="ev ev-${e.kind}">${esc(e.node)} ${words[e.kind] || esc(e.kind)} at ${hms(e.t)}</span>`);
    $("events").innerHTML = events.length ? events.join('<span class="sep">·</span>') : '<span class="muted">no membership changes seen</span>';
  }
  function renderNodes(f) {
    const { key, asc } = state.sort;
    const rank = (n) => STATE_ORDER[n.state || "up"] * 2 + (n.skewed ? 1 : 0);
    const rows = [...f.nodes].sort((a, b) => {
      const va = key === "state" ? rank(a) : a[key];
      const vb = key === "state" ? rank(b) : b[key];
      const cmp = typeof va === "string" ? va.localeCompare(vb) : (va ?? -1) - (vb ?? -1);
      return asc ? cmp : -cmp;
    });
    $("nodes").querySelector("tbody").innerHTML = rows.map((n) => {
      const [icon, cls, text, more] = nodeState(n);
      const color = colorOf(n.name);
      const live = n.reporting;
      const share = n.share == null ? null : n.share * 100, fair = (n.fair || 0) * 100;
      const self = n.name === f.served_by ? ' <span class="badge">this node</span>' : "";
      const v = (x) => (live ? x : dash);  // a node out of the totals shows no numbers
      return `<tr class="st-${esc(n.state || "up")} ${n.skewed ? "skewed" : ""}" data-node="${esc(n.name)}">
        <td class="${cls} state">${icon} ${esc(text)}${more ? `<small>${esc(more)}</small>` : ""}</td>
        <td><span class="swatch" style="background:${color}"></span>${esc(n.name)}${self}</td>
        <td class="opt">${esc(n.role)}</td>
        <td class="r opt">${fmtDur(n.uptime)}</td>
        <td class="r">${v(fmtRate(n.rps))}</td>
        <td>${share == null ? `<span class="share-pct num">${dash}</span>` : `<span class="share"><i style="width:${Math.min(share, 100).toFixed(1)}%;background:${color}"></i><b style="left:${fair.toFixed(1)}%"></b></span><span class="share-pct num">${fix(share, 1)} %</span>`}</td>
        <td class="r">${v(fmtMsU(n.p99))}</td>
        <td class="r">${v(fmtPct(n.error_pct, 2))}</td>
        <td class="r">${v(fix(n.in_flight, n.in_flight < 1 ? 2 : 1))}</td>
        <td class="r opt">${v(fix(n.cpu_percent, 1) + " %")}</td>
        <td class="r opt">${v(fmtBytes(n.rss_bytes))}</td>
        <td class="r">${n.age < 60 ? fix(n.age, 1) + " s" : fmtDur(n.age)}</td></tr>`;
    }).join("");
    renderEvents(f);
    document.querySelectorAll("#nodes th").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.sort === key);
      th.classList.toggle("asc", th.dataset.sort === key && asc);
    });
    const live = f.nodes.filter((n) => n.reporting);
    $("distribution").innerHTML = live.length ? live.map((n) => {
      const share = (n.share || 0) * 100;
      const flag = n.skewed ? ' <span class="state-warn">▲</span>' : "";
      return `<div class="dist-row"><span class="name"><span class="swatch" style="background:${colorOf(n.name)}"></span>${esc(n.name)}${flag}</span>
        <span class="dist-bar"><i style="width:${Math.min(share, 100).toFixed(1)}%;background:${colorOf(n.name)}"></i><b style="left:${(n.fair * 100).toFixed(1)}%"></b></span>
        <span class="r num">${n.share == null ? dash : fix(share, 1) + " %"}</span></div>`;
    }).join("") + `<div class="sub">fair share ${fix(100 / live.length, 1)} % each · flagged ▲ when a share stays outside 0.5–1.5× fair</div>`
      : '<div class="empty">No node reporting yet.</div>';
  }

  // ---- routes: per route over the reporting nodes, sortable ------------------------------
  function renderRoutes(f) {
    const { key, asc } = state.routeSort;
    const routes = [...(f.cluster.routes || [])].sort((a, b) => {
      const va = a[key], vb = b[key];
      const cmp = typeof va === "string" ? va.localeCompare(vb) : (va ?? -1) - (vb ?? -1);
      return asc ? cmp : -cmp;
    });
    const classes = (r) => ["2xx", "3xx", "4xx", "5xx"].filter((k) => r.status_rps[k] > 0)
      .map((k) => `<span class="sc sc-${k}">${k} ${fmtRate(r.status_rps[k])}</span>`).join(" ") || dash;
    $("routes").querySelector("tbody").innerHTML = routes.map((r) => `<tr>
        <td class="route" title="${esc(r.route)}">${esc(r.route)}</td>
        <td class="r">${fmtRate(r.rps)}</td>
        <td class="r">${r.share == null ? dash : fix(r.share * 100, 1) + " %"}</td>
        <td class="r">${fmtMsU(r.p50)}</td><td class="r">${fmtMsU(r.p99)}</td>
        <td class="r ${level(r.client_error_pct, 5, 25)}">${fmtPct(r.client_error_pct, 1)}</td>
        <td class="r ${level(r.error_pct, 1, 5)}">${fmtPct(r.error_pct, 1)}</td>
        <td class="classes">${classes(r)}</td></tr>`).join("")
      || `<tr><td colspan="8" class="empty">No route answered on a reporting node in the last 10 s.</td></tr>`;
    document.querySelectorAll("#routes th").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.sort === key);
      th.classList.toggle("asc", th.dataset.sort === key && asc);
    });
  }

  // ---- plugins: a specific card for ratelimit, cache and queue, a generic one for the rest
  const kvRows = (pairs) => pairs.map(([k, v, u]) => `<span class="k">${esc(k)}</span><span class="v">${v}</span><span class="k">${u || ""}</span>`).join("");
  function pct(a, total) { return total > 0 ? (100 * a / total).toFixed(1) : dash; }
  function ratelimitCard(p, nodes) {
    const r = p.rates, c = p.counters;
    const checks = (r.allowed || 0) + (r.limited || 0);
    return `<div class="card"><h4>Rate limit <span class="hint">${Object.keys(p.routes).length} route(s) · ${p.nodes}/${nodes} nodes</span></h4>
      <div class="big2"><div><span>allowed</span>${fmtRate(r.allowed || 0)}<small class="hint">/s</small></div>
      <div class="${(r.limited || 0) > 0 ? "state-warn" : ""}"><span>limited</span>${fmtRate(r.limited || 0)}<small class="hint">/s</small></div>
      <div><span>limited share</span>${pct(r.limited || 0, checks)}<small class="hint">%</small></div></div>
      <div class="kv">${kvRows([["allowed, total", (c.allowed || 0).toLocaleString()], ["limited, total", (c.limited || 0).toLocaleString()],
        ["backend errors", (c.backend_errors || 0).toLocaleString()], ["let through by outage", (c.unlimited_by_outage || 0).toLocaleString()]])}</div></div>`;
  }
  function cacheCard(p, nodes) {
    const r = p.rates, c = p.counters, g = p.gauges;
    // One time base, stated once in the caption: rates over the last 10 s (no lookups in
    // that time: the ratios are "—", not a stale since-start figure).
    const src = r;
    // The plugin counts every lookup (coalesced waiters, stale and bypass included), so the
    // ratios here match its own hit_ratio; the sum is for snapshots without that counter.
    const lookups = src.lookups != null ? src.lookups
      : (src.hits_l1 || 0) + (src.hits_l2 || 0) + (src.misses || 0) + (src.stale || 0);
    const hits = (src.hits_l1 || 0) + (src.hits_l2 || 0);
    return `<div class="card"><h4>Cache <span class="hint">${Object.keys(p.routes).length} route(s) · ${p.nodes}/${nodes} nodes · last 10 s</span></h4>
      <div class="big2"><div><span>hits</span>${fmtRate(hits)}<small class="hint">/s</small></div>
      <div><span>L1 hit ratio</span>${pct(src.hits_l1 || 0, lookups)}<small class="hint">%</small></div>
      <div><span>L2 hit ratio</span>${pct(src.hits_l2 || 0, lookups)}<small class="hint">%</small></div>
      <div><span>misses</span>${fmtRate(r.misses || 0)}<small class="hint">/s</small></div></div>
      <div class="kv">${kvRows([["stale served", fmtRate(r.stale || 0), "/s"], ["bypass", fmtRate(r.bypass || 0), "/s"],
        ["evictions", fmtRate(r.evictions || 0), "/s"], ["lock waits", fmtRate(r.lock_waits || 0), "/s"], ["coalesced", fmtRate(r.coalesced || 0), "/s"],
        ["L1 entries", (g.l1_entries || 0).toLocaleString(), ""], ["L1 size", fmtBytes(g.l1_bytes || 0), ""]])}</div></div>`;
  }
  function queueCard(p, nodes) {
    // Depth, consumers, dead jobs and the oldest job's age are read from the broker and the
    // shared job state: counted once per queue, not per node.
    const r = p.rates, g = p.cluster_gauges || {};
    const oldest = g.oldest_job_age_seconds;
    return `<div class="card"><h4>Queue ${esc(p.card || "")} <span class="hint">${Object.keys(p.routes).length} route(s) · ${p.nodes}/${nodes} nodes</span></h4>
      <div class="big2"><div><span>waiting</span>${(g.depth || 0).toLocaleString()}</div>
      <div><span>published</span>${fmtRate(r.published || 0)}<small class="hint">/s</small></div>
      <div><span>done</span>${fmtRate((r.completed || 0) + (r.failed || 0))}<small class="hint">/s</small></div></div>
      <div class="kv">${kvRows([["oldest job waiting", oldest == null ? dash : oldest > 0 ? fmtDur(oldest) : "none", ""],
        ["retries", fmtRate(r.retried || 0), "/s"], ["failed (4xx)", fmtRate(r.failed || 0), "/s"],
        ["refused (503)", fmtRate(r.refused || 0), "/s"], ["dead", (g.dead_jobs || 0).toLocaleString(), "jobs"],
        ["consumers", (g.consumers || 0).toLocaleString(), ""], ["unacked", (g.unacked || 0).toLocaleString(), ""]])}</div></div>`;
  }
  function shardSetCard(p, nodes) {
    // Per member: this cluster's req/s and fallbacks (rates summed over nodes), and what the
    // busiest node reads of the member (p99, its pool, replica lag, buckets in its map).
    const r = p.rates, g = p.cluster_gauges || {};
    const members = Object.keys(g).filter((k) => k.endsWith("_buckets")).map((k) => k.slice(0, -8)).sort();
    const rows = members.map((m) => {
      const rps = (r[m + "_reads"] || 0) + (r[m + "_writes"] || 0);
      const pool = g[m + "_pool_max"] != null ? `${g[m + "_pool_in_use"] || 0} / ${g[m + "_pool_max"]}` : dash;
      const lag = g[m + "_replica_lag_bytes"] != null ? fmtBytes(g[m + "_replica_lag_bytes"]) : dash;
      const down = (r[m + "_unavailable"] || 0) > 0 ? "state-bad" : "";
      return `<tr class="${down}"><td>${esc(m)}</td><td class="r">${fmtRate(rps)}</td><td class="r">${fmtMsU(g[m + "_p99_ms"])}</td>
        <td class="r">${pool}</td><td class="r">${lag}</td><td class="r">${fmtRate(r[m + "_fallbacks"] || 0)}</td>
        <td class="r">${(g[m + "_buckets"] || 0).toLocaleString()}</td></tr>`;
    }).join("");
    return `<div class="card"><h4>Shard set ${esc(p.card || "")} <span class="hint">map v${g.map_version || 0} · ${Object.keys(p.routes).length} route(s) · ${p.nodes}/${nodes} nodes</span></h4>
      <table class="grid"><thead><tr><th>member</th><th class="r">req/s</th><th class="r">p99</th><th class="r">pool</th>
      <th class="r">replica lag</th><th class="r">fallbacks/s</th><th class="r">buckets</th></tr></thead><tbody>${rows}</tbody></table></div>`;
  }
  function genericCard(name, p, nodes) {
    const rows = Object.keys(p.counters).sort().map((k) => [k.replace(/_/g, " "), `${fmtRate(p.rates[k] || 0)} /s`, `${(p.counters[k] || 0).toLocaleString()} total`]);
    const gauges = Object.keys(p.gauges).sort().map((k) => [k.replace(/_/g, " "), (p.gauges[k] || 0).toLocaleString(), "now"]);
    const shared = p.cluster_gauges || {};  // read from a shared backend: the cluster's value, not a sum
    gauges.push(...Object.keys(shared).sort().map((k) => [k.replace(/_/g, " "), (shared[k] || 0).toLocaleString(), "cluster"]));
    return `<div class="card"><h4>${esc(name)} <span class="hint">${Object.keys(p.routes).length} route(s) · ${p.nodes}/${nodes} nodes</span></h4>
      <div class="kv">${kvRows([...rows, ...gauges]) || '<span class="empty">no counters</span>'}</div></div>`;
  }
  function renderPlugins(f) {
    const plugins = f.cluster.plugins || {};
    const cards = Object.keys(plugins).sort().map((name) => {
      if (name === "ratelimit") return ratelimitCard(plugins[name], f.cluster.reporting);
      if (name === "cache") return cacheCard(plugins[name], f.cluster.reporting);
      if (plugins[name].name === "queue") return queueCard(plugins[name], f.cluster.reporting);
      if (plugins[name].name === "store") return shardSetCard(plugins[name], f.cluster.reporting);
      return genericCard(name, plugins[name], f.cluster.reporting);
    });
    $("plugins").innerHTML = cards.join("") || '<div class="card empty">No plugin on any route of the reporting nodes.</div>';
  }

  // ---- upstreams: one card per pool, breaker state as "k of N nodes open" ---------------
  function breaker(m) {
    if (m.open > 0) return ["■", "state-bad", `${m.open} of ${m.nodes} nodes open`];
    if (m.half_open > 0) return ["◆", "state-warn", `${m.half_open} of ${m.nodes} half-open`];
    return ["●", "state-ok", `0 of ${m.nodes} nodes open`];
  }
  // The pool's resilience counters, each only once it has happened on a reporting node (the
  // ring's balance only for hash pools): a rate over the last 10 s, the total in its tooltip.
  const POOL_STATS = [["retries", "retries", ""], ["budget_exhausted", "budget exhausted", "state-warn"],
                      ["rerouted", "rerouted", ""], ["rejected", "rejected 503", "state-bad"]];
  function poolStats(p) {
    const c = p.counters || {}, r = p.rates || {};
    const items = POOL_STATS.filter(([k]) => (c[k] || 0) > 0).map(([k, label, warn]) => {
      const cls = (r[k] || 0) > 0 ? warn : "";
      return `<span class="${cls}" title="${(c[k] || 0).toLocaleString()} since start, summed over nodes">${label} ${fmtRate(r[k] || 0)}/s</span>`;
    });
    if (p.balance === "hash" && p.ring_max_deviation != null) {
      const dev = p.ring_max_deviation * 100;
      items.push(`<span class="${level(dev, 10, 25)}" title="the worst member's distance from its fair share of the ring, worst node">ring ±${fix(dev, 1)} %</span>`);
    }
    return items.length ? `<div class="pstats">${items.join('<span class="sep">·</span>')}</div>` : "";
  }
  function memberCounts(m) {
    const parts = [];
    if (m.trips > 0) parts.push(`${m.trips.toLocaleString()} trip${m.trips === 1 ? "" : "s"}`);
    if (m.rejections > 0) parts.push(`${m.rejections.toLocaleString()} rejected`);
    return parts.length ? `<span class="counts" title="since start, summed over nodes">${parts.join(" · ")}</span>` : "";
  }
  function renderUpstreams(f) {
    const pools = f.cluster.upstreams || {};
    const H = state.hist;
    const html = Object.keys(pools).sort().map((name) => {
      const p = pools[name];
      const members = p.members.map((m) => {
        const [icon, cls, text] = breaker(m);
        const health = m.unhealthy > 0 ? `<span class="state-warn">▲ ${m.unhealthy} unhealthy</span>` : '<span class="state-ok">healthy</span>';
        return `<div class="member"><div class="mhead"><span class="url" title="${esc(m.url)}">${esc(m.url)}</span>${memberCounts(m)}</div>
          <div class="mrow"><span class="${cls}">${icon} ${text}</span>${health}<span class="r">${fmtRate(m.rps)} req/s · ${fix(m.error_pct, 1)} % err</span></div></div>`;
      }).join("");
      return `<div class="card"><h4>${esc(name)} <span class="hint">${esc(p.balance)} · ${p.nodes} node(s)</span></h4>
        <div class="big2"><div><span>requests</span>${fmtRate(p.rps)}<small class="hint">/s</small></div>
        <div class="${level(p.error_pct, 1, 5)}"><span>errors</span>${fix(p.error_pct, 1)}<small class="hint">%</small></div></div>
        ${poolStats(p)}<canvas class="vol" data-pool="${esc(name)}"></canvas>${members}</div>`;
    }).join("");
    $("upstreams").innerHTML = html || '<div class="card empty">No upstream pool configured on the reporting nodes.</div>';
    document.querySelectorAll("canvas.vol").forEach((cv) => {
      const s = H.upstreams[cv.dataset.pool];
      if (s) spark(cv, s.rps, css("--accent"));
    });
  }

  // ---- render loop, link state, data age ------------------------------------------------
  function render() {
    const f = state.frame;
    if (!f || !state.hist) return;
    renderTiles(f);
    renderCharts();
    renderNodes(f);
    renderRoutes(f);
    renderPlugins(f);
    renderUpstreams(f);
  }
  function setLink(kind, text) {
    const el = $("link");
    el.className = "pill " + kind;
    el.textContent = text;
  }
  function tickAge() {
    const f = state.frame;
    if (f) {
      const age = Math.max(0, Date.now() / 1000 - f.t);
      $("age").textContent = age.toFixed(1) + " s ago";
      const stale = age > 3 * f.interval;
      document.querySelectorAll(".tile").forEach((t) => t.classList.toggle("stale", stale));
    }
    if (!state.ws || state.ws.readyState !== 1) {
      const left = Math.max(0, (state.retryAt - Date.now()) / 1000);
      const banner = $("banner");
      banner.hidden = false;
      banner.className = "banner";
      banner.textContent = `■ Disconnected from ${body.dataset.node}: retrying in ${left.toFixed(0)} s (the last data stays on screen)`;
    }
    if (state.paused) setLink("paused", `❚❚ paused · ${state.behind} updates behind`);
  }
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + body.dataset.feed);
    state.ws = ws;
    setLink("wait", "◌ connecting");
    ws.onopen = () => { state.retry = 0; $("banner").hidden = true; if (!state.paused) setLink("live", "● live"); };
    ws.onmessage = (ev) => {
      const frame = JSON.parse(ev.data);
      mergeHistory(frame.history);
      state.frame = frame;
      state.received++;
      if (state.paused) { state.behind++; return; }
      render();
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      // Backoff with jitter, so a restarted node is not hit by every tab at once.
      const delay = Math.min(10000, 1000 * 2 ** state.retry) * (0.75 + Math.random() * 0.5);
      state.retry = Math.min(state.retry + 1, 4);
      state.retryAt = Date.now() + delay;
      if (!state.paused) setLink("down", "■ reconnecting");
      setTimeout(connect, delay);
    };
  }
  function setPaused(p) {
    state.paused = p;
    $("pause").classList.toggle("on", p);
    $("pause").textContent = p ? "▶ Resume" : "❚❚ Pause";
    if (!p) {
      state.behind = 0;
      setLink(state.ws && state.ws.readyState === 1 ? "live" : "down", state.ws && state.ws.readyState === 1 ? "● live" : "■ reconnecting");
      render();
    }
  }

  // ---- controls ---------------------------------------------------------------------------
  $("pause").addEventListener("click", () => setPaused(!state.paused));
  document.addEventListener("keydown", (e) => {
    if (e.code === "Space" && e.target === document.body) { e.preventDefault(); setPaused(!state.paused); }
  });
  document.querySelectorAll(".seg button").forEach((b) => {
    b.classList.toggle("on", Number(b.dataset.window) === state.windowS);
    b.addEventListener("click", () => {
      state.windowS = Number(b.dataset.window);
      document.querySelectorAll(".seg button").forEach((x) => x.classList.toggle("on", x === b));
      try { localStorage.setItem("scalenode.dashboard", JSON.stringify({ windowS: state.windowS })); } catch (e) { /* ignore */ }
      render();
    });
  });
  document.querySelectorAll("#nodes th").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.sort;
    state.sort = { key, asc: state.sort.key === key ? !state.sort.asc : key === "name" || key === "role" };
    if (state.frame) renderNodes(state.frame);
  }));
  document.querySelectorAll("#routes th").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.sort;
    state.routeSort = { key, asc: state.routeSort.key === key ? !state.routeSort.asc : key === "route" };
    if (state.frame) renderRoutes(state.frame);
  }));
  window.addEventListener("resize", () => {
    for (const [key, chart] of Object.entries(state.charts)) {
      const el = $(key === "rps" ? "chart-rps" : "chart-latency");
      chart.setSize({ width: el.clientWidth, height: 200 });
    }
    render();
  });
  setInterval(tickAge, 250);
  connect();
})();
