// InstrumentGen audition page: POST a cue, poll the status, then play the notes with Web Audio.
// Plain script, no build step, nothing fetched from outside this server.
"use strict";

const VELOCITIES = [25, 50, 75, 100, 127];
const COMPUTER_KEYS = "awsedftgyhujk"; // C..C of one octave, white and black keys interleaved
const state = { marked: new Set(), parent: null, child: null, info: null, instrument: null, request: null, notes: new Map(), buffers: new Map(), octave: 60, context: null };
window.lastPlayed = null; // {url, status, pitch, velocity}: read by the browser test
window.playCount = 0;
window.activeSources = 0;
window.lastError = null; // the last error shown: read by the browser test

const $ = (id) => document.getElementById(id);

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function init() {
  state.info = await api("/v1/info");
  for (const [id, values] of [["family", state.info.families], ["source", state.info.sources]]) {
    $(id).innerHTML = values.map((v) => `<option>${v}</option>`).join("");
  }
  $("candidates").innerHTML = Array.from({ length: state.info.max_candidates }, (_, i) => `<option>${i + 1}</option>`).join("");
  $("key-label").classList.toggle("hidden", !state.info.api_key_required);
  for (const radio of document.querySelectorAll("input[name=cue]")) {
    radio.addEventListener("change", () => {
      const cue = document.querySelector("input[name=cue]:checked").value;
      $("prompt-row").classList.toggle("hidden", cue !== "prompt");
      $("metadata-row").classList.toggle("hidden", cue !== "metadata");
      $("file-row").classList.toggle("hidden", cue !== "file");
    });
  }
  $("request").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
  $("velocity").addEventListener("input", () => { $("velocity-value").textContent = velocity(); });
  $("download").addEventListener("click", () => download().catch((error) => setError(error.message)));
  $("retry").addEventListener("click", retry);
  $("file").addEventListener("change", () => { $("file-name").textContent = $("file").files[0] ? $("file").files[0].name : ""; });
  $("drop").addEventListener("dragover", (event) => event.preventDefault());
  $("drop").addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) { $("file").files = event.dataTransfer.files; $("file-name").textContent = $("file").files[0].name; }
  });
  $("library-list").addEventListener("click", () => listLibrary().catch((error) => setError(error.message)));
  $("regenerate").addEventListener("click", () => regenerate().catch((error) => setError(error.message)));
  $("show-parent").addEventListener("click", () => openInstrument(state.parent).catch((error) => setError(error.message)));
  $("show-child").addEventListener("click", () => openInstrument(state.child).catch((error) => setError(error.message)));
  drawKeyboard();
  drawPitchPlot();
  document.addEventListener("keydown", onComputerKey);
  const shared = new URLSearchParams(window.location.search).get("id");  // a link to an existing instrument
  if (shared) await poll(`/v1/instruments/${encodeURIComponent(shared)}`).catch((error) => setError(error.message));
}

function velocity() { return VELOCITIES[Number($("velocity").value)]; }

function requestBody() {
  const body = { candidates: Number($("candidates").value), keys: { low: Number($("low").value), high: Number($("high").value) } };
  if (document.querySelector("input[name=cue]:checked").value === "prompt") body.prompt = $("prompt").value;
  else { body.family = $("family").value; body.source = $("source").value; }
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function generate(body = requestBody()) {
  $("generate").disabled = true;
  $("retry").classList.add("hidden");
  setProgress(0, "Submitting…");
  try {
    let accepted;
    if (document.querySelector("input[name=cue]:checked").value === "file") {
      // multipart: the recording is the cue, the other fields go as the JSON part "request"
      const file = $("file").files[0];
      if (!file) throw new Error("reference_audio: no file chosen; allowed: a WAV, FLAC or OGG file");
      const form = new FormData();
      form.append("reference_audio", file, file.name);
      const { prompt, family, source, ...settings } = body;
      form.append("request", JSON.stringify(settings));  // a field, not a second file
      accepted = await api("/v1/instruments", { method: "POST", body: form });
    } else {
      accepted = await api("/v1/instruments", { method: "POST", headers: { "Content-Type": "application/json" },
                                                body: JSON.stringify(body) });
    }
    $("seed-out").textContent = accepted.seed;
    state.request = { ...body, seed: accepted.seed };  // a retry asks for the very same instrument
    await poll(accepted.status_url);
  } catch (error) {
    setError(error.message);
  } finally {
    $("generate").disabled = false;
  }
}

function retry() {
  // POST the same request again: a failed or stale instrument starts again from the notes it has.
  if (state.request) generate(state.request);
}

async function poll(statusUrl) {
  for (;;) {
    const status = await api(statusUrl);
    const total = status.notes_total || 1;
    if (!state.request && status.request) {  // opened by link: the stored request, without its nulls
      state.request = Object.fromEntries(Object.entries({ ...status.request, seed: status.seed }).filter(([, v]) => v !== null));
    }
    if (status.status === "done") return show(status);
    if (status.status === "failed") {
      $("retry").classList.remove("hidden");
      throw new Error(`generation failed after ${status.notes_done} of ${status.notes_total} notes: ${status.error || "no reason given"}`);
    }
    if (status.status === "stale") {  // its server replica is gone; another adopts it, or Retry now
      $("retry").classList.remove("hidden");
      setProgress(status.notes_done / total, `stale: ${status.notes_done} / ${status.notes_total} notes, waiting for a server to take it over`, "stale");
    } else {
      $("retry").classList.add("hidden");
      setProgress(status.notes_done / total, `${status.status}: ${status.notes_done} / ${status.notes_total} notes`);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function setProgress(fraction, text, kind = "") {
  $("progress-bar").style.width = `${Math.round(fraction * 100)}%`;
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

function setError(message) {
  $("status").textContent = message;
  $("status").className = "status error";
  window.lastError = message;
}

function fmt(value, digits = 3) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }

function show(status) {
  state.instrument = status;
  state.notes = new Map(status.notes.map((n) => [`${n.pitch}_${n.velocity}`, n]));
  state.buffers.clear();
  $("tc").textContent = fmt(status.tc);
  $("tc-raw").textContent = fmt(status.tc_without_selection);
  $("mad").textContent = status.mad_pitch === null ? "unvoiced" : `${fmt(status.mad_pitch, 2)} st`;
  $("seed-out").textContent = status.seed;
  $("player").classList.remove("hidden");
  setProgress(1, `done: ${status.notes_total} notes (id ${status.id})`);
  drawKeyboard();
  drawPitchPlot();
  window.instrumentReady = true;
}

async function listLibrary() {
  const query = new URLSearchParams({ text: $("library-text").value, limit: "50" });
  if ($("library-sort").value) query.set("sort", $("library-sort").value);
  const page = await api(`/v1/library?${query}`);
  $("library-total").textContent = `${page.total} instruments`;
  const list = $("library-entries");
  list.innerHTML = "";
  for (const entry of page.entries) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = entry.id;
    button.textContent = `${entry.name || entry.id} — ${entry.prompt || entry.family || ""} (TC ${fmt(entry.tc)}, CLAP ${fmt(entry.clap_score)})`;
    button.addEventListener("click", () => { state.request = null; openInstrument(entry.status_url).catch((error) => setError(error.message)); });
    item.appendChild(button);
    list.appendChild(item);
  }
}

function toggleMark(pitch) {
  if (state.marked.has(pitch)) state.marked.delete(pitch); else state.marked.add(pitch);
  const keys = [...state.marked].sort((a, b) => a - b);
  $("marked").textContent = keys.length ? `marked: ${keys.join(", ")}` : "none marked";
  $("regenerate").disabled = keys.length === 0;
  drawKeyboard();
}

async function regenerate() {
  // A new instrument: the marked keys rendered again, every other note the parent's; then switch between the two.
  const parent = state.instrument.id;
  const body = { keys: [...state.marked].sort((a, b) => a - b) };
  if ($("seed").value !== "") body.seed = Number($("seed").value) + 1;
  setProgress(0, "Regenerating…");
  const accepted = await api(`/v1/instruments/${parent}/regenerate`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  state.parent = `/v1/instruments/${parent}`;
  state.child = accepted.status_url;
  state.marked.clear();
  $("marked").textContent = "none marked";
  $("regenerate").disabled = true;
  await openInstrument(state.child);
  $("show-parent").classList.remove("hidden");
  $("show-child").classList.remove("hidden");
}

async function openInstrument(statusUrl) {
  window.instrumentReady = false;
  await poll(statusUrl);
  window.shownUrl = statusUrl;
}

function isBlack(pitch) { return [1, 3, 6, 8, 10].includes(pitch % 12); }

function drawKeyboard() {
  const board = $("keyboard");
  board.innerHTML = "";
  const whites = [];
  for (let p = 21; p <= 108; p++) if (!isBlack(p)) whites.push(p);
  const width = 100 / whites.length;
  const sampled = new Set([...state.notes.values()].map((n) => n.pitch));
  for (let p = 21; p <= 108; p++) {
    const key = document.createElement("div");
    const black = isBlack(p);
    key.className = `key ${black ? "black" : "white"}${state.instrument && !sampled.has(p) ? " missing" : ""}`;
    key.dataset.pitch = p;
    const left = black ? whites.indexOf(p - 1) * width + width * 0.68 : whites.indexOf(p) * width;
    key.style.left = `${left}%`;
    key.style.width = `${black ? width * 0.64 : width}%`;
    if (!black && p % 12 === 0) key.innerHTML = `<span class="name">C${p / 12 - 1}</span>`;
    if (state.marked.has(p)) key.classList.add("marked");
    key.addEventListener("mousedown", () => ($("mark").checked ? toggleMark(p) : play(p)));
    board.appendChild(key);
  }
}

function nearestNote(pitch, vel) {
  let best = null;
  for (const note of state.notes.values()) {
    const cost = Math.abs(note.pitch - pitch) * 1000 + Math.abs(note.velocity - vel);
    if (!best || cost < best.cost) best = { note, cost };
  }
  return best && best.note;
}

async function buffer(note) {
  if (!state.buffers.has(note.url)) {
    const response = await fetch(note.url, { headers: headers() });
    window.lastPlayed = { url: note.url, status: response.status, pitch: note.pitch, velocity: note.velocity };
    if (!response.ok) throw new Error(`note ${note.pitch} / velocity ${note.velocity} did not load (HTTP ${response.status})`);
    state.buffers.set(note.url, await state.context.decodeAudioData(await response.arrayBuffer()));
  }
  return state.buffers.get(note.url);
}

async function play(pitch) {
  try {
    await playNote(pitch);
  } catch (error) {
    setError(`This note could not be played: ${error.message}`);
  }
}

async function playNote(pitch) {
  if (!state.instrument) return;
  state.context = state.context || new AudioContext();
  if (state.context.state !== "running") await state.context.resume();
  const note = nearestNote(pitch, velocity());
  if (!note) return;
  const source = state.context.createBufferSource();
  source.buffer = await buffer(note);
  source.playbackRate.value = Math.pow(2, (pitch - note.pitch) / 12);  // an unsampled key: transpose the nearest
  source.connect(state.context.destination);
  source.onended = () => { window.activeSources -= 1; };
  window.activeSources += 1;
  window.playCount += 1;
  window.audioState = state.context.state;
  source.start();
  const key = document.querySelector(`.key[data-pitch="${pitch}"]`);
  if (key) { key.classList.add("active"); setTimeout(() => key.classList.remove("active"), 250); }
}

function onComputerKey(event) {
  if (event.target.tagName === "INPUT" || event.repeat) return;
  const k = event.key.toLowerCase();
  if (k === "z") state.octave = Math.max(24, state.octave - 12);
  else if (k === "x") state.octave = Math.min(96, state.octave + 12);
  else if (COMPUTER_KEYS.includes(k)) play(Math.min(108, state.octave + COMPUTER_KEYS.indexOf(k)));
}

function drawPitchPlot() {
  const canvas = $("pitch-plot");
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = { left: 46, right: 12, top: 22, bottom: 26 };
  g.clearRect(0, 0, width, height);
  const limit = 1.0;  // semitones shown; larger errors are drawn at the edge
  const x = (p) => pad.left + ((p - 21) / 87) * (width - pad.left - pad.right);
  const y = (e) => pad.top + (1 - (Math.max(-limit, Math.min(limit, e)) + limit) / (2 * limit)) * (height - pad.top - pad.bottom);
  g.strokeStyle = "#333846"; g.fillStyle = "#9aa0ad"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (const e of [-1, -0.5, 0, 0.5, 1]) {
    g.beginPath(); g.moveTo(pad.left, y(e)); g.lineTo(width - pad.right, y(e)); g.stroke();
    g.fillText(`${e > 0 ? "+" : ""}${e}`, 8, y(e) + 4);
  }
  for (let p = 24; p <= 108; p += 12) g.fillText(`C${p / 12 - 1}`, x(p) - 8, height - 8);
  g.fillStyle = "#e8e9ee"; g.fillText("pitch error per key (semitones, YIN); ● voiced, × unvoiced", pad.left, 14);
  const colours = { 25: "#4f7cc4", 50: "#5aa0e6", 75: "#7fc4a0", 100: "#e0a340", 127: "#e06a40" };
  for (const note of state.notes.values()) {
    g.fillStyle = colours[note.velocity] || "#fff";
    if (note.pitch_error_semitones === null) {
      g.fillText("×", x(note.pitch) - 3, y(0) + 4);
    } else {
      g.beginPath(); g.arc(x(note.pitch), y(note.pitch_error_semitones), 3, 0, 2 * Math.PI); g.fill();
    }
  }
}

async function download() {
  const response = await fetch(state.instrument.bundle, { headers: headers() });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`The download failed: ${body.error || `HTTP ${response.status}`}`);
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = `instrument-${state.instrument.id}.zip`;
  link.click();
  URL.revokeObjectURL(url);
}

init().catch((error) => setError(error.message));
