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

  const checked = (name) =>
    [...document.querySelectorAll(`#plan-form input[name=${name}]:checked`)].map((x) => x.value);
  const isInfer = () => $("plan-task").value === "inference";

  function buildRequest() {
    const req = { model: $("plan-model").value.trim() };
    const common = [["plan-max-gpus", "max_gpus"], ["plan-headroom", "min_headroom"]];
    const own = isInfer()
      ? [["plan-prompt-len", "prompt_len"], ["plan-new-tokens", "new_tokens"],
        ["plan-concurrency", "concurrency"], ["plan-max-usd-h", "max_usd_per_hour"]]
      : [["plan-tokens", "tokens"], ["plan-global-batch", "global_batch"], ["plan-seq-len", "seq_len"],
        ["plan-max-usd", "max_usd"], ["plan-max-hours", "max_hours"]];
    for (const [id, key] of [...own, ...common]) {
      const v = num(id);
      if (v !== null) req[key] = v;
    }
    if (isInfer()) {
      req.task = "inference";
      req.engines = checked("engines");
      req.weights = checked("weights");
    } else {
      req.methods = checked("methods");
    }
    const gpus = $("plan-gpus").value.trim();
    if (gpus) req.gpus_from = gpus.split(",").map((s) => s.trim()).filter(Boolean);
    return req;
  }

  // table columns per task: [key, header, cell(c)]
  const fix = (v, d) => (v === null || v === undefined ? "–" : v.toFixed(d));
  const gib = (b) => (b / GIB).toFixed(1);
  const COLUMNS = {
    train: [
      ["n_gpus", "GPUs", (c) => c.n_gpus], ["gpu", "type", (c) => c.gpu],
      ["layout", "layout", (c) => c.layout], ["method", "method", (c) => c.method],
      ["grad_ckpt", "ckpt", (c) => (c.grad_ckpt ? "on" : "off")],
      ["micro_batch", "micro-batch", (c) => c.micro_batch], ["grad_accum", "accum", (c) => c.grad_accum],
      ["peak_device_bytes", "peak GiB", (c) => gib(c.peak_device_bytes)],
      ["headroom_bytes", "free GiB", (c) => gib(c.headroom_bytes)],
      ["time_s", "hours", (c) => fmtHours(c.time_s)], ["cost_usd", "USD", (c) => fix(c.cost_usd, 2)],
    ],
    inference: [
      ["n_gpus", "GPUs", (c) => c.n_gpus], ["gpu", "type", (c) => c.gpu],
      ["engine", "engine", (c) => c.engine], ["method", "weights", (c) => c.method],
      ["tp", "TP", (c) => c.tp], ["replicas", "replicas", (c) => c.replicas],
      ["micro_batch", "seqs/replica", (c) => c.micro_batch],
      ["max_concurrency", "holds", (c) => c.max_concurrency],
      ["peak_device_bytes", "peak GiB", (c) => gib(c.peak_device_bytes)],
      ["headroom_bytes", "free GiB", (c) => gib(c.headroom_bytes)],
      ["tokens_per_s", "tok/s", (c) => fix(c.tokens_per_s, 0)],
      ["usd_per_hour", "USD/h", (c) => fix(c.usd_per_hour, 2)],
      ["usd_per_mtok", "USD/Mtok", (c) => fix(c.usd_per_mtok, 3)],
    ],
  };
  const taskOf = () => (report && report.task === "inference" ? "inference" : "train");

  function renderHead() {
    const tr = document.createElement("tr");
    const cols = [["mark", "·"], ...COLUMNS[taskOf()].map(([k, h]) => [k, h]), ["status", "status"]];
    for (const [key, text] of cols) {
      const th = document.createElement("th");
      th.scope = "col";
      th.dataset.key = key;
      th.textContent = text;
      th.tabIndex = 0;
      const sort = () => {
        if (sortKey === key) sortDir = -sortDir;
        else { sortKey = key; sortDir = 1; }
        if (report) renderTable();
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
      tr.appendChild(th);
    }
    $("plan-head").replaceChildren(tr);
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
      if (typeof x === "string" || typeof y === "string") {
        const o = String(x).localeCompare(String(y));
        if (o) return o * sortDir;
        return rank(a) - rank(b);
      }
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
      const best = taskOf() === "inference" ? "highest tok/s" : "fastest";
      const mark = c.cheapest && c.fastest ? `cheapest, ${best}` : c.cheapest ? "cheapest" : c.fastest ? best : c.pareto ? "front" : "";
      const cells = [mark, ...COLUMNS[taskOf()].map((col) => col[2](c)),
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
    const infer = taskOf() === "inference";
    // training: time (x) vs cost (y); serving: throughput proxy (x) vs price per hour (y)
    const X = infer ? (c) => c.tokens_per_s : (c) => c.time_s / 3600;
    const Y = infer ? (c) => c.usd_per_hour : (c) => c.cost_usd;
    const ok = report.candidates.filter((c) => c.status === "ok" && X(c) > 0 && Y(c) > 0);
    const W = svg.clientWidth || 900, H = svg.clientHeight || 320, L = 60, B = 36, T = 10, R = 14;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    if (!ok.length) {
      svg.appendChild(svgEl("text", { x: L, y: H / 2 }, "nothing fits the limits"));
      return;
    }
    const lx = ok.map((c) => Math.log10(X(c))), ly = ok.map((c) => Math.log10(Y(c)));
    const [x0, x1] = [Math.min(...lx) - 0.05, Math.max(...lx) + 0.05];
    const [y0, y1] = [Math.min(...ly) - 0.05, Math.max(...ly) + 0.05];
    const sx = (v) => L + ((v - x0) / (x1 - x0 || 1)) * (W - L - R);
    const sy = (v) => H - B - ((v - y0) / (y1 - y0 || 1)) * (H - B - T);
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (let e = Math.ceil(x0); e <= x1; e++) {
      svg.appendChild(svgEl("text", { x: sx(e) - 8, y: H - B + 14 }, infer ? `${10 ** e}` : `${10 ** e} h`));
    }
    for (let e = Math.ceil(y0); e <= y1; e++) {
      svg.appendChild(svgEl("text", { x: 4, y: sy(e) + 4 }, infer ? `$${10 ** e}/h` : `$${10 ** e}`));
    }
    svg.appendChild(svgEl("text", { x: W / 2 - 60, y: H - 4 }, infer ? "decode tok/s proxy (log) →" : "time (log) →"));
    svg.appendChild(svgEl("text", { x: 4, y: T + 2 }, infer ? "USD/hour" : "cost"));
    ok.sort((a, b) => Number(a.pareto) - Number(b.pareto));
    for (const c of ok) {
      const cls = "dot" + (c.pareto ? " front" : "") + (c.cheapest || c.fastest ? " mark" : "");
      const dot = svgEl("circle", { class: cls, r: c.pareto ? 5 : 3,
        cx: sx(Math.log10(X(c))), cy: sy(Math.log10(Y(c))) });
      const what = infer
        ? `${c.n_gpus}× ${c.gpu} ${c.engine} ${c.method} TP${c.tp}×${c.replicas}: ` +
          `${fix(c.tokens_per_s, 0)} tok/s, $${fix(c.usd_per_hour, 2)}/h`
        : `${c.n_gpus}× ${c.gpu} ${c.layout} ${c.method} ` +
          `mb ${c.micro_batch}×${c.grad_accum}: ${fmtHours(c.time_s)} h, $${c.cost_usd.toFixed(2)}`;
      dot.appendChild(svgEl("title", {}, what));
      svg.appendChild(dot);
    }
  }

  function render() {
    $("plan-output").hidden = false;
    const ok = report.candidates.filter((c) => c.status === "ok").length;
    const ch = report.cheapest, fa = report.fastest;
    const infer = taskOf() === "inference";
    let text = `${report.candidates.length} candidates evaluated, ${ok} fit the limits, ` +
      `${report.front.length} on the ${infer ? "price-vs-throughput" : "time-vs-cost"} front.`;
    if (infer) {
      if (ch) text += ` Cheapest: ${ch.n_gpus}× ${ch.gpu} ${ch.engine} ($${fix(ch.usd_per_hour, 2)}/h).`;
      if (fa) text += ` Highest throughput: ${fa.n_gpus}× ${fa.gpu} ${fa.engine} (${fix(fa.tokens_per_s, 0)} tok/s).`;
    } else {
      if (ch) text += ` Cheapest: ${ch.n_gpus}× ${ch.gpu} ($${ch.cost_usd.toFixed(2)}).`;
      if (fa) text += ` Fastest: ${fa.n_gpus}× ${fa.gpu} (${fmtHours(fa.time_s)} h).`;
    }
    $("plan-summary").textContent = text;
    const infer2 = taskOf() === "inference";
    if (infer2 && sortKey === "cost_usd") sortKey = "usd_per_hour";
    if (!infer2 && sortKey === "usd_per_hour") sortKey = "cost_usd";
    renderHead();
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
    $("plan-task").addEventListener("change", () => {
      const infer = isInfer();
      document.querySelector("#plan-form .plan-train").hidden = infer;
      document.querySelector("#plan-form .plan-infer").hidden = !infer;
    });
    renderHead();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
