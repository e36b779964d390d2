// Omniformer's page. No framework, no build step, nothing loaded from elsewhere.
//
// GET /v1/model says which task is served; its panel (a <template> in index.html) is put in
// <main>: "qa" asks about an image in text or by voice, "classify" shows the top labels of an
// image, a recording and/or a text (the inputs the model reads), "asr" transcribes a recording
// (recorded, uploaded or an example) or the microphone live: an AudioWorklet (pcm-worklet.js)
// hands it samples, sent as 16-bit PCM over the WebSocket /v1/transcribe/stream. "translate"
// translates a text as it is typed and "caption" captions an image (or a recording), both
// streamed in token by token: POST /v1/generate with stream=true answers Server-Sent Events,
// read here from fetch()'s body (EventSource cannot POST). Any other task gets a notice pointing
// to /docs. The panels use the same element ids, so the helpers below serve them all.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  task: null, info: null, image: null, audio: null, maxAudioSeconds: 8, sampleRate: 16000, recorder: null,
  topK: 5, acceptsAudio: true, recordedLabel: "Recorded question ready.",
  live: null,      // asr: the live transcription under way (its microphone, AudioContext and socket)
  onInput: null,   // called when an image or a recording is set (classify: classify it)
  quiet: false,    // while an example fills in the inputs, onInput waits
  request: 0,      // the latest request's number: an older answer arriving late is not shown
  generation: null, // translate, caption: the AbortController of the stream under way
};
const NOUNS = { image: "an image", audio: "a recording", text: "a text" };
const FROM = { image: "the image", audio: "the recording", text: "the text" };

function listWords(words, last = "or") {
  return words.length < 2 ? words.join("") : `${words.slice(0, -1).join(", ")} ${last} ${words[words.length - 1]}`;
}

function inputChanged(kind) {
  if (state.onInput && !state.quiet) state.onInput(kind);
}

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
  inputChanged("image");
}

function clearImage() {
  state.image = null;
  const preview = $("preview");
  if (!preview) return;
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = true;
  $("drop-hint").hidden = false;
  $("drop").dataset.empty = "true";
}

function isAudio(file) {
  return (file.type && file.type.startsWith("audio/")) || /\.(wav|flac|ogg)$/i.test(file.name || "");
}

// A dropped file: an image to the image, a recording to the recording (where the model reads one).
function dropFiles(files, preferAudio) {
  files = [...files];
  const image = files.find((f) => f.type.startsWith("image/"));
  const audio = state.acceptsAudio ? files.find(isAudio) : undefined;
  if (audio && (preferAudio || !image || !$("drop"))) setAudio(audio, `Audio file: ${audio.name}`);
  else if ($("drop")) setImage(image || files[0]);
  else showError(`"${files[0] ? files[0].name : "the file"}" is not a recording. Choose a WAV, FLAC or OGG file.`);
}

function acceptDrops(zone, preferAudio) {
  if (!zone) return;
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => { e.preventDefault(); dropFiles(e.dataTransfer.files, preferAudio); });
}

function setupImage() {
  const input = $("image-input");
  if (!input) return;
  $("choose-image").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { setImage(input.files[0]); input.value = ""; });
  acceptDrops($("drop"), false);
}

// ---------------------------------------------------------------------------------------------
// Voice: record with the microphone (converted to 16-bit WAV here) or upload a file
// ---------------------------------------------------------------------------------------------

function setAudio(blob, label) {
  state.audio = blob;
  const player = $("audio-preview");
  if (!player) return;
  if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
  if (blob) {
    player.src = URL.createObjectURL(blob);
    $("audio-row").hidden = false;
    $("audio-status").textContent = label;
    hideError();
    inputChanged("audio");
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
      setAudio(wav, state.recordedLabel);
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
  if ($("live")) $("live").disabled = on || Boolean(liveUnsupported());  // asr: one microphone user at a time
  $("record-label").textContent = on ? "Stop" : "Record";
  $("audio-status").textContent = on ? `Recording… (up to ${Math.floor(state.maxAudioSeconds)} s)` : $("audio-status").textContent;
}

function setupVoice() {
  if (!$("record")) return;
  $("record").addEventListener("click", () => (state.recorder ? stopRecording() : startRecording()));
  const input = $("audio-input");
  $("choose-audio").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (file) setAudio(file, `Audio file: ${file.name}`);
    input.value = "";
  });
  $("audio-clear").addEventListener("click", () => setAudio(null));
  acceptDrops($("sound-drop"), true);
}

// ---------------------------------------------------------------------------------------------
// Results: the best one large, then the top ones as bars with probabilities
// ---------------------------------------------------------------------------------------------

function showError(message) { const el = $("error"); el.textContent = message; el.hidden = false; }
function hideError() { const el = $("error"); if (el) el.hidden = true; }

function showBars(items) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const { label: name, probability } of items) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label"; label.textContent = name; label.title = name;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "presentation");
    const fill = document.createElement("span");
    fill.className = "fill";
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct"; pct.textContent = `${(100 * probability).toFixed(1)}%`;
    li.append(label, track, pct);
    li.setAttribute("aria-label", `${name}: ${(100 * probability).toFixed(1)} percent`);
    bars.append(li);
    // Set through the CSSOM (allowed by the page's Content-Security-Policy), after layout so it animates.
    requestAnimationFrame(() => { fill.style.width = `${Math.max(0.5, 100 * probability)}%`; });
  }
}

// POST a form to the task's route; the body on success, null (with the error shown) otherwise.
async function post(url, form, button) {
  const number = ++state.request;
  const result = $("result");
  if (button) button.disabled = true;
  result.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(url, { method: "POST", body: form });
    const data = await response.json().catch(() => null);
    if (number !== state.request) return null;  // a newer request was sent meanwhile
    if (!response.ok) {
      showError(data && data.error ? data.error.message : `The server answered ${response.status}.`);
      return null;
    }
    hideError();
    return data;
  } catch (e) {
    if (number === state.request) showError(`Could not reach the server: ${e.message}`);
    return null;
  } finally {
    if (number === state.request) {
      if (button) button.disabled = false;
      result.setAttribute("aria-busy", "false");
    }
  }
}

async function fetchBlob(url, name) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  const blob = await response.blob();
  return new File([blob], name, { type: blob.type });
}

// One example in the list: a thumbnail (its image, or a sign for a recording or a text) and a caption.
function exampleItem(ex, caption, ariaLabel, onClick) {
  const li = document.createElement("li");
  li.className = "example";
  const main = document.createElement("button");
  main.type = "button"; main.className = "main";
  main.setAttribute("aria-label", ariaLabel);
  let thumb;
  if (ex.has_image) {
    thumb = document.createElement("img");
    thumb.src = `/v1/examples/${ex.index}/image`; thumb.alt = ""; thumb.loading = "lazy";
  } else {
    thumb = document.createElement("span");
    thumb.className = "thumb";
    thumb.setAttribute("aria-hidden", "true");
    thumb.textContent = ex.has_audio ? "♪" : "“…”";
  }
  const q = document.createElement("span");
  q.className = "q"; q.textContent = caption;
  main.append(thumb, q);
  main.addEventListener("click", onClick);
  li.append(main);
  return li;
}

// ---------------------------------------------------------------------------------------------
// Question answering: ask about an image in text or by voice
// ---------------------------------------------------------------------------------------------

function showAnswer(data, expected) {
  const best = data.answers[0];
  $("answer-main").textContent = best ? best.answer : "—";
  const way = { text: "asked in text", voice: "asked by voice", "text+voice": "asked in text and by voice" }[data.asked_by];
  let meta = `${way} · ${Math.round(data.time_ms)} ms`;
  if (expected) meta += best && best.answer === expected ? ` · expected "${expected}" ✓` : ` · expected "${expected}"`;
  $("answer-meta").textContent = meta;
  showBars(data.answers.map((a) => ({ label: a.answer, probability: a.probability })));
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
  const data = await post("/v1/answer", form, $("ask"));
  if (data) showAnswer(data, expected);
}

async function tryQaExample(ex, byVoice) {
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

function qaExample(ex) {
  if (!ex.question || !ex.has_image) return null;
  const li = exampleItem(ex, ex.question, `Ask: ${ex.question}`, () => tryQaExample(ex, false));
  if (ex.has_audio) {
    const voice = document.createElement("button");
    voice.type = "button"; voice.className = "button link voice-try"; voice.textContent = "Ask by voice";
    voice.setAttribute("aria-label", `Ask by voice: ${ex.question}`);
    voice.addEventListener("click", () => tryQaExample(ex, true));
    li.append(voice);
  }
  return li;
}

function setupQa(info) {
  state.topK = Math.min(5, info.answers.length);  // a small answer vocabulary has fewer than 5
  document.title = "Omniformer · Ask about an image";
  $("subtitle").textContent = "Ask about an image, in text or by voice";
  $("model-name").textContent = `Model: ${info.model} · ${info.answers.length} possible answers`;
  setupImage();
  setupVoice();
  $("ask-form").addEventListener("submit", (e) => { e.preventDefault(); ask(); });
  return { hint: "ShapesWorld test scenes the model has never seen. One click asks the question.", item: qaExample };
}

// ---------------------------------------------------------------------------------------------
// Recognition: the top labels of an image, a recording and/or a text
// ---------------------------------------------------------------------------------------------

function reads(kind) { return state.info.inputs.includes(kind) && state.info.input_kinds?.[kind] !== "unsupported"; }

function showLabels(data, expected) {
  const best = data.labels[0];
  $("answer-main").textContent = best ? best.label : "—";
  let meta = `from ${listWords(data.inputs.map((m) => FROM[m] || m), "and")} · ${Math.round(data.time_ms)} ms`;
  if (expected != null) meta += best && best.label === expected ? ` · true label "${expected}" ✓` : ` · true label "${expected}"`;
  $("answer-meta").textContent = meta;
  showBars(data.labels);
}

async function classify(expected) {
  hideError();
  const text = reads("text") ? $("text").value.trim() : "";
  const image = reads("image") ? state.image : null, audio = reads("audio") ? state.audio : null;
  if (!image && !audio && !text) {
    const ways = { image: "choose an image", audio: "record or upload a recording", text: "type a text" };
    const what = listWords(["image", "audio", "text"].filter(reads).map((m) => ways[m]));
    showError(`${what.charAt(0).toUpperCase()}${what.slice(1)} first.`);
    return;
  }
  const form = new FormData();
  if (image) form.append("image", image, image.name || "image");
  if (audio) form.append("audio", audio, audio.name || "recording.wav");
  if (text) form.append("text", text);
  form.append("top_k", String(state.topK || 5));
  const data = await post("/v1/classify", form, $("classify"));
  if (data) showLabels(data, expected);
}

async function tryClassifyExample(ex) {
  state.quiet = true;  // one request, once every input of the example is in
  try {
    if (reads("image")) {
      if (ex.has_image) setImage(await fetchBlob(`/v1/examples/${ex.index}/image`, `example-${ex.index}`));
      else clearImage();
    }
    if (reads("audio")) {
      if (ex.has_audio) {
        setAudio(await fetchBlob(`/v1/examples/${ex.index}/audio`, `example-${ex.index}.wav`),
                 `Example recording (${ex.id})`);
      } else setAudio(null);
    }
    if (reads("text")) $("text").value = ex.text || "";
  } catch (e) {
    showError(`Could not load the example: ${e.message}`);
    return;
  } finally {
    state.quiet = false;
  }
  await classify(ex.label);
}

function classifyExample(ex) {
  const has = [ex.has_image && reads("image") && "image", ex.has_audio && reads("audio") && "audio",
               ex.text && reads("text") && "text"].filter(Boolean);
  if (ex.label == null || !has.length) return null;
  const caption = ex.text && reads("text") ? `${ex.label} · “${ex.text}”` : ex.label;
  const li = exampleItem(ex, caption, `Classify the example ${ex.id} (true label ${ex.label})`,
                         () => tryClassifyExample(ex));
  li.querySelector(".q").dataset.kind = "label";
  return li;
}

function setupClassify(info) {
  const inputs = ["image", "audio", "text"].filter(reads);
  state.topK = Math.min(5, info.labels.length);
  state.acceptsAudio = inputs.includes("audio");
  state.recordedLabel = "Recording ready.";
  document.title = "Omniformer · Recognition";
  $("subtitle").textContent = inputs.length ? `Recognise ${listWords(inputs.map((m) => NOUNS[m]))}` : "Recognition";
  $("model-name").textContent = `Model: ${info.model} · ${info.labels.length} labels · reads ${info.inputs.join(", ")}`;
  // Only the cards of the inputs the model reads, numbered; the button goes under the last one.
  for (const card of document.querySelectorAll("[data-input]")) {
    if (!inputs.includes(card.dataset.input)) card.remove();
  }
  const cards = [...document.querySelectorAll("[data-input]")];
  document.querySelectorAll("#panel .step").forEach((step, i) => { step.textContent = String(i + 1); });
  const button = $("classify");
  if (cards.length) cards[cards.length - 1].append(button); else button.remove();
  const hints = { image: "drop or choose an image", audio: "record or upload a recording", text: "type a text" };
  const hint = listWords(inputs.map((m) => hints[m]));
  $("result-hint").textContent = inputs.length ? `${hint.charAt(0).toUpperCase()}${hint.slice(1)} to see its labels.`
                                               : "This page cannot send any input this model reads.";
  // Inputs of another registered modality: sent through the API (values) or from Python (files).
  const others = info.inputs.filter((m) => !inputs.includes(m));
  if (others.length) {
    const docs = document.createElement("a");
    docs.href = "/docs"; docs.textContent = "/docs";
    const files = others.filter((m) => info.input_kinds?.[m] === "unsupported");
    const values = others.filter((m) => !files.includes(m));
    const parts = [];
    if (values.length) parts.push(`${values.join(", ")} through POST /v1/classify.json`);
    if (files.length) parts.push(`${files.join(", ")} files (which the server does not decode) from Python`);
    const lead = `This model ${inputs.length ? "also " : ""}reads ${listWords(others, "and")}`;
    $("unsupported").append(`${lead}, which this page cannot send: classify ${parts.join(", and ")}; see `, docs, ".");
    $("unsupported").hidden = false;
  }
  setupImage();
  setupVoice();
  state.onInput = () => classify();  // a new image or recording: its labels at once
  if (inputs.includes("text")) {
    $("text").maxLength = info.max_text_chars || 2000;
    $("text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); classify(); }
    });
  }
  $("classify-form").addEventListener("submit", (e) => { e.preventDefault(); classify(); });
  return { hint: "Test samples the model has never seen, each with its true label. One click classifies one.",
           item: classifyExample };
}

// ---------------------------------------------------------------------------------------------
// Speech recognition: a recording transcribed at once, or the microphone live
// ---------------------------------------------------------------------------------------------

// A transcript as the asr task scores it (lower case, no punctuation, one space between
// words), to compare the result with an example's true transcript.
function normalised(text) {
  return text.toLowerCase().replace(/[.?!,;:"]/g, " ").split(/\s+/).filter(Boolean).join(" ");
}

function placeholder(text) {
  const span = document.createElement("span");
  span.className = "placeholder"; span.textContent = text;
  return span;
}

// Each word and its time in the recording: "cab 0.08–0.44 s".
function showWords(words) {
  const list = $("words");
  list.replaceChildren();
  for (const w of words || []) {
    const li = document.createElement("li");
    const word = document.createElement("span");
    word.className = "word"; word.textContent = w.word;
    const time = document.createElement("span");
    time.className = "time"; time.textContent = `${w.start.toFixed(2)}–${w.end.toFixed(2)} s`;
    li.append(word, " ", time);
    list.append(li);
  }
  list.hidden = !list.children.length;
}

// A finished transcript (an upload's or the end of a live one); `how` starts the meta line.
function showTranscript(data, how, expected) {
  $("transcript").replaceChildren(data.text ? data.text : placeholder("No words heard."));
  let meta = `${how} · ${data.seconds.toFixed(1)} s of audio`;
  if (data.time_ms != null) meta += ` · ${Math.round(data.time_ms)} ms`;
  if (expected != null) {
    meta += normalised(data.text) === normalised(expected) ? ` · true transcript "${expected}" ✓`
                                                           : ` · true transcript "${expected}"`;
  }
  $("answer-meta").textContent = meta;
  showWords(data.words);
}

async function transcribe(expected) {
  hideError();
  if (state.live) { showError("Stop the live transcription first."); return; }
  if (!state.audio) { showError("Record or upload a recording first."); return; }
  const form = new FormData();
  form.append("audio", state.audio, state.audio.name || "recording.wav");
  form.append("timings", "true");
  const data = await post("/v1/transcribe", form, null);
  if (data) showTranscript(data, "from the recording", expected);
}

async function tryAsrExample(ex) {
  state.quiet = true;  // transcribed below, with its true transcript
  try {
    setAudio(await fetchBlob(`/v1/examples/${ex.index}/audio`, `example-${ex.index}.wav`),
             `Example recording (${ex.id})`);
  } catch (e) {
    showError(`Could not load the example: ${e.message}`);
    return;
  } finally {
    state.quiet = false;
  }
  await transcribe(ex.text);
}

function asrExample(ex) {
  if (!ex.has_audio) return null;
  const li = exampleItem(ex, ex.text ? `“${ex.text}”` : ex.id,
                         `Transcribe the example ${ex.id}${ex.text ? ` (true transcript: ${ex.text})` : ""}`,
                         () => tryAsrExample(ex));
  li.querySelector(".q").dataset.kind = "label";
  return li;
}

// Live: microphone -> AudioWorklet (pcm-worklet.js: float samples, 100 ms at a time) -> 16-bit
// little-endian PCM -> binary WebSocket messages. The server answers "ready", then "partial"
// transcripts as they change; {"type": "end"} from here asks for the "final" one, after which
// it closes. A failure is an "error" message and a close. state.live is the stream under way.

function liveUnsupported() {
  if (!state.info.stream) return "This server does not offer live transcription.";
  if (!window.isSecureContext) {
    return "Live transcription needs a secure page: open it over https, or on localhost.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
    return "This browser cannot stream from the microphone (it lacks AudioWorklet). Record or upload instead.";
  }
  return null;
}

function toPcm16(samples) {
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return view.buffer;
}

// The transcript so far: its stable start as it is, the newest words after it dimmed.
function showPartial(msg) {
  const { text, stable } = msg;
  let sure = 0;
  if (text.startsWith(stable)) sure = stable.length;
  else while (sure < text.length && text[sure] === stable[sure]) sure++;
  const rest = document.createElement("span");
  rest.className = "tentative"; rest.textContent = text.slice(sure);
  if (text) $("transcript").replaceChildren(text.slice(0, sure), rest);
  else $("transcript").replaceChildren(placeholder("Listening…"));
  $("answer-meta").textContent = `live · ${msg.seconds.toFixed(1)} s`;
}

function setLiveUi(mode) {  // "off", "on" (starting or listening) or "ending"
  const button = $("live");
  button.setAttribute("aria-pressed", String(mode !== "off"));
  button.disabled = mode === "ending";
  $("live-label").textContent = { off: "Transcribe live", on: "Stop", ending: "Finishing…" }[mode];
  $("record").disabled = mode !== "off";
  // While the words change several times a second, the result is announced once, at the end.
  $("result").setAttribute("aria-live", mode === "off" ? "polite" : "off");
}

async function startLive() {
  const why = liveUnsupported();
  if (why) { showError(why); return; }
  hideError();
  const live = { limit: Math.max(0.5, state.info.stream.max_seconds - 0.5), sent: 0 };
  state.live = live;
  state.request++;  // an upload's answer arriving now is not shown over the live transcript
  $("result").setAttribute("aria-busy", "false");
  setLiveUi("on");
  $("live-status").textContent = "Starting the microphone…";
  try {
    // The microphone as it is: the browser's noise suppression and gain control, made for calls,
    // turn a quiet start into sudden noise that a recogniser hears as words.
    live.stream = await navigator.mediaDevices.getUserMedia(
      { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (e) {
    failLive(`Microphone not available: ${e.message}`, live);
    return;
  }
  if (state.live !== live) { releaseAudio(live); return; }  // stopped meanwhile
  try {
    live.context = new AudioContext();
    await live.context.audioWorklet.addModule("/static/pcm-worklet.js");
    live.rate = Math.round(live.context.sampleRate);
    live.source = live.context.createMediaStreamSource(live.stream);
    live.node = new AudioWorkletNode(live.context, "pcm-capture",
                                     { processorOptions: { frames: Math.round(live.rate / 10) } });
  } catch (e) {
    failLive(`Live transcription could not start: ${e.message}`, live);
    return;
  }
  if (state.live !== live) { releaseAudio(live); return; }
  live.node.port.onmessage = (e) => liveSamples(live, e.data);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  live.socket = new WebSocket(`${scheme}://${location.host}${state.info.stream.route}?sample_rate=${live.rate}`);
  live.socket.onmessage = (e) => liveMessage(live, e.data);
  live.socket.onclose = (e) => liveClosed(live, e);
}

function liveMessage(live, raw) {
  let msg;
  try { msg = JSON.parse(raw); } catch (e) { return; }
  if (msg.type === "ready") {
    live.ready = true;
    if (live.ending) return;  // stopped while the connection opened
    // Listen only now, so the first words are not lost while the connection opens.
    if (msg.max_seconds) live.limit = Math.max(0.5, Math.min(live.limit, msg.max_seconds - 0.5));
    live.source.connect(live.node);
    live.node.connect(live.context.destination);  // silent; keeps the node rendering
    live.context.resume();
    $("transcript").replaceChildren(placeholder("Listening…"));
    $("answer-meta").textContent = "live";
    showWords([]);
    const upTo = Math.floor(live.limit * 10) / 10;
    $("live-status").textContent = `Listening: speak now (up to ${upTo} s), then press Stop.`;
  } else if (msg.type === "partial" && !live.final) {
    showPartial(msg);
  } else if (msg.type === "final") {
    live.final = msg;
    clearTimeout(live.finalTimer);
    setLiveUi("off");
    showTranscript(msg, "live", null);
    $("live-status").textContent = liveFinished(live);
  } else if (msg.type === "error") {
    live.failed = true;
    releaseAudio(live);
    showError(msg.error ? msg.error.message : "The live transcription failed.");
  }
}

function liveSamples(live, data) {
  if (data === "flushed") { sendEnd(live); return; }
  if (live.endSent || !live.socket || live.socket.readyState !== WebSocket.OPEN) return;
  live.socket.send(toPcm16(data));
  live.sent += data.length;
  // Stop before the server's limit, so a long stream ends in a transcript, not an error.
  if (live.sent / live.rate >= live.limit) stopLive(`the ${Math.floor(live.limit * 10) / 10} s limit`);
}

// Stop (the user, or `why` it stopped by itself): the microphone goes off at once; the samples
// still in the worklet are sent, then "end".
function stopLive(why) {
  const live = state.live;
  if (!live || live.ending) return;
  live.ending = true;
  live.why = why;
  if (!live.socket || live.socket.readyState !== WebSocket.OPEN || !live.node) {
    live.cancelled = true;  // nothing sent yet: no transcript to wait for
    releaseAudio(live);
    if (live.socket) live.socket.close();
    endLive(live, "Live transcription stopped.");
    return;
  }
  setLiveUi("ending");
  $("live-status").textContent = why ? `Stopped at ${why}; finishing the transcript…` : "Finishing the transcript…";
  live.stream.getTracks().forEach((t) => t.stop());
  live.source.disconnect();
  live.node.port.postMessage("flush");
  live.flushTimer = setTimeout(() => sendEnd(live), 500);  // should the worklet not answer
}

function sendEnd(live) {
  if (live.endSent) return;
  live.endSent = true;
  clearTimeout(live.flushTimer);
  releaseAudio(live);
  if (live.socket.readyState !== WebSocket.OPEN) return;
  live.socket.send(JSON.stringify({ type: "end" }));
  live.finalTimer = setTimeout(() => {
    if (!live.final) failLive("The server sent no final transcript; try again.", live);
  }, 30000);
}

// The microphone's tracks stopped and the AudioContext closed (again: harmless).
function releaseAudio(live) {
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  if (live.node) live.node.port.onmessage = null;
  if (live.context && live.context.state !== "closed") live.context.close().catch(() => {});
}

function endLive(live, status) {
  clearTimeout(live.flushTimer);
  clearTimeout(live.finalTimer);
  releaseAudio(live);
  if (state.live !== live) return;
  state.live = null;
  setLiveUi("off");
  $("live-status").textContent = status;
}

function failLive(message, live) {
  live.failed = true;
  showError(message);
  if (live.socket && live.socket.readyState <= WebSocket.OPEN) live.socket.close();
  endLive(live, "Live transcription stopped.");
}

function liveFinished(live) {
  return `Live transcription finished${live.why ? ` (stopped at ${live.why})` : ""}.`;
}

function liveClosed(live, e) {
  if (live.final) { endLive(live, liveFinished(live)); return; }
  if (!live.failed && !live.cancelled) {
    const code = e.code === 1000 || e.code === 1005 ? "" : ` (code ${e.code})`;
    showError(live.ready ? `The connection to the server closed before the final transcript${code}. Try again.`
                         : `The live transcription could not start: the server closed the connection${code}.`);
  }
  endLive(live, "Live transcription stopped.");
}

function setupAsr(info) {
  document.title = "Omniformer · Speech recognition";
  $("subtitle").textContent = "Transcribe speech";
  const vocabulary = info.words ? `${info.words} words` : "any spelling";
  $("model-name").textContent = `Model: ${info.model} · ${info.decoder} decoder · ${vocabulary}`;
  state.recordedLabel = "Recording ready.";
  setupVoice();
  state.onInput = () => transcribe();  // a new recording: its transcript at once
  const why = liveUnsupported();
  if (why) {
    $("live").disabled = true;
    $("live-status").textContent = why;
  }
  $("live").addEventListener("click", () => (state.live ? stopLive() : startLive()));
  return { hint: "Test recordings the model has never heard, each with its true transcript. One click transcribes one.",
           item: asrExample };
}

// ---------------------------------------------------------------------------------------------
// Text generation (translate, caption): the text streamed in, token by token
// ---------------------------------------------------------------------------------------------

// Server-Sent Events from a fetch() response: calls onEvent(name, data) for each whole event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
    if (done) return;
  }
}

// The text so far, with a blinking cursor while more is coming.
function showGenerated(text, streaming) {
  const out = $("output");
  const parts = [text];
  if (streaming) {
    const cursor = document.createElement("span");
    cursor.className = "cursor"; cursor.setAttribute("aria-hidden", "true");
    parts.push(cursor);
  }
  if (!text && !streaming) parts.splice(0, 1, placeholder("(nothing written)"));
  out.replaceChildren(...parts);
  out.dataset.streaming = String(streaming);
}

// POST the form to /v1/generate as a stream; shows each token as it comes, then `done(data)`'s
// meta line. A newer request cancels this one (the server stops decoding it).
async function generate(form, button, metaOf) {
  if (state.generation) state.generation.abort();
  const controller = new AbortController();
  state.generation = controller;
  form.append("stream", "true");
  const result = $("result");
  result.setAttribute("aria-busy", "true");
  result.setAttribute("aria-live", "off");  // announced once, when the text is whole
  if (button) button.disabled = true;
  hideError();
  let finished = false;
  try {
    const response = await fetch("/v1/generate", { method: "POST", body: form, signal: controller.signal });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      showError(data && data.error ? data.error.message : `The server answered ${response.status}.`);
      return;
    }
    showGenerated("", true);
    $("answer-meta").textContent = "writing…";
    await readEvents(response, (name, data) => {
      if (state.generation !== controller) return;
      if (name === "token") {
        showGenerated(data.text, true);
        $("answer-meta").textContent = `writing… ${data.tokens} token${data.tokens === 1 ? "" : "s"}`;
      } else if (name === "done") {
        finished = true;
        result.setAttribute("aria-live", "polite");
        showGenerated(data.text, false);
        $("answer-meta").textContent = metaOf(data);
      } else if (name === "error") {
        finished = true;
        showError(data.error ? data.error.message : "The model failed.");
      }
    });
    if (!finished && state.generation === controller) showError("The connection closed before the text was finished. Try again.");
  } catch (e) {
    if (e.name !== "AbortError" && state.generation === controller) showError(`Could not reach the server: ${e.message}`);
  } finally {
    if (state.generation === controller) {
      state.generation = null;
      if (button) button.disabled = false;
      result.setAttribute("aria-busy", "false");
      result.setAttribute("aria-live", "polite");
      if (!finished && $("output").dataset.streaming === "true") showGenerated($("output").textContent, false);
    }
  }
}

function tokensMeta(data) {
  return `${data.tokens} token${data.tokens === 1 ? "" : "s"}${data.stopped ? "" : " (the length limit)"} · `
       + `${Math.round(data.time_ms)} ms`;
}

function translate() {
  const text = $("source").value.trim();
  if (!text) {
    if (state.generation) state.generation.abort();
    state.generation = null;
    showError("Type a text to translate first.");
    return;
  }
  const form = new FormData();
  form.append("text", text);
  return generate(form, null, (data) => tokensMeta(data) + (data.truncated
    ? ` · only the start was read: the model reads ${state.info.max_source_tokens} word pieces` : ""));
}

function setupTranslate(info) {
  document.title = "Omniformer · Translation";
  $("subtitle").textContent = "Translate a text";
  $("model-name").textContent = `Model: ${info.model} · streamed token by token`;
  const source = $("source");
  source.maxLength = info.max_text_chars || 2000;
  let timer = null;
  source.addEventListener("input", () => {  // translated as you type, once you pause
    clearTimeout(timer);
    if (!source.value.trim()) { hideError(); return; }
    timer = setTimeout(() => translate(), 400);
  });
  source.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); clearTimeout(timer); translate(); }
  });
  $("translate-form").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(timer); translate(); });
  return { hint: "", item: () => null };
}

function captionIt() {
  const inputs = state.info.inputs;
  const missing = inputs.filter((m) => !(m === "image" ? state.image : state.audio));
  if (missing.length) {
    const ways = { image: "choose an image", audio: "record or upload a recording" };
    const what = listWords(missing.map((m) => ways[m] || m), "and");
    showError(`${what.charAt(0).toUpperCase()}${what.slice(1)} first.`);
    return;
  }
  const form = new FormData();
  if (inputs.includes("image")) form.append("image", state.image, state.image.name || "image");
  if (inputs.includes("audio")) form.append("audio", state.audio, state.audio.name || "recording.wav");
  return generate(form, $("caption"), tokensMeta);
}

function setupCaption(info) {
  const inputs = ["image", "audio"].filter((m) => info.inputs.includes(m));
  state.acceptsAudio = inputs.includes("audio");
  state.recordedLabel = "Recording ready.";
  document.title = "Omniformer · Captioning";
  $("subtitle").textContent = `Caption ${listWords(inputs.map((m) => NOUNS[m]), "and")}`;
  $("model-name").textContent = `Model: ${info.model} · reads ${info.inputs.join(", ")} · streamed token by token`;
  for (const card of document.querySelectorAll("[data-input]")) {
    if (!inputs.includes(card.dataset.input)) card.remove();
  }
  document.querySelectorAll("#panel .step").forEach((step, i) => { step.textContent = String(i + 1); });
  const cards = [...document.querySelectorAll("[data-input]")];
  if (cards.length) cards[cards.length - 1].append($("caption"));
  const hints = { image: "drop or choose an image", audio: "record or upload a recording" };
  const hint = listWords(inputs.map((m) => hints[m]), "and");
  $("result-hint").textContent = `${hint.charAt(0).toUpperCase()}${hint.slice(1)} to see its caption.`;
  setupImage();
  setupVoice();
  state.onInput = () => captionIt();  // a new image or recording: its caption at once
  $("caption-form").addEventListener("submit", (e) => { e.preventDefault(); captionIt(); });
  return { hint: "", item: () => null };
}

// ---------------------------------------------------------------------------------------------
// Start-up: the model says the task; its panel, then its examples
// ---------------------------------------------------------------------------------------------

const PANELS = { qa: setupQa, classify: setupClassify, asr: setupAsr, translate: setupTranslate, caption: setupCaption };

function showPanel(name) {
  const main = $("panel");
  main.replaceChildren(document.importNode($(name).content, true));
  main.setAttribute("aria-busy", "false");
}

function showNotice(title, message) {
  showPanel("no-panel");
  $("notice-title").textContent = title;
  $("notice").textContent = message;
}

async function loadExamples(panel) {
  const response = await fetch("/v1/examples");
  if (!response.ok) return;
  const { examples } = await response.json();
  const items = examples.map(panel.item).filter(Boolean);
  if (!items.length) return;
  $("examples").replaceChildren(...items);
  $("examples-hint").textContent = panel.hint;
  $("examples-section").hidden = false;
}

async function start() {
  let info;
  try {
    const response = await fetch("/v1/model");
    info = await response.json().catch(() => null);
    if (!response.ok || !info) {
      const why = info && info.error ? info.error.message : `it answered ${response.status}`;
      showNotice("The model is not available", `GET /v1/model failed: ${why}. Reload the page to try again.`);
      return;
    }
  } catch (e) {
    showNotice("The server cannot be reached", `GET /v1/model failed: ${e.message}. Reload the page to try again.`);
    return;
  }
  state.info = info;
  state.task = info.task || "qa";
  if (info.max_audio_seconds) state.maxAudioSeconds = info.max_audio_seconds;
  if (info.audio_sample_rate) state.sampleRate = info.audio_sample_rate;
  const setup = PANELS[state.task];
  if (!setup) {
    document.title = `Omniformer · ${state.task}`;
    $("subtitle").textContent = `The ${state.task} task`;
    $("model-name").textContent = info.model ? `Model: ${info.model}` : "";
    showNotice(`No page for the ${state.task} task`,
               `This server runs the "${state.task}" task${info.model ? ` (model ${info.model})` : ""}, `
               + "which has no panel on this page.");
    return;
  }
  showPanel(`${state.task}-panel`);
  const panel = setup(info);
  loadExamples(panel).catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => { start(); });
