// Microphone capture: hands 20 ms blocks of mono float samples to the page, each with the
// AudioContext time just after its last sample (the page maps it to performance.now(), to
// know when the user's speech ended: the honest latency figure). It runs in an
// AudioContext created at 16 kHz, so the browser has already resampled.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.round(sampleRate / 50); // 20 ms
    this.buf = new Float32Array(this.block);
    this.n = 0;
  }
  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const ch = input[0];
    for (let i = 0; i < ch.length; i++) {
      // Mix down when the track has more than one channel (Chromium's fake mic is stereo).
      let v = ch[i];
      if (input.length > 1) { v = 0; for (let c = 0; c < input.length; c++) v += input[c][i]; v /= input.length; }
      this.buf[this.n++] = v;
      if (this.n === this.block) {
        this.port.postMessage({samples: this.buf.slice(0), end: currentTime + (i + 1) / sampleRate});
        this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor('pcm-capture', PcmCapture);
