// vramcalc planner view: POST /v1/plan, a time-vs-cost scatter and a sortable table.
// Kept apart from app.js (the estimate form); no dependencies, no external assets.
"use strict";

(() => {
  const GIB = 2 ** 30;
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  let report = null;
  let sortKey = "cost_usd";
  let sortDir = 1;

  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function num(id) {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  }

  function buildRequest() {
    const req = { model: $("plan-model").value.trim() };
    req.tokens = num("plan-tokens");
    for (const [id, key] of [["plan-global-batch", "global_batch"], ["plan-seq-len", "seq_len"],
      ["plan-max-gpus", "max_gpus"], ["plan-max-usd", "max_usd"], ["plan-max-hours", "max_hours"],
      ["plan-headroom", "min_headroom"]]) {
      const v = num(id);
      if (v !== null) req[key] = v;
    }
    req.methods = [...document.querySelectorAll("#plan-form input[name=methods]:checked")].map((x) => x.value);
    const gpus = $("plan-gpus").value.trim();
    if (gpus) req.gpus_from = gpus.split(",").map((s) => s.trim()).filter(Boolean);
    return req;
  }

  function errorText(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    return `HTTP ${status}`;
  }

  async function submit(ev) {
    ev.preventDefault();
    const err = $("plan-error");
    err.hidden = true;
    $("plan-go").disabled = true;
    $("plan-go").textContent = "Planning…";
    try {
      const resp = await fetch("/v1/plan", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(buildRequest()),
      });
      const body = await resp.json().catch(() => null);
      if (!resp.ok) throw new Error(errorText(body, resp.status));
      report = body;
      render();
    } catch (e) {
      err.textContent = String(e.message || e);
      err.hidden = false;
    } finally {
      $("plan-go").disabled = false;
      $("plan-go").textContent = "Plan";
    }
  }

  function rows() {
    const all = $("plan-all").checked;
    const list = report.candidates.filter((c) => all || c.status === "ok");
    const rank = (c) => (c.cheapest ? 0 : c.fastest ? 1 : c.pareto ? 2 : 3);
    const val = (c) => {
      if (sortKey === "mark") return rank(c);
      const v = c[sortKey];
      return v === null || v === undefined ? Infinity : v;
    };
    return list.sort((a, b) => {
      const x = val(a), y = val(b);
      if (x < y) return -sortDir;
      if (x > y) return sortDir;
      return rank(a) - rank(b); // ties: the marked and front rows first
    });
  }

  function fmtHours(s) {
    return s === null || s === undefined ? "–" : (s / 3600).toFixed(s < 360 ? 2 : 1);
  }

  function renderTable() {
    const body = $("plan-table").querySelector("tbody");
    body.replaceChildren();
    for (const c of rows()) {
      const tr = document.createElement("tr");
      if (c.pareto) tr.className = "front";
      if (c.status !== "ok") tr.className = "out";
      const mark = c.cheapest && c.fastest ? "cheapest, fastest" : c.cheapest ? "cheapest" : c.fastest ? "fastest" : c.pareto ? "front" : "";
      const cells = [mark, c.n_gpus, c.gpu, c.layout, c.method, c.grad_ckpt ? "on" : "off",
        c.micro_batch, c.grad_accum, (c.peak_device_bytes / GIB).toFixed(1),
        (c.headroom_bytes / GIB).toFixed(1), fmtHours(c.time_s),
        c.cost_usd === null || c.cost_usd === undefined ? "–" : c.cost_usd.toFixed(2),
        c.status === "ok" ? "ok" : `${c.status}: ${c.reason}`];
      for (const v of cells) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    for (const th of $("plan-table").querySelectorAll("th")) {
      th.setAttribute("aria-sort", th.dataset.key === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none");
    }
  }

  function renderScatter() {
    const svg = $("plan-scatter");
    svg.replaceChildren();
    const ok = report.candidates.filter((c) => c.status === "ok" && c.time_s > 0 && c.cost_usd > 0);
    const W = svg.clientWidth || 900, H = svg.clientHeight || 320, L = 60, B = 36, T = 10, R = 14;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    if (!ok.length) {
      svg.appendChild(svgEl("text", { x: L, y: H / 2 }, "nothing fits the limits"));
      return;
    }
    const lx = ok.map((c) => Math.log10(c.time_s / 3600)), ly = ok.map((c) => Math.log10(c.cost_usd));
    const [x0, x1] = [Math.min(...lx) - 0.05, Math.max(...lx) + 0.05];
    const [y0, y1] = [Math.min(...ly) - 0.05, Math.max(...ly) + 0.05];
    const sx = (v) => L + ((v - x0) / (x1 - x0 || 1)) * (W - L - R);
    const sy = (v) => H - B - ((v - y0) / (y1 - y0 || 1)) * (H - B - T);
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (let e = Math.ceil(x0); e <= x1; e++) {
      svg.appendChild(svgEl("text", { x: sx(e) - 8, y: H - B + 14 }, `${10 ** e} h`));
    }
    for (let e = Math.ceil(y0); e <= y1; e++) {
      svg.appendChild(svgEl("text", { x: 4, y: sy(e) + 4 }, `$${10 ** e}`));
    }
    svg.appendChild(svgEl("text", { x: W / 2 - 60, y: H - 4 }, "time (log) →"));
    svg.appendChild(svgEl("text", { x: 4, y: T + 2 }, "cost"));
    ok.sort((a, b) => Number(a.pareto) - Number(b.pareto));
    for (const c of ok) {
      const cls = "dot" + (c.pareto ? " front" : "") + (c.cheapest || c.fastest ? " mark" : "");
      const dot = svgEl("circle", { class: cls, r: c.pareto ? 5 : 3,
        cx: sx(Math.log10(c.time_s / 3600)), cy: sy(Math.log10(c.cost_usd)) });
      dot.appendChild(svgEl("title", {}, `${c.n_gpus}× ${c.gpu} ${c.layout} ${c.method} ` +
        `mb ${c.micro_batch}×${c.grad_accum}: ${fmtHours(c.time_s)} h, $${c.cost_usd.toFixed(2)}`));
      svg.appendChild(dot);
    }
  }

  function render() {
    $("plan-output").hidden = false;
    const ok = report.candidates.filter((c) => c.status === "ok").length;
    const ch = report.cheapest, fa = report.fastest;
    let text = `${report.candidates.length} candidates evaluated, ${ok} fit the limits, ` +
      `${report.front.length} on the time-vs-cost front.`;
    if (ch) text += ` Cheapest: ${ch.n_gpus}× ${ch.gpu} ($${ch.cost_usd.toFixed(2)}).`;
    if (fa) text += ` Fastest: ${fa.n_gpus}× ${fa.gpu} (${fmtHours(fa.time_s)} h).`;
    $("plan-summary").textContent = text;
    renderScatter();
    renderTable();
    for (const [id, items] of [["plan-excluded", report.excluded], ["plan-notes", report.notes]]) {
      const ul = $(id);
      ul.replaceChildren();
      for (const t of items) {
        const li = document.createElement("li");
        li.textContent = t;
        ul.appendChild(li);
      }
    }
    document.body.dataset.planReady = "true";
  }

  function init() {
    const form = $("plan-form");
    if (!form) return;
    form.addEventListener("submit", submit);
    $("plan-all").addEventListener("change", () => report && renderTable());
    for (const th of $("plan-table").querySelectorAll("th")) {
      th.tabIndex = 0;
      const sort = () => {
        if (sortKey === th.dataset.key) sortDir = -sortDir;
        else { sortKey = th.dataset.key; sortDir = 1; }
        if (report) renderTable();
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
