// The web page of the OCR service: submit files as a job, follow it page by page (server-sent events),
// show each page with its boxes beside its rendered Markdown. Plain JS, no build step, no third-party code
// but MathJax (served by the app from its PyPI package). Every text from the API reaches the page through
// textContent / DOM nodes, never innerHTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { files: [], job: null, source: null, key: sessionStorage.getItem("ocr-api-key") || "", cards: [] };

// ---------- API ----------------------------------------------------------------------------------

class ApiError extends Error {}

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!resp.ok) {
    let message = `HTTP ${resp.status}`;
    try {
      const body = await resp.json();
      message = (body.error && body.error.message) || body.detail || message;
    } catch (_) { /* not JSON */ }
    if (resp.status === 401) showKeyField();
    const err = new ApiError(message);
    err.status = resp.status;
    throw err;
  }
  return resp;
}

// Images and downloads go through fetch so that they carry the API key when keys are on.
async function blobUrl(path) {
  const resp = await api(path);
  return URL.createObjectURL(await resp.blob());
}

function showError(message, where = $("#error")) {
  where.textContent = message;
  where.hidden = !message;
}

function showKeyField() {
  $("#key-field").hidden = false;
}

// ---------- form -----------------------------------------------------------------------------------

async function loadCatalogue() {
  const prompt = $("#prompt");
  try {
    const info = await (await api("/ocr/info")).json();
    prompt.replaceChildren();
    for (const [name, text] of Object.entries(info.prompts || {})) {
      const opt = new Option(name, name, name === "document", name === "document");
      opt.title = text;
      prompt.append(opt);
    }
    for (const name of Object.keys(info.modes || {})) $("#mode").append(new Option(name, name));
    showError("");
  } catch (e) {
    prompt.replaceChildren(new Option("document", "document"));
    showError(e.message);
  }
}

function setFiles(list) {
  state.files = Array.from(list);
  const ul = $("#file-list");
  ul.replaceChildren(...state.files.map((f) => {
    const li = document.createElement("li");
    li.textContent = `${f.name} (${Math.max(1, Math.round(f.size / 1024))} KB)`;
    return li;
  }));
  const anyPdf = state.files.some((f) => f.type === "application/pdf" || /\.pdf$/i.test(f.name));
  $("#pdf-options").classList.toggle("dim", state.files.length > 0 && !anyPdf);
}

function wireDrop() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => setFiles(e.target.files));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => setFiles(e.dataTransfer.files));
}

async function submit(event) {
  event.preventDefault();
  showError("");
  state.key = $("#api-key").value.trim() || state.key;
  if (state.key) sessionStorage.setItem("ocr-api-key", state.key);
  if (!state.files.length) {
    showError("Choose one or more images or PDFs first.");
    return;
  }
  const form = new FormData();
  for (const f of state.files) form.append("files", f, f.name);
  const own = $("#prompt-text").value.trim();
  form.append("prompt", own || $("#prompt").value);
  if ($("#mode").value) form.append("mode", $("#mode").value);
  if ($("#pages").value.trim()) form.append("pages", $("#pages").value.trim());
  form.append("dpi", $("#dpi").value || "144");
  form.append("draw_layouts", $("#layouts").checked ? "true" : "false");
  form.append("keep_page_images", "true");
  $("#run").disabled = true;
  $("#status").textContent = "Uploading…";
  try {
    const job = await (await api("/jobs", { method: "POST", body: form })).json();
    history.replaceState(null, "", `#job=${job.job_id}`);
    follow(job);
  } catch (e) {
    showError(e.message);
    $("#status").textContent = "";
    $("#run").disabled = false;
  }
}

// ---------- the job --------------------------------------------------------------------------------

function follow(job) {
  state.job = job;
  if (state.source) state.source.close();
  $("#job").hidden = false;
  $("#downloads").replaceChildren();
  const out = $("#files-out");
  out.replaceChildren();
  state.cards = job.files.map((f, i) => {
    const card = $("#file-tpl").content.firstElementChild.cloneNode(true);
    card.dataset.file = i;
    $(".file-name", card).textContent = f.name;
    $(".file-state", card).textContent = f.state;
    out.append(card);
    return card;
  });
  $("#status").textContent = `Job ${job.state}`;
  // EventSource cannot send headers: the events route takes the key as ?api_key= (README, "Web page").
  const url = `/jobs/${job.job_id}/events` + (state.key ? `?api_key=${encodeURIComponent(state.key)}` : "");
  const es = new EventSource(url);
  state.source = es;
  es.addEventListener("state", (e) => { $("#status").textContent = `Job ${JSON.parse(e.data).state}`; });
  es.addEventListener("page", (e) => onPage(JSON.parse(e.data)));
  es.addEventListener("file", (e) => onFile(JSON.parse(e.data)));
  for (const final of ["done", "failed", "cancelled"]) {
    es.addEventListener(final, (e) => { es.close(); onFinal(JSON.parse(e.data)); });
  }
  es.addEventListener("gone", () => { es.close(); showError("The job no longer exists."); $("#run").disabled = false; });
  es.onerror = () => {
    // The browser reconnects by itself with Last-Event-ID; say so while it does.
    if (es.readyState === EventSource.CONNECTING) $("#status").textContent = "Reconnecting…";
  };
}

function setProgress(card, done, total) {
  const bar = $(".bar", card);
  if (total > 0) {
    bar.max = total;
    bar.value = done;
    bar.setAttribute("aria-label", `${done} of ${total} pages`);
    $(".file-state", card).textContent = `${done} / ${total} pages`;
  }
}

async function onPage(ev) {
  const card = state.cards[ev.file];
  if (!card) return;
  setProgress(card, ev.pages_done, ev.pages_total);
  $("#status").textContent = `Job running: ${ev.name}, page ${ev.page} read`;
  const pages = $(".pages", card);
  if ($(`.page[data-page="${ev.page}"]`, pages)) return; // already shown (a replayed event)
  const article = document.createElement("article");
  article.className = "page";
  article.dataset.page = ev.page;
  const next = Array.from(pages.children).find((p) => Number(p.dataset.page) > ev.page);
  pages.insertBefore(article, next || null);
  const base = `/jobs/${state.job.job_id}/files/${ev.file}`;
  try {
    const record = await (await api(`${base}/pages/${ev.page}`)).json();
    await renderPage(article, record, base, ev);
  } catch (e) {
    article.textContent = `Page ${ev.page}: ${e.message}`;
    article.classList.add("error");
  }
}

function onFile(ev) {
  const card = state.cards[ev.file];
  if (!card) return;
  $(".file-state", card).textContent = ev.state === "done" ? `${$(".file-state", card).textContent} ✓` : ev.state;
  card.classList.add(ev.state);
  if (ev.error) showError(ev.error.message || String(ev.error), $(".file-error", card));
  if (ev.state === "done") $(".bar", card).value = $(".bar", card).max;
}

async function onFinal(ev) {
  $("#run").disabled = false;
  $("#status").textContent = `Job ${ev.state}`;
  if (ev.error) showError(ev.error);
  if (ev.state !== "done") return;
  let job;
  try {
    job = await (await api(`/jobs/${state.job.job_id}`)).json();
  } catch (e) {
    showError(e.message);
    return;
  }
  const bar = $("#downloads");
  const links = [];
  job.files.forEach((f, i) => {
    if (f.state !== "done") return;
    links.push(download(`/jobs/${job.job_id}/files/${i}/markdown`, `Markdown: ${f.name}`));
  });
  links.push(download(job.download_url, "ZIP (everything)", "zip"));
  if ($("#layouts").checked) {
    job.files.forEach((f, i) => {
      if (f.state === "done") links.push(download(`/jobs/${job.job_id}/files/${i}/layouts.pdf`, `Layouts PDF: ${f.name}`));
    });
  }
  bar.replaceChildren(...links);
  document.body.dataset.jobDone = job.job_id; // for tests and scripts: the page is complete
}

function download(href, text, kind = "") {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  a.className = "button";
  if (kind) a.dataset.kind = kind;
  a.setAttribute("download", "");
  a.addEventListener("click", async (e) => {
    if (!state.key) return; // a plain link works without keys
    e.preventDefault();
    try {
      const url = await blobUrl(href);
      const tmp = Object.assign(document.createElement("a"), { href: url, download: href.split("/").pop() });
      tmp.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      showError(err.message);
    }
  });
  return a;
}

// ---------- one page: image + boxes, Markdown blocks ---------------------------------------------------

async function renderPage(article, record, base, ev) {
  const head = document.createElement("h3");
  head.textContent = `Page ${record.page}` + (ev.error ? ` — ${ev.error}` : "");
  const body = document.createElement("div");
  body.className = "page-body";
  const view = document.createElement("div");
  view.className = "page-view";
  const figure = document.createElement("div");
  figure.className = "page-figure";
  const img = document.createElement("img");
  img.alt = `Page ${record.page}`;
  figure.append(img);
  const info = document.createElement("p");
  info.className = "box-info";
  info.setAttribute("aria-live", "polite");
  info.textContent = record.regions.length ? "Hover, click or tab to a box to see what was read there." : "";
  const crops = document.createElement("div");
  crops.className = "crops";
  view.append(figure, info, crops);
  const md = document.createElement("div");
  md.className = "page-md md";
  body.append(view, md);
  article.append(head, body);
  if (ev.error) article.classList.add("error");

  const image = (src) => `${base}/${src.replace(/^\/+/, "")}`; // Markdown links images/{page}_{k}.jpg
  const blocks = [];
  const boxes = [];
  const select = (i, scroll) => {
    for (const el of article.querySelectorAll(".active")) el.classList.remove("active");
    if (i == null) return;
    const r = record.regions[i];
    boxes[i].classList.add("active");
    blocks[i].classList.add("active");
    info.replaceChildren(el("strong", null, `${r.label}: `), document.createTextNode(r.text || "(figure)"));
    if (scroll) blocks[i].scrollIntoView({ block: "nearest", behavior: "smooth" });
  };

  if (record.regions.length) {
    let previous = null;
    record.regions.forEach((r, i) => {
      // One block per region; a region drawn with several boxes (same span) shares its block.
      let block = previous && previous.raw === r.raw ? blocks[i - 1] : null;
      if (!block) {
        block = document.createElement("div");
        block.className = `block label-${r.label}`;
        block.tabIndex = 0;
        if (r.label === "image" && r.image_index != null) {
          block.append(cropFigure(image(cropName(record, r)), r));
        } else {
          block.append(renderMarkdown(r.text, image));
        }
        block.addEventListener("mouseenter", () => select(i, false));
        block.addEventListener("focus", () => select(i, false));
        block.addEventListener("click", () => select(i, false));
        md.append(block);
      }
      blocks.push(block);
      const box = document.createElement("div");
      box.className = `box label-${r.label}`;
      box.tabIndex = 0;
      box.setAttribute("role", "button");
      box.setAttribute("aria-label", `${r.label}: ${(r.text || "figure").slice(0, 120)}`);
      box.dataset.region = r.index;
      const [x1, y1, x2, y2] = r.box_norm;
      Object.assign(box.style, {
        left: `${(x1 / 999) * 100}%`, top: `${(y1 / 999) * 100}%`,
        width: `${((x2 - x1) / 999) * 100}%`, height: `${((y2 - y1) / 999) * 100}%`,
      });
      box.addEventListener("mouseenter", () => select(i, false));
      box.addEventListener("focus", () => select(i, true));
      box.addEventListener("click", () => select(i, true));
      box.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(i, true); }
      });
      boxes.push(box);
      figure.append(box);
      previous = r;
    });
    for (const r of record.regions.filter((x) => x.label === "image" && x.image_index != null)) {
      crops.append(cropFigure(image(cropName(record, r)), r));
    }
  } else {
    md.append(renderMarkdown(record.markdown || record.text || "", image));
  }
  typeset(md);
  try {
    img.src = await blobUrl(`${base}/pages/${record.page}/image`);
  } catch (e) {
    img.alt = `Page ${record.page}: ${e.message}`;
  }
}

function cropName(record, region) {
  // documents.py names crops images/{page}_{k}.jpg for PDFs and images/{k}.jpg for images.
  return record.dpi != null ? `images/${record.page}_${region.image_index}.jpg` : `images/${region.image_index}.jpg`;
}

function cropFigure(src, region) {
  const fig = document.createElement("figure");
  fig.className = "crop";
  const img = document.createElement("img");
  img.alt = `figure ${region.image_index + 1}`;
  blobUrl(src).then((u) => { img.src = u; }, () => { img.alt = "(no crop saved)"; });
  const cap = document.createElement("figcaption");
  cap.textContent = `Figure ${region.image_index + 1}`;
  fig.append(img, cap);
  return fig;
}

function typeset(el) {
  // MathJax (loaded before this script) typesets only the .math elements; without it the TeX stays readable.
  const mj = window.MathJax;
  if (!el.querySelector(".math") || !mj || !mj.startup || !mj.startup.promise) return;
  mj.startup.promise.then(() => mj.typesetPromise([el])).catch(() => {});
}

// ---------- a small Markdown renderer (what DeepSeek-OCR writes) ---------------------------------------
// Blocks: headings, paragraphs, lists, fenced code, pipe tables, HTML tables (rebuilt from their cells),
// display formulas \[...\] and $$...$$, images. Inline: \(...\) and $...$ formulas, `code`, **bold**,
// *italic*, links (http/https only). Formulas keep their TeX with delimiters inside a .math element.

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function renderMarkdown(src, image) {
  const root = document.createDocumentFragment();
  const lines = String(src).replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  let list = null;
  const flush = () => {
    if (para.length) root.append(inline(el("p"), para.join("\n"), image));
    para = [];
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const t = line.trim();
    if (!t) { flush(); continue; }
    if (t.startsWith("```")) {
      flush();
      const code = [];
      while (++i < lines.length && !lines[i].trim().startsWith("```")) code.push(lines[i]);
      const pre = el("pre");
      pre.append(el("code", null, code.join("\n")));
      root.append(pre);
      continue;
    }
    const display = t.startsWith("\\[") ? "\\]" : t.startsWith("$$") ? "$$" : null;
    if (display) {
      flush();
      const tex = [t];
      let closed = t.length > 2 && t.endsWith(display);
      while (!closed && ++i < lines.length) {
        tex.push(lines[i]);
        closed = lines[i].trim().endsWith(display);
      }
      root.append(el("div", "math math-display", tex.join("\n")));
      continue;
    }
    if (/^<table[\s>]/i.test(t)) {
      flush();
      const html = [line];
      while (!/<\/table>/i.test(lines[i]) && ++i < lines.length) html.push(lines[i]);
      root.append(htmlTable(html.join("\n"), image));
      continue;
    }
    if (t.startsWith("|") && i + 1 < lines.length && /^\s*\|?\s*:?-{2,}/.test(lines[i + 1])) {
      flush();
      const rows = [t];
      i++;
      while (i + 1 < lines.length && lines[i + 1].trim().startsWith("|")) rows.push(lines[++i].trim());
      root.append(pipeTable(rows, image));
      continue;
    }
    const h = /^(#{1,6})\s+(.*)$/.exec(t);
    if (h) { flush(); root.append(inline(el(`h${Math.min(6, h[1].length + 2)}`), h[2], image)); continue; }
    const li = /^([-*+]|\d+[.)])\s+(.*)$/.exec(t);
    if (li) {
      if (para.length) flush();
      const ordered = /\d/.test(li[1]);
      if (!list || (list.tagName === "OL") !== ordered) {
        list = el(ordered ? "ol" : "ul");
        root.append(list);
      }
      list.append(inline(el("li"), li[2], image));
      continue;
    }
    para.push(t);
  }
  flush();
  return root;
}

function inline(target, text, image) {
  // Formulas first, so that * and _ inside them stay TeX.
  const re = /(\\\([\s\S]+?\\\)|\$\$[\s\S]+?\$\$|\$(?!\s)[^$\n]+?(?<!\s)\$|\\\[[\s\S]+?\\\]|`[^`]+`|!\[[^\]]*\]\([^)\s]+\)|\[[^\]]+\]\([^)\s]+\)|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) target.append(document.createTextNode(text.slice(last, m.index)));
    const tok = m[0];
    if (tok.startsWith("\\(") || tok.startsWith("$") || tok.startsWith("\\[")) target.append(el("span", "math", tok));
    else if (tok.startsWith("`")) target.append(el("code", null, tok.slice(1, -1)));
    else if (tok.startsWith("![")) {
      const src = /\(([^)\s]+)\)$/.exec(tok)[1];
      const img = el("img", "inline-img");
      img.alt = /^!\[([^\]]*)\]/.exec(tok)[1] || "figure";
      if (/^images\/[\w.]+$/.test(src)) blobUrl(image(src)).then((u) => { img.src = u; }, () => {});
      target.append(img);
    } else if (tok.startsWith("[")) {
      const [, label, href] = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(tok);
      if (/^https?:\/\//i.test(href)) {
        const a = el("a", null, label);
        a.href = href;
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        target.append(a);
      } else target.append(document.createTextNode(label));
    } else if (tok.startsWith("**")) target.append(inline(el("strong"), tok.slice(2, -2), image));
    else target.append(inline(el("em"), tok.slice(1, -1), image));
    last = m.index + tok.length;
  }
  if (last < text.length) target.append(document.createTextNode(text.slice(last)));
  return target;
}

function pipeTable(rows, image) {
  const cells = (row) => row.replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  const table = el("table");
  const thead = el("thead");
  const tr = el("tr");
  for (const c of cells(rows[0])) tr.append(inline(el("th"), c, image));
  thead.append(tr);
  const tbody = el("tbody");
  for (const row of rows.slice(1)) {
    const r = el("tr");
    for (const c of cells(row)) r.append(inline(el("td"), c, image));
    tbody.append(r);
  }
  table.append(thead, tbody);
  return wrapTable(table);
}

function htmlTable(html, image) {
  // Parsed inertly (DOMParser runs no scripts); only table structure and cell text are carried over.
  const doc = new DOMParser().parseFromString(html, "text/html");
  const source = doc.querySelector("table");
  const table = el("table");
  if (!source) return el("p", null, doc.body.textContent);
  for (const row of source.querySelectorAll("tr")) {
    const tr = el("tr");
    for (const cell of row.children) {
      if (!/^T[DH]$/.test(cell.tagName)) continue;
      const c = inline(el(cell.tagName.toLowerCase()), cell.textContent.trim(), image);
      for (const attr of ["colspan", "rowspan"]) {
        const v = parseInt(cell.getAttribute(attr) || "", 10);
        if (v > 1 && v < 1000) c.setAttribute(attr, String(v));
      }
      tr.append(c);
    }
    table.append(tr);
  }
  return wrapTable(table);
}

function wrapTable(table) {
  const wrap = el("div", "table-wrap");
  wrap.tabIndex = 0; // wide tables scroll with the keyboard too
  wrap.append(table);
  return wrap;
}

// ---------- start ----------------------------------------------------------------------------------------

async function resume() {
  const m = /#job=([0-9a-f]{8,64})/.exec(location.hash);
  if (!m) return;
  try {
    follow(await (await api(`/jobs/${m[1]}`)).json());
  } catch (e) {
    showError(e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = state.key;
  if (state.key) showKeyField();
  wireDrop();
  $("#submit-form").addEventListener("submit", submit);
  $("#api-key").addEventListener("change", (e) => {
    state.key = e.target.value.trim();
    sessionStorage.setItem("ocr-api-key", state.key);
    loadCatalogue();
  });
  loadCatalogue().then(resume);
});
