// The search page: plain JavaScript over the JSON endpoints of tinyclip.serve (see tinyclip/serve/server.py).
// Text from the data (captions) is always set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let maxUploadBytes = 10 * 1024 * 1024;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(p) {
  return (100 * p).toFixed(p < 0.001 ? 2 : 1) + "%";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// fetch + JSON; a non-2xx answer throws its {"error": ...} message (and keeps the body for the caller).
async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) {
    const error = new Error(body.error || response.statusText);
    error.body = body;
    throw error;
  }
  return body;
}

function badges(pair) {
  const span = element("span");
  if (pair.modality) span.append(element("span", "badge", pair.modality));
  if (pair.part) span.append(element("span", "badge", pair.part));
  return span;
}

function renderBars(container, modality) {
  container.replaceChildren();
  const best = Math.max(...modality.map((m) => m.prob));
  for (const m of modality) {
    const row = element("div", "bar-row" + (m.prob === best ? " top" : ""));
    const track = element("div", "bar-track");
    const fill = element("div", "bar-fill");
    fill.style.width = percent(m.prob);
    track.append(fill);
    row.append(element("span", "label", m.class), track, element("span", "value", percent(m.prob)));
    row.dataset.class = m.class;
    container.append(row);
  }
}

function renderCaptions(list, captions) {
  list.replaceChildren();
  for (const c of captions) {
    const item = element("li", c.true ? "true" : "", `${percent(c.prob)}  ${c.caption}`);
    item.dataset.id = c.id;
    list.append(item);
  }
}

function renderTokens(tokens) {
  const box = $("tokens");
  box.replaceChildren();
  if (!tokens || !tokens.length) return;
  box.append("words: ");
  for (const t of tokens) {
    const chip = element("span", t.known ? "token" : "token unknown", t.word);
    chip.title = t.known ? "in the vocabulary" : "not in the model's vocabulary: ignored (read as <unk>)";
    box.append(chip);
  }
}

// ----- text → images -------------------------------------------------------
async function search(event) {
  event.preventDefault();
  const q = $("query").value;
  const k = $("k").value;
  showError("");
  $("results").replaceChildren();
  try {
    const answer = await api(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    renderTokens(answer.tokens);
    if (answer.truncated) {
      $("tokens").append(element("span", "muted", ` (only the first ${answer.max_len} words are read)`));
    }
    for (const r of answer.results) {
      const card = element("div", "result");
      card.dataset.id = r.id;
      const img = element("img");
      img.src = r.thumb;
      img.alt = r.caption;
      const line = element("div");
      line.append(element("span", "prob", `#${r.rank} ${percent(r.prob)}`), badges(r));
      card.append(img, line, element("div", "caption", r.caption));
      card.addEventListener("click", () => showImage(r.id, card));
      $("results").append(card);
    }
  } catch (error) {
    renderTokens(error.body && error.body.tokens);
    showError(error.message);
  }
}

// ----- image → captions ----------------------------------------------------
async function showImage(id, card) {
  showError("");
  document.querySelectorAll(".result.selected").forEach((c) => c.classList.remove("selected"));
  if (card) card.classList.add("selected");
  try {
    const answer = await api(`/api/image/${encodeURIComponent(id)}?k=5`);
    $("detail-image").src = answer.thumb;
    $("detail-image").alt = answer.caption;
    $("detail-caption").replaceChildren(element("strong", "", answer.id + ": "), answer.caption, badges(answer));
    $("detail-rank").textContent = `(the true caption ranks #${answer.true_rank} of ${$("detail").dataset.n})`;
    renderBars($("detail-modality"), answer.zero_shot);
    renderCaptions($("detail-captions"), answer.captions);
    $("detail").hidden = false;
    $("detail").dataset.id = answer.id;
    $("image-to-captions").scrollIntoView({ behavior: "smooth", block: "nearest" });
  } catch (error) {
    showError(error.message);
  }
}

async function randomImage() {
  try {
    const answer = await api("/api/random");
    await showImage(answer.id);
  } catch (error) {
    showError(error.message);
  }
}

// ----- your own image ------------------------------------------------------
async function upload() {
  const file = $("upload").files[0];
  if (!file) return;
  showError("");
  $("upload-result").hidden = true;
  if (file.size > maxUploadBytes) {
    showError(`${file.name} is ${file.size.toLocaleString()} bytes; at most ${maxUploadBytes.toLocaleString()}`);
    return;
  }
  try {
    const answer = await api("/api/classify?k=5", { method: "POST", body: file });
    $("upload-preview").src = answer.preview;
    $("upload-size").textContent = `${file.name}: ${answer.format} ${answer.width} × ${answer.height} pixels`;
    renderBars($("upload-modality"), answer.zero_shot);
    renderCaptions($("upload-captions"), answer.captions);
    $("upload-result").hidden = false;
  } catch (error) {
    showError(`${file.name}: ${error.message}`);
  }
}

// ----- the run's facts -----------------------------------------------------
function number(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

async function loadFacts() {
  try {
    const info = await api("/api/info");
    maxUploadBytes = info.max_upload_bytes;
    $("max-upload").textContent = `${(info.max_upload_bytes / 2 ** 20).toFixed(1)} MB`;
    $("detail").dataset.n = info.n;
    const parts = [
      `run ${info.run}`, `${info.checkpoint} checkpoint, epoch ${info.epoch}`,
      `validation loss ${number(info.val_loss, 4)}`, `${info.n} pairs (${info.data})`,
    ];
    const r = info.retrieval;
    parts.push(r ? `retrieval R@10 ${number(r["i2t_R@10"], 3)} image→text, ${number(r["t2i_R@10"], 3)} ` +
                   `text→image (${r.split} split, ${r.n} pairs, ${r.checkpoint} checkpoint)`
                 : "retrieval not evaluated (python -m tinyclip.evaluate --task retrieval)");
    $("facts").textContent = parts.join(" · ");
  } catch (error) {
    showError(`cannot reach the server: ${error.message}`);
  }
}

$("search-form").addEventListener("submit", search);
$("random").addEventListener("click", randomImage);
$("upload").addEventListener("change", upload);
loadFacts();
