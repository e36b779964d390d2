// Omniformer's live transcription: an AudioWorklet that hands the microphone's samples to the page.
//
// Loaded by app.js with audioContext.audioWorklet.addModule("/static/pcm-worklet.js") (a file of
// this server: the page's Content-Security-Policy allows no blob: or inline script). The node
// mixes its input to mono and posts Float32Array chunks of `processorOptions.frames` samples
// (the page asks for 100 ms) at the AudioContext's rate; the page converts them to 16-bit PCM
// and sends them on the WebSocket. The message "flush" posts what is left, then "flushed".
// Its output stays silent.
"use strict";

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frames = (options.processorOptions && options.processorOptions.frames) || 4800;
    this.chunk = new Float32Array(Math.max(128, Math.floor(frames)));
    this.filled = 0;
    this.port.onmessage = (e) => {
      if (e.data === "flush") {
        this.post();
        this.port.postMessage("flushed");
      }
    };
  }

  post() {
    if (!this.filled) return;
    const samples = this.chunk.slice(0, this.filled);
    this.port.postMessage(samples, [samples.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || !channels.length) return true;  // no input connected (yet)
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.chunk[this.filled++] = sum / channels.length;
      if (this.filled === this.chunk.length) this.post();
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
