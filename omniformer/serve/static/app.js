// Omniformer QA page. No framework, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, audio: null, maxAudioSeconds: 8, sampleRate: 16000, recorder: null };

// ---------------------------------------------------------------------------------------------
// Image: choose or drop, with a preview
// ---------------------------------------------------------------------------------------------

function setImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`"${file.name}" is not an image. Choose a PNG, JPEG, GIF, BMP or WebP file.`);
    return;
  }
  state.image = file;
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = `The chosen image${file.name ? ": " + file.name : ""}`;
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("drop").dataset.empty = "false";
  hideError();
}

function setupImage() {
  const input = $("image-input"), drop = $("drop");
  $("choose-image").addEventListener("click", () => input.click());
  input.addEventListener("change", () => setImage(input.files[0]));
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
    setImage(file);
  });
}

// ---------------------------------------------------------------------------------------------
// Voice: record with the microphone (converted to 16-bit WAV here) or upload a file
// ---------------------------------------------------------------------------------------------

function setAudio(blob, label) {
  state.audio = blob;
  const player = $("audio-preview");
  if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
  if (blob) {
    player.src = URL.createObjectURL(blob);
    $("audio-row").hidden = false;
    $("audio-status").textContent = label;
  } else {
    player.removeAttribute("src");
    $("audio-row").hidden = true;
    $("audio-status").textContent = "";
  }
}

// Encode mono float samples as a 16-bit PCM WAV file.
function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

// Browsers record webm/opus or mp4/aac, which the server's decoder (libsndfile) does not read:
// decode here, mix to mono and resample to the model's rate, then send WAV.
async function toWav(blob) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  const ctx = new Ctx();
  let decoded;
  try { decoded = await ctx.decodeAudioData(await blob.arrayBuffer()); } finally { ctx.close(); }
  const rate = state.sampleRate;
  const length = Math.max(1, Math.ceil(decoded.duration * rate));
  const offline = new OfflineAudioContext(1, length, rate);  // one channel: the mix-down happens here
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return encodeWav(rendered.getChannelData(0), rate);
}

async function startRecording() {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("This browser cannot record audio here (recording needs https or localhost). Upload a file instead.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    showError(`Microphone not available: ${e.message}`);
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    clearTimeout(recorder.limitTimer);
    setRecordingUi(false);
    try {
      const wav = await toWav(new Blob(chunks, { type: recorder.mimeType }));
      setAudio(wav, "Recorded question ready.");
    } catch (e) {
      showError(`Could not convert the recording: ${e.message}`);
    }
  };
  state.recorder = recorder;
  recorder.start();
  setRecordingUi(true);
  // Stop just before the server's limit, so a recording is never refused for its length.
  recorder.limitTimer = setTimeout(() => stopRecording(), Math.max(1, state.maxAudioSeconds - 0.3) * 1000);
  hideError();
}

function stopRecording() {
  if (state.recorder && state.recorder.state !== "inactive") state.recorder.stop();
  state.recorder = null;
}

function setRecordingUi(on) {
  $("record").setAttribute("aria-pressed", String(on));
  $("record-label").textContent = on ? "Stop" : "Record";
  $("audio-status").textContent = on ? `Recording… (up to ${Math.floor(state.maxAudioSeconds)} s)` : $("audio-status").textContent;
}

function setupVoice() {
  $("record").addEventListener("click", () => (state.recorder ? stopRecording() : startRecording()));
  const input = $("audio-input");
  $("choose-audio").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (file) setAudio(file, `Audio file: ${file.name}`);
    input.value = "";
  });
  $("audio-clear").addEventListener("click", () => setAudio(null));
}

// ---------------------------------------------------------------------------------------------
// Asking and showing the answer
// ---------------------------------------------------------------------------------------------

function showError(message) { const el = $("error"); el.textContent = message; el.hidden = false; }
function hideError() { $("error").hidden = true; }

function showAnswer(data, expected) {
  const best = data.answers[0];
  $("answer-main").textContent = best ? best.answer : "—";
  const way = { text: "asked in text", voice: "asked by voice", "text+voice": "asked in text and by voice" }[data.asked_by];
  let meta = `${way} · ${Math.round(data.time_ms)} ms`;
  if (expected) meta += best && best.answer === expected ? ` · expected "${expected}" ✓` : ` · expected "${expected}"`;
  $("answer-meta").textContent = meta;
  const bars = $("bars");
  bars.replaceChildren();
  for (const { answer, probability } of data.answers) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label"; label.textContent = answer; label.title = answer;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "presentation");
    const fill = document.createElement("span");
    fill.className = "fill";
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct"; pct.textContent = `${(100 * probability).toFixed(1)}%`;
    li.append(label, track, pct);
    li.setAttribute("aria-label", `${answer}: ${(100 * probability).toFixed(1)} percent`);
    bars.append(li);
    // Set through the CSSOM (allowed by the page's Content-Security-Policy), after layout so it animates.
    requestAnimationFrame(() => { fill.style.width = `${Math.max(0.5, 100 * probability)}%`; });
  }
}

async function ask(expected) {
  hideError();
  const question = $("question").value.trim();
  if (!state.image) { showError("Choose an image first."); return; }
  if (!question && !state.audio) { showError("Type a question, or record or upload one."); $("question").focus(); return; }
  const form = new FormData();
  form.append("image", state.image, state.image.name || "image");
  if (question) form.append("question", question);
  if (state.audio) form.append("audio", state.audio, state.audio.name || "question.wav");
  form.append("top_k", String(state.topK || 5));
  const button = $("ask"), result = $("result");
  button.disabled = true; result.setAttribute("aria-busy", "true");
  try {
    const response = await fetch("/v1/answer", { method: "POST", body: form });
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      showError(data && data.error ? data.error.message : `The server answered ${response.status}.`);
      return;
    }
    showAnswer(data, expected);
  } catch (e) {
    showError(`Could not reach the server: ${e.message}`);
  } finally {
    button.disabled = false; result.setAttribute("aria-busy", "false");
  }
}

// ---------------------------------------------------------------------------------------------
// Examples and start-up
// ---------------------------------------------------------------------------------------------

async function fetchBlob(url, name) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  const blob = await response.blob();
  return new File([blob], name, { type: blob.type });
}

async function tryExample(ex, byVoice) {
  try {
    setImage(await fetchBlob(`/v1/examples/${ex.index}/image`, `example-${ex.index}`));
    if (byVoice) {
      $("question").value = "";
      setAudio(await fetchBlob(`/v1/examples/${ex.index}/audio`, `example-${ex.index}-question`),
               `Spoken question: "${ex.question}"`);
    } else {
      $("question").value = ex.question;
      setAudio(null);
    }
    await ask(ex.answer);
  } catch (e) {
    showError(`Could not load the example: ${e.message}`);
  }
}

async function loadExamples() {
  const response = await fetch("/v1/examples");
  if (!response.ok) return;
  const { examples } = await response.json();
  if (!examples.length) return;
  const list = $("examples");
  for (const ex of examples) {
    const li = document.createElement("li");
    li.className = "example";
    const main = document.createElement("button");
    main.type = "button"; main.className = "main";
    main.setAttribute("aria-label", `Ask: ${ex.question}`);
    const img = document.createElement("img");
    img.src = `/v1/examples/${ex.index}/image`; img.alt = ""; img.loading = "lazy";
    const q = document.createElement("span");
    q.className = "q"; q.textContent = ex.question;
    main.append(img, q);
    main.addEventListener("click", () => tryExample(ex, false));
    li.append(main);
    if (ex.has_audio) {
      const voice = document.createElement("button");
      voice.type = "button"; voice.className = "button link voice-try"; voice.textContent = "Ask by voice";
      voice.setAttribute("aria-label", `Ask by voice: ${ex.question}`);
      voice.addEventListener("click", () => tryExample(ex, true));
      li.append(voice);
    }
    list.append(li);
  }
  $("examples-section").hidden = false;
}

async function loadModel() {
  const response = await fetch("/v1/model");
  if (!response.ok) return;
  const info = await response.json();
  state.maxAudioSeconds = info.max_audio_seconds;
  state.sampleRate = info.audio_sample_rate;
  state.topK = Math.min(5, info.answers.length);  // a small answer vocabulary has fewer than 5
  $("model-name").textContent = `Model: ${info.model} · ${info.answers.length} possible answers`;
}

document.addEventListener("DOMContentLoaded", () => {
  setupImage();
  setupVoice();
  $("ask-form").addEventListener("submit", (e) => { e.preventDefault(); ask(); });
  loadModel().catch(() => {});
  loadExamples().catch(() => {});
});
