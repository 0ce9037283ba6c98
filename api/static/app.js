// vramcalc web calculator: plain JS, no build step, no external assets.
// The form maps 1:1 to the POST /v1/estimate body (EstimateRequest); the URL query string
// holds the same request so a result can be shared.
"use strict";

const GIB = 2 ** 30;
const COMPONENTS = ["base", "params", "activations", "gradients", "optimizer"];
const PHASES = ["load", "generation", "forward", "loss", "backward", "optimizer"];
const $ = (id) => document.getElementById(id);

// Plain request fields: id of the control = field name in EstimateRequest.
const NUMBER_FIELDS = ["batch_size", "seq_len", "target_len", "images", "grad_accum", "gpus", "nodes", "tokens", "epochs", "mfu", "price_per_gpu_hour",
  "tp", "cp", "ep", "pp", "pp_virtual_stages", "loss_chunks",
  "beta", "num_generations", "max_completion_length", "max_prompt_length", "steps_per_generation",
  "vllm_gpu_memory_utilization"];
const SELECT_FIELDS = ["dtype", "mixed_precision", "quant", "attn", "optim", "task", "gpu", "offload_optimizer", "offload_param",
  "fsdp", "pp_schedule", "trainer", "ref_model", "vllm", "framework", "loss"];
// Framework memory features (issue 10): checkboxes, sent only when ticked.
const FEATURE_FIELDS = ["activation_offload", "optimizer_in_backward", "packing", "liger", "compile", "checkpoint_offload"];
// Parallel layout (issue 8): FSDP options are sent only with an FSDP strategy.
const FSDP_NUMBER_FIELDS = ["fsdp_version"];
const FSDP_BOOL_SELECTS = ["fsdp_reshard_after_forward"];
const BOOL_FIELDS = ["grad_ckpt", "ia3", "sequence_parallel", "fsdp_offload", "fsdp_sync_each_batch", "fsdp_lora_in_blocks", "fsdp_reshard_after_forward",
  "precompute_ref_log_probs", "activation_offload", "optimizer_in_backward", "packing", "liger", "compile",
  "checkpoint_offload", "padded_batch", "freeze_vision"];
const DEFAULTS = {
  batch_size: 1, seq_len: 512, images: 0, grad_accum: 1, gpus: 1, nodes: 1, epochs: 1,
  dtype: "fp32", mixed_precision: "no", attn: "", optim: "adamw_torch", task: "train",
  offload_optimizer: "none", offload_param: "none", zero: 0, framework: "hf",
  tp: 1, cp: 1, ep: 1, pp: 1, pp_virtual_stages: 2, pp_schedule: "1f1b", fsdp_version: 2,
  trainer: "sft", ref_model: "auto", vllm: "none",
};
// RL trainers with generation (issue 11): their options are sent only with such a trainer.
const RL_TRAINERS = ["grpo", "rloo", "ppo"];
const RL_FIELDS = ["num_generations", "max_completion_length", "max_prompt_length", "steps_per_generation",
  "vllm", "vllm_gpu_memory_utilization"];

export_helpers();

function fmtGiB(bytes) {
  return (bytes / GIB).toFixed(2) + " GiB";
}

function fmtBytes(bytes) {
  const a = Math.abs(bytes);
  if (a >= GIB) return (bytes / GIB).toFixed(2) + " GiB";
  if (a >= 2 ** 20) return (bytes / 2 ** 20).toFixed(1) + " MiB";
  if (a >= 2 ** 10) return (bytes / 2 ** 10).toFixed(1) + " KiB";
  return bytes + " B";
}

function fmtDuration(seconds) {
  if (seconds < 120) return seconds.toFixed(1) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(1) + " min";
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " days";
}

function export_helpers() {
  // Exposed for the browser test and the console.
  window.vramcalc = { fmtGiB, buildRequest, requestToQuery, queryToRequest };
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------- request <-> form <-> URL

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function parseJsonField(id, label) {
  const text = $(id).value.trim();
  if (!text) return null;
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("not an object");
    return value;
  } catch (e) {
    throw new Error(`${label} is not a JSON object: ${e.message}`);
  }
}

function buildRequest() {
  const req = {};
  const config = parseJsonField("config", "config.json");
  const name = $("model").value.trim();
  const trainerConfig = $("trainer_config").value.trim();
  if (trainerConfig) req.config = trainerConfig;
  if (config) req.model = config;
  else if (name) req.model = name;
  else if (!trainerConfig) throw new Error("choose a catalog model, paste a config.json or a trainer config");
  for (const f of NUMBER_FIELDS) {
    const v = numberOrNull(f);
    if (v !== null && v !== DEFAULTS[f]) req[f] = v;
  }
  for (const f of SELECT_FIELDS) {
    const v = $(f).value;
    if (v !== "" && v !== DEFAULTS[f]) req[f] = v;
  }
  if (!RL_TRAINERS.includes(req.trainer || "sft")) {
    for (const f of RL_FIELDS) delete req[f];
  } else if (req.trainer === "ppo") {
    for (const f of ["num_generations", "steps_per_generation", "vllm", "vllm_gpu_memory_utilization"]) delete req[f];
  }
  if (RL_TRAINERS.includes(req.trainer)) delete req.seq_len;  // the sequence is P + L
  const zero = Number($("zero").value);
  if (zero) req.zero = zero;
  if ($("grad_ckpt").checked) req.grad_ckpt = true;
  // vision-language models (issue 9): images per row, their size, a frozen tower
  const imageSize = $("image_size").value.trim();
  if (imageSize) req.image_size = imageSize;
  if ($("freeze_vision").checked) req.freeze_vision = true;
  for (const f of FEATURE_FIELDS) if ($(f).checked) req[f] = true;
  if ($("sequence_parallel").checked) req.sequence_parallel = true;
  // trainer options only for the trainers that read them (the API refuses the others)
  const trainer = $("trainer").value;
  for (const el of document.querySelectorAll(".trainer-opts")) {
    if (el.dataset.for.split(" ").includes(trainer)) continue;
    const ctl = el.querySelector("input, select") || el;
    if (ctl.id && ctl.id in req) delete req[ctl.id];
  }
  if ($("precompute_ref_log_probs").checked && ["dpo", "kto"].includes(trainer)) req.precompute_ref_log_probs = true;
  // TRL pads preference rows to the longest (padded_batch defaults to true for these trainers)
  if ($("unpadded_batch").checked && ["dpo", "kto", "orpo", "simpo", "cpo", "reward"].includes(trainer)) req.padded_batch = false;
  if (req.fsdp) {
    for (const f of FSDP_NUMBER_FIELDS) {
      const v = Number($(f).value);
      if (v !== DEFAULTS[f]) req[f] = v;
    }
    for (const f of FSDP_BOOL_SELECTS) {
      if ($(f).value !== "") req[f] = $(f).value === "true";
    }
    if ($("fsdp_offload").checked) req.fsdp_offload = true;
    if ($("fsdp_sync_each_batch").checked) req.fsdp_sync_each_batch = true;
    if ($("fsdp_lora_in_blocks").checked) req.fsdp_lora_in_blocks = true;
  }
  const peft = $("peft").value;
  if (peft === "lora" || peft === "qlora") {
    const opts = { r: numberOrNull("lora_r") ?? 8 };
    const alpha = numberOrNull("lora_alpha");
    const dropout = numberOrNull("lora_dropout");
    const targets = $("lora_targets").value.trim();
    if (alpha !== null) opts.alpha = alpha;
    if (dropout !== null) opts.dropout = dropout;
    if (targets) opts.targets = targets;
    req[peft] = opts;
  } else if (peft === "adapter") {
    req.adapter = { dim: numberOrNull("adapter_dim") ?? 64 };
  } else if (peft === "prefix" || peft === "prompt_tuning") {
    req[peft] = { tokens: numberOrNull("virtual_tokens") ?? 20 };
  } else if (peft === "ia3") {
    req.ia3 = true;
  }
  const ds = parseJsonField("deepspeed", "DeepSpeed config");
  if (ds) req.deepspeed = ds;
  return req;
}

function requestToQuery(req) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(req)) {
    if (k === "model" && typeof v === "object") q.set("config", JSON.stringify(v));
    else if (k === "config") q.set("trainer_config", v);
    else if (k === "deepspeed") q.set(k, JSON.stringify(v));
    else if (v !== null && typeof v === "object") {
      for (const [sub, sv] of Object.entries(v)) q.set(`${k}.${sub}`, String(sv));
    } else q.set(k, String(v));
  }
  return q.toString();
}

function queryToRequest(query) {
  const q = new URLSearchParams(query);
  const req = {};
  for (const [k, v] of q.entries()) {
    if (k === "config") req.model = JSON.parse(v);
    else if (k === "trainer_config") req.config = v;
    else if (k === "deepspeed") req.deepspeed = JSON.parse(v);
    else if (k.includes(".")) {
      const [outer, inner] = k.split(".", 2);
      req[outer] = req[outer] || {};
      req[outer][inner] = inner === "targets" ? v : Number(v);
    } else if (BOOL_FIELDS.includes(k)) req[k] = v === "true";
    else if (NUMBER_FIELDS.includes(k) || FSDP_NUMBER_FIELDS.includes(k) || k === "zero") req[k] = Number(v);
    else req[k] = v;
  }
  return req;
}

function fillForm(req) {
  if (typeof req.model === "object" && req.model !== null) {
    $("config").value = JSON.stringify(req.model, null, 2);
    $("config-box").open = true;
  } else if (req.model) {
    $("model").value = req.model;
  }
  for (const f of [...NUMBER_FIELDS, ...SELECT_FIELDS]) {
    if (req[f] !== undefined) setValue(f, String(req[f]));
  }
  if (req.zero !== undefined) $("zero").value = String(req.zero);
  $("grad_ckpt").checked = !!req.grad_ckpt;
  $("image_size").value = req.image_size || "";
  $("freeze_vision").checked = !!req.freeze_vision;
  for (const f of FEATURE_FIELDS) $(f).checked = !!req[f];
  $("sequence_parallel").checked = !!req.sequence_parallel;
  $("precompute_ref_log_probs").checked = !!req.precompute_ref_log_probs;
  $("unpadded_batch").checked = req.padded_batch === false;
  $("fsdp_offload").checked = !!req.fsdp_offload;
  $("fsdp_sync_each_batch").checked = !!req.fsdp_sync_each_batch;
  $("fsdp_lora_in_blocks").checked = !!req.fsdp_lora_in_blocks;
  if (req.fsdp_version !== undefined) $("fsdp_version").value = String(req.fsdp_version);
  if (req.fsdp_reshard_after_forward !== undefined) $("fsdp_reshard_after_forward").value = String(req.fsdp_reshard_after_forward);
  for (const m of ["lora", "qlora"]) {
    if (req[m]) {
      $("peft").value = m;
      if (req[m].r !== undefined) $("lora_r").value = req[m].r;
      if (req[m].alpha !== undefined) $("lora_alpha").value = req[m].alpha;
      if (req[m].dropout !== undefined) $("lora_dropout").value = req[m].dropout;
      if (req[m].targets !== undefined) $("lora_targets").value = req[m].targets;
    }
  }
  if (req.adapter) { $("peft").value = "adapter"; $("adapter_dim").value = req.adapter.dim ?? 64; }
  for (const m of ["prefix", "prompt_tuning"]) {
    if (req[m]) { $("peft").value = m; $("virtual_tokens").value = req[m].tokens ?? 20; }
  }
  if (req.ia3) $("peft").value = "ia3";
  if (req.deepspeed) $("deepspeed").value = JSON.stringify(req.deepspeed, null, 2);
  if (typeof req.config === "string") {
    $("trainer_config").value = req.config;
    $("trainer-config-box").open = true;
  }
  showPeftOptions();
  showLayoutOptions();
  showTrainerOptions();
}

function showTrainerOptions() {
  const trainer = $("trainer").value;
  for (const el of document.querySelectorAll(".trainer-opts")) {
    el.hidden = !el.dataset.for.split(" ").includes(trainer);
  }
  const rl = RL_TRAINERS.includes(trainer);
  $("rl-opts").hidden = !rl;
  $("rl-hint").hidden = !rl;
}

const gpuAliases = new Map(); // any GPU alias (lowercase) -> catalog name

function setValue(id, value) {
  const node = $(id);
  if (id === "gpu") value = gpuAliases.get(value.toLowerCase().replace(/_/g, "-")) || value;
  if (node.tagName === "SELECT" && ![...node.options].some((o) => (o.value || o.text) === value)) {
    node.append(el("option", { value }, value)); // e.g. a GPU alias from a shared link
  }
  node.value = value;
}

function showLayoutOptions() {
  // FSDP and DeepSpeed ZeRO both shard the model states: show the options of the one chosen.
  const fsdp = $("fsdp").value !== "";
  $("fsdp-opts").hidden = !fsdp;
  $("zero-opts").hidden = fsdp;
  if (fsdp) {
    $("zero").value = "0";
    $("offload_optimizer").value = "none";
    $("offload_param").value = "none";
  }
}

function showPeftOptions() {
  const method = $("peft").value;
  for (const box of document.querySelectorAll(".peft-opts")) {
    box.hidden = !box.dataset.for.split(" ").includes(method);
  }
}

// ---------------------------------------------------------------- API

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
  if (!resp.ok) throw new Error(errorText(data));
  return data;
}

function errorText(data) {
  const d = data && data.detail;
  if (Array.isArray(d)) {
    return d.map((i) => {
      const where = (i.loc || []).filter((p) => p !== "body").join(".");
      return where ? `${where}: ${i.msg}` : i.msg;  // whole-request rules have no field
    }).join("; ");
  }
  return String(d || "request failed");
}

// ---------------------------------------------------------------- model search (combobox)

let searchTimer = null;
let activeIndex = -1;

function setupCombobox() {
  const input = $("model");
  const list = $("model-list");
  input.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => search(input.value), 120);
  });
  input.addEventListener("focus", () => { if (input.value.trim()) search(input.value); });
  input.addEventListener("keydown", (ev) => {
    const items = [...list.children];
    if (list.hidden || !items.length) return;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      activeIndex = (activeIndex + (ev.key === "ArrowDown" ? 1 : -1) + items.length) % items.length;
      highlight(items);
    } else if (ev.key === "Enter" && activeIndex >= 0) {
      ev.preventDefault();
      choose(items[activeIndex].dataset.name);
    } else if (ev.key === "Escape") {
      closeList();
    }
  });
  input.addEventListener("blur", () => setTimeout(closeList, 150));
}

async function search(text) {
  const q = text.trim();
  if (!q) { closeList(); return; }
  let rows;
  try { rows = await api(`/v1/models?q=${encodeURIComponent(q)}&limit=12`); } catch { return; }
  if ($("model").value.trim() !== q) return; // a newer keystroke won
  const list = $("model-list");
  list.replaceChildren();
  activeIndex = -1;
  rows.forEach((row, i) => {
    const li = el("li", { role: "option", id: `model-opt-${i}`, "data-name": row.name, "aria-selected": "false" });
    li.append(el("span", { class: "name" }, row.name));
    const meta = [row.hf_id, row.n_params ? (row.n_params / 1e9).toFixed(row.n_params < 1e9 ? 2 : 1) + "B params" : null]
      .filter(Boolean).join(" · ");
    li.append(el("span", { class: "meta" }, meta));
    li.addEventListener("mousedown", (ev) => { ev.preventDefault(); choose(row.name); });
    list.append(li);
  });
  list.hidden = rows.length === 0;
  $("model").setAttribute("aria-expanded", String(rows.length > 0));
}

function highlight(items) {
  items.forEach((li, i) => li.setAttribute("aria-selected", String(i === activeIndex)));
  $("model").setAttribute("aria-activedescendant", items[activeIndex].id);
  items[activeIndex].scrollIntoView({ block: "nearest" });
}

function choose(name) {
  $("model").value = name;
  closeList();
}

function closeList() {
  const list = $("model-list");
  list.hidden = true;
  activeIndex = -1;
  $("model").setAttribute("aria-expanded", "false");
  $("model").removeAttribute("aria-activedescendant");
}

// ---------------------------------------------------------------- rendering

function renderPeaks(report) {
  for (const kind of ["allocated", "reserved", "device"]) {
    const v = $(`peak-${kind}`).querySelector(".v");
    const bytes = report.peak[`${kind}_bytes`];
    v.textContent = fmtGiB(bytes);
    v.dataset.bytes = String(bytes);
  }
  const p = report.peak;
  $("peak-where").textContent = `Peak at step ${p.step} (${p.step === 1 ? "first step" : "steady state"}), ` +
    `phase ${p.phase}: ${p.event}. ${report.model.n_trainable_params.toLocaleString()} of ` +
    `${report.model.n_params.toLocaleString()} parameters trainable.` +
    (report.cpu_bytes ? ` CPU memory for offload: ${fmtGiB(report.cpu_bytes)}.` : "");
  $("result-title").textContent = report.model.name;
  renderLayout(report);
}

function renderLayout(report) {
  // The engine fills `layout` for the parallel layout of issue 8; older engines leave it null.
  const line = $("layout-summary");
  const layout = report.layout;
  const trivial = layout && layout.world_size <= 1 && layout.engine === "none";  // as the CLI table
  if (!layout || !layout.summary || trivial) { line.hidden = true; line.textContent = ""; return; }
  line.textContent = `Layout: ${layout.summary}`;
  line.dataset.worldSize = String(layout.world_size);
  line.hidden = false;
}

function renderStack(report) {
  const total = COMPONENTS.reduce((s, c) => s + report.breakdown[c], 0) || 1;
  const stack = $("stack");
  const legend = $("legend");
  stack.replaceChildren();
  legend.replaceChildren();
  for (const c of COMPONENTS) {
    const bytes = report.breakdown[c];
    const pct = (100 * bytes) / total;
    const seg = el("div", { class: `seg c-${c}`, title: `${c}: ${fmtGiB(bytes)} (${pct.toFixed(1)} %)` });
    seg.style.width = `${pct}%`;
    if (pct > 9) seg.textContent = c;
    stack.append(seg);
    const li = el("li", { "data-component": c, "data-bytes": String(bytes) });
    li.append(el("span", { class: `sw c-${c}`, "aria-hidden": "true" }));
    li.append(el("span", { class: "lk" }, c));
    li.append(el("span", { class: "lv" }, `${fmtGiB(bytes)} · ${pct.toFixed(1)} %`));
    legend.append(li);
  }
  stack.setAttribute("aria-label", COMPONENTS.map((c) => `${c} ${fmtGiB(report.breakdown[c])}`).join(", "));
}

function renderTimeline(report) {
  const box = $("timeline");
  box.replaceChildren();
  const events = report.timeline || [];
  if (!events.length) return;
  const W = 720, H = 240, L = 56, R = 12, T = 16, B = 44;
  const peakAlloc = report.peak.allocated_bytes;
  const max = Math.max(peakAlloc, ...events.map((e) => e.allocated_bytes)) || 1;
  const x = (i) => L + (events.length === 1 ? 0 : (i * (W - L - R)) / (events.length - 1));
  const y = (b) => T + (H - T - B) * (1 - b / max);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart",
    "aria-label": `Allocated memory over one step; peak ${fmtGiB(peakAlloc)} in ${report.peak.phase}` });
  // phase bands
  let start = 0;
  for (let i = 1; i <= events.length; i++) {
    const a = events[start], b = events[i];
    if (b && b.phase === a.phase && b.step === a.step) continue;
    const x0 = Math.max(L, x(start) - (start ? (x(start) - x(start - 1)) / 2 : 0));
    const x1 = i < events.length ? (x(i - 1) + x(i)) / 2 : W - R;
    chart.append(svg("rect", { x: x0, y: T, width: Math.max(0, x1 - x0), height: H - T - B, class: `band p-${a.phase}` }));
    if (x1 - x0 > 34) chart.append(svg("text", { x: (x0 + x1) / 2, y: H - B + 14, class: "band-label" }, `${a.phase}${a.step > 1 ? "" : " ¹"}`));
    start = i;
  }
  // grid
  for (let k = 0; k <= 4; k++) {
    const b = (max * k) / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(b), y2: y(b), class: "grid" }));
    chart.append(svg("text", { x: L - 6, y: y(b) + 4, class: "axis" }, (b / GIB).toFixed(b / GIB < 10 ? 1 : 0)));
  }
  chart.append(svg("text", { x: 12, y: T + (H - T - B) / 2, class: "axis-title", transform: `rotate(-90 12 ${T + (H - T - B) / 2})` }, "GiB allocated"));
  // line
  const pts = events.map((e, i) => `${x(i)},${y(e.allocated_bytes)}`).join(" ");
  chart.append(svg("polyline", { points: `${x(0)},${y(0)} ${pts} ${x(events.length - 1)},${y(0)}`, class: "area" }));
  chart.append(svg("polyline", { points: pts, class: "line" }));
  let peakIndex = events.findIndex((e) => e.step === report.peak.step && e.event === report.peak.event);
  if (peakIndex < 0) peakIndex = events.reduce((m, e, i) => (e.allocated_bytes > events[m].allocated_bytes ? i : m), 0);
  events.forEach((e, i) => {
    const dot = svg("circle", { cx: x(i), cy: y(e.allocated_bytes), r: i === peakIndex ? 5 : 2.5, class: i === peakIndex ? "dot peak" : `dot p-${e.phase}` });
    dot.append(svg("title", {}, `step ${e.step} · ${e.phase} · ${e.event}: ${fmtGiB(e.allocated_bytes)}`));
    chart.append(dot);
  });
  const px = x(peakIndex), py = y(events[peakIndex].allocated_bytes);
  const anchor = px > W * 0.7 ? "end" : "start";
  chart.append(svg("text", { x: px + (anchor === "end" ? -8 : 8), y: Math.max(T + 10, py - 6), class: "peak-label", "text-anchor": anchor },
    `peak ${fmtGiB(events[peakIndex].allocated_bytes)} · ${events[peakIndex].event}`));
  box.append(chart);
  const cap = el("p", { class: "hint" }, "Live tensor bytes after each event of the first step (¹, optimizer states created) and the steady state. Hover a point for its event.");
  box.append(cap);
}

function renderVerdict(report, fitReport) {
  const box = $("verdict");
  const fit = fitReport || report.fit;
  if (!fit) { box.hidden = true; return; }
  box.hidden = false;
  box.className = `verdict ${fit.fits ? "ok" : "bad"}`;
  const head = fit.fits ? `Fits on ${fit.gpu}` : `Does not fit on ${fit.gpu}`;
  const room = report.fit ? report.fit.headroom_bytes : fit.headroom_bytes;
  let text = `${head}: ${fmtGiB(fit.usable_bytes)} usable, headroom ${fmtGiB(room)}.`;
  if (fitReport && fitReport.max_batch_size !== null && fitReport.max_batch_size !== undefined) {
    text += ` Largest micro-batch that fits: ${fitReport.max_batch_size}.`;
  } else if (fitReport && fitReport.max_batch_size === null) {
    text += " Not even a micro-batch of 1 fits.";
  }
  if (fitReport && fitReport.suggested_grad_accum) text += ` Suggested grad accum: ${fitReport.suggested_grad_accum}.`;
  box.replaceChildren(el("strong", {}, fit.fits ? "✔ " : "✘ "), document.createTextNode(text));
  box.dataset.fits = String(fit.fits);
}

function renderCost(report) {
  const box = $("cost");
  const list = $("cost-list");
  list.replaceChildren();
  const c = report.cost;
  if (!c) { box.hidden = true; return; }
  box.hidden = false;
  const rows = [
    ["Time", fmtDuration(c.time_s)],
    ["Cost", `$${c.cost_usd.toFixed(2)}`],
    ["GPUs", `${c.n_gpus} × ${c.gpu}`],
    ["Tokens × epochs", `${c.tokens.toLocaleString()} × ${c.epochs}`],
    ["FLOPs per token", c.flops_per_token.toExponential(3)],
    ["MFU", c.mfu.toFixed(2)],
    ["Price per GPU-hour", `$${c.price_usd_per_gpu_hour.toFixed(3)}`],
  ];
  if (c.step_time_s) rows.splice(2, 0, ["Step time", fmtDuration(c.step_time_s)]);
  for (const [k, v] of rows) { list.append(el("dt", {}, k)); list.append(el("dd", {}, v)); }
}

function renderDetails(report) {
  const body = $("details").querySelector("tbody");
  body.replaceChildren();
  for (const [k, v] of Object.entries(report.details).sort((a, b) => b[1] - a[1])) {
    const tr = el("tr");
    tr.append(el("td", {}, k));
    tr.append(el("td", {}, fmtBytes(v)));
    body.append(tr);
  }
  const dl = $("assumptions");
  dl.replaceChildren();
  for (const [k, v] of Object.entries(report.assumptions || {})) {
    dl.append(el("dt", {}, k));
    dl.append(el("dd", {}, String(v)));
  }
  const notes = $("notes");
  notes.replaceChildren(...(report.notes || []).map((n) => el("li", {}, n)));
}

function renderCurl(req) {
  const body = JSON.stringify(req);
  $("curl").textContent = `curl -s ${location.origin}/v1/estimate -H 'content-type: application/json' -d '${body.replace(/'/g, "'\\''")}'`;
}

// ---------------------------------------------------------------- submit

async function run(ev) {
  if (ev) ev.preventDefault();
  closeList();
  const error = $("form-error");
  error.hidden = true;
  let req;
  try { req = buildRequest(); } catch (e) { showError(e.message); return; }
  history.replaceState(null, "", `${location.pathname}?${requestToQuery(req)}`);
  $("submit").disabled = true;
  $("results").setAttribute("aria-busy", "true");
  try {
    const calls = [api("/v1/estimate", req)];
    if (req.gpu) calls.push(api("/v1/fit", req).catch(() => null));
    const [report, fitReport] = await Promise.all(calls);
    $("placeholder").hidden = true;
    $("output").hidden = false;
    renderPeaks(report);
    renderVerdict(report, fitReport);
    renderStack(report);
    renderTimeline(report);
    renderCost(report);
    renderDetails(report);
    renderCurl(req);
    document.body.dataset.state = "done";
  } catch (e) {
    showError(e.message);
  } finally {
    $("submit").disabled = false;
    $("results").removeAttribute("aria-busy");
  }
}

function showError(msg) {
  const error = $("form-error");
  error.textContent = msg;
  error.hidden = false;
  document.body.dataset.state = "error";
}

async function loadCatalogs() {
  const [gpus, optims] = await Promise.all([api("/v1/gpus").catch(() => []), api("/v1/optimizers").catch(() => [])]);
  const gpuSel = $("gpu");
  for (const g of gpus) {
    for (const a of [g.name, ...(g.aliases || [])]) gpuAliases.set(a.toLowerCase().replace(/_/g, "-"), g.name);
    gpuSel.append(el("option", { value: g.name }, `${g.name} · ${(g.memory_bytes / GIB).toFixed(1)} GiB · $${g.price_usd_per_gpu_hour}/h`));
  }
  const optSel = $("optim");
  if (optims.length) {
    optSel.replaceChildren(...optims.map((o) => el("option", { value: o.name }, o.alias_of ? `${o.name} (= ${o.alias_of})` : o.name)));
    optSel.value = DEFAULTS.optim;
  }
}

async function init() {
  setupCombobox();
  $("peft").addEventListener("change", showPeftOptions);
  $("trainer_config_file").addEventListener("change", async (ev) => {
    const file = ev.target.files && ev.target.files[0];
    if (file) $("trainer_config").value = await file.text();
  });
  $("fsdp").addEventListener("change", showLayoutOptions);
  $("trainer").addEventListener("change", showTrainerOptions);
  $("form").addEventListener("submit", run);
  $("share").addEventListener("click", async () => {
    let req;
    try { req = buildRequest(); } catch (e) { showError(e.message); return; }
    const url = `${location.origin}${location.pathname}?${requestToQuery(req)}`;
    history.replaceState(null, "", url);
    try { await navigator.clipboard.writeText(url); $("share").textContent = "Link copied"; } catch { $("share").textContent = "Link in address bar"; }
    setTimeout(() => { $("share").textContent = "Copy link"; }, 1500);
  });
  showPeftOptions();
  showLayoutOptions();
  showTrainerOptions();
  await loadCatalogs();
  document.body.dataset.ready = "true";
  if (location.search) {
    try {
      fillForm(queryToRequest(location.search));
      if ($("model").value || $("config").value) await run();
    } catch (e) { showError(`could not read the link: ${e.message}`); }
  }
}

document.addEventListener("DOMContentLoaded", init);
