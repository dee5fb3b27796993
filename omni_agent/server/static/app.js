// The omni-agent voice page: microphone -> WebRTC (/v1/webrtc/offer, Opus) or WebSocket
// (/v1/live) -> streamed reply audio. Protocol: docs/protocol.md, docs/webrtc.md. No
// framework, no build step.
'use strict';

const params = new URLSearchParams(location.search);
const token = params.get('token');
const $ = (id) => document.getElementById(id);

// Everything the page knows, readable from outside (the browser test reads it).
const state = window.omni = {
  connected: false, ready: null, events: [], userTexts: [], agentTexts: [], errors: [],
  audioChunks: 0, audioBytes: 0, sourcesStarted: 0, sourcesEnded: 0, playedSeconds: 0,
  captureMaxRms: 0, sentAudioBytes: 0, stops: 0, latencies: [], interruptions: [],
  revisions: [], traces: [], transport: null, heardAfterMs: [], rtcPlayedSeconds: 0,
  transcripts: [],
};

// Every turn's latency figures, for tests and benches (bench/voice_latency.py): one object
// per turn, filled in as its messages and its first audible reply audio come. Times ending
// in _client_ms are performance.now(); the other _ms are durations from the end of the
// user's speech.
const figures = window.omniTurns = [];

let ws = null;
let pc = null, dc = null, rtcInfo = null, rtcTimer = null, replyEl = null;  // the WebRTC path
let micCtx = null, micStream = null, micNode = null;
let playCtx = null, playHead = 0;
const turns = new Map();          // turn_id -> per-turn view and playback state
let pendingTurnEl = null;         // an article created on speech_started, before user_turn
let speechStoppedAt = null;       // performance.now() when the server saw the user stop
let pendingFig = null;            // the figures of a turn whose speech ended, before user_turn
let captureClock = null;          // the WebSocket path: which input sample was captured when
let progressTimer = null;

// ------------------------------------------------------------------ the link (either transport)

function isOpen() {
  if (state.transport === 'webrtc') return !!dc && dc.readyState === 'open';
  return !!ws && ws.readyState === WebSocket.OPEN;
}

// The page's own parameters; every other one (end_silence_ms, threshold, ...: the live
// session's settings, docs/protocol.md) goes on to the server, which refuses unknown ones
// with a message listing the allowed names.
const PAGE_PARAMS = new Set(['token', 'autostart', 'transport', 'processing', 'barge_in', 'sample_rate']);

function passSessionParams(u) {
  for (const [k, v] of params) if (!PAGE_PARAMS.has(k)) u.searchParams.set(k, v);
}

function sendMsg(obj) { if (!isOpen()) return; (state.transport === 'webrtc' ? dc : ws).send(JSON.stringify(obj)); }

// ------------------------------------------------------------------ UI helpers

function setConn(on, text) { const el = $('conn'); el.textContent = text; el.className = 'pill ' + (on ? 'on' : 'off'); }
function setVad(kind, text) { const el = $('vad'); el.textContent = text; el.className = 'pill ' + kind; }
function showError(msg) { const el = $('error'); el.textContent = msg; el.hidden = false; }
function hideError() { $('error').hidden = true; }

function newArticle() {
  const el = $('turn-tpl').content.firstElementChild.cloneNode(true);
  $('transcript').appendChild(el);
  el.scrollIntoView({block: 'end'});
  return el;
}

function turn(id) {
  let t = turns.get(id);
  if (!t) {
    const el = pendingTurnEl || newArticle();
    pendingTurnEl = null;
    t = {id, el, utterances: [], deltas: '', sources: [], stopped: false, played: 0, firstAudioAt: null,
         audioSeconds: 0};
    turns.set(id, t);
  }
  return t;
}

function renderAgent(t) {
  const span = t.el.querySelector('.atext');
  const shown = t.utterances.filter(Boolean).join(' ');
  span.textContent = shown || t.deltas;
  span.style.color = shown ? '' : '#888';
}

function esc(s) { const d = document.createElement('span'); d.textContent = s == null ? '' : String(s); return d.innerHTML; }

function renderTrace(t, trace) {
  const box = t.el.querySelector('.changes');
  const ul = box.querySelector('ul');
  ul.innerHTML = '';
  for (const iv of trace.interventions || []) {
    const li = document.createElement('li');
    let html = `<b>${esc(iv.middleware)}</b> ${esc(iv.action)} at ${esc(iv.point)}`;
    if (iv.before != null || iv.after != null) {
      html += `: <span class="before">${esc(iv.before)}</span> → <span class="after">${esc(iv.after)}</span>`;
    }
    if (iv.reason) html += ` <i>(${esc(iv.reason)})</i>`;
    li.innerHTML = html;
    ul.appendChild(li);
  }
  for (const s of trace.segments || []) {
    if (s.spoken !== s.display) {
      const li = document.createElement('li');
      li.innerHTML = `clause ${s.index}: shown <span class="after">${esc(s.display)}</span>, spoken <span class="after">${esc(s.spoken)}</span>`;
      ul.appendChild(li);
    }
  }
  for (const tc of trace.tool_calls || []) {
    const li = document.createElement('li');
    li.innerHTML = `tool <b>${esc(tc.name)}</b>(${esc(tc.arguments)}) → ${esc(tc.result)}`;
    ul.appendChild(li);
  }
  box.hidden = ul.children.length === 0;
  if (!box.hidden) box.open = true;
}

// The server's figures of turn t (its latency message) into t's figures.
function takeLatency(t, m) {
  const f = t.fig;
  const from = m.from_speech_end_ms || {};
  f.transcript_final_ms = from.transcript_final ?? null;
  f.first_token_ms = from.first_token ?? null;
  f.first_audio_sent_ms = from.first_audio_sent ?? null;
  f.draft = m.draft ?? null;
  if (!f.end_of_turn && m.end_of_turn) f.end_of_turn = m.end_of_turn;
  if (f.speech_end_client_ms == null && m.speech_end_ms != null && state.transport === 'ws') {
    f.speech_end_ms = m.speech_end_ms;  // a server that names the end of speech only here
    [f.speech_end_client_ms, f.measure] = speechEnd({speech_end_ms: m.speech_end_ms}, null);
    if (f.speech_end_client_ms != null && f.audible_client_ms != null) {
      f.audible_ms = Math.round(f.audible_client_ms - f.speech_end_client_ms);
    }
  }
}

function renderLatency(t, m) {
  const parts = [];
  const add = (label, v) => { if (v != null) parts.push(`<span>${label} <b>${Math.round(v)} ms</b></span>`); };
  const f = t.fig;
  if (f && f.audible_ms != null) {  // the headline: what the user waited for
    const est = f.measure === 'estimate';
    parts.push(`<span class="honest" title="from the end of your speech to the first reply audio you could hear">` +
               `reply audible <b>${est ? '≈' : ''}${f.audible_ms} ms</b> after you stopped` +
               `${est ? ' <i>(estimate: the uplink delay is not counted)</i>' : ''}</span>`);
  }
  const from = m.from_speech_end_ms || {};
  add('→ transcript', from.transcript_final);
  add('→ first token', from.first_token);
  add('→ first audio sent', from.first_audio_sent);
  if (m.draft) parts.push(`<span>draft <b>${esc(m.draft)}</b></span>`);
  const eot = f && f.end_of_turn;
  if (eot && eot.detector) {
    parts.push(`<span>end of turn by <b>${esc(eot.detector)}</b>${eot.p_end != null ? ` (p ${Number(eot.p_end).toFixed(2)})` : ''}` +
               `${eot.wait_ms != null ? `, waited ${Math.round(eot.wait_ms)} ms` : ''}</span>`);
  }
  const st = m.stages_ms || {};
  add('speech recognition', m.asr_ms || null);
  add('thinker first token', st.thinker_first_token);
  add('first clause', st.first_utterance);
  add('talker first audio', st.talker_first_audio);
  add('end of turn → first audio sent', m.first_audio_ms);
  add('heard after end of turn', t.heardAfterMs);
  add('whole turn', m.turn_ms);
  for (const [k, v] of Object.entries(st)) if (k.startsWith('utterance:')) add(k.slice(10) + ' (middleware)', v);
  t.el.querySelector('.latency').innerHTML = parts.join(' ');
}

// ------------------------------------------------------------------ the honest latency figure
//
// From the true end of the user's speech (the last voiced audio, which the server names by
// its position in the input stream: speech_end_ms) to the moment the reply's first audio is
// audible. The WebSocket path knows it exactly: it counts the samples it sends, as the
// server does, and when each block was captured. WebRTC has no sample counter: there the end
// of speech is estimated from the server's own clock (since_speech_end_ms), which leaves
// out the uplink delay.

// Input position -> performance.now(). Each 20 ms block from the capture worklet carries the
// AudioContext time after its last sample; the audio clock maps to performance.now() by the
// smallest delivery delay among the blocks around it (the one that came straight through: a
// busy main thread delays the others, never that one).
class CaptureClock {
  constructor(rate) {
    this.rate = rate;
    this.sent = 0;        // samples sent to the server so far
    this.blocks = [];     // {end: samples sent after this block, ctx: its end (s), lag: ms}
  }

  add(samples, ctxEnd) {
    this.sent += samples;
    this.blocks.push({end: this.sent, ctx: ctxEnd, lag: performance.now() - ctxEnd * 1000});
    if (this.blocks.length > 9000) this.blocks.splice(0, 3000);  // keeps the last 2-3 minutes
  }

  // performance.now() at which input position `ms` (of audio since the first sample sent)
  // was captured; null when that part of the stream was not sent or is long gone.
  at(ms) {
    const b = this.blocks;
    const n = Math.min(ms * this.rate / 1000, this.sent);
    if (!b.length || n < b[0].end - this.rate) return null;
    let lo = 0, hi = b.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (b[mid].end >= n) hi = mid; else lo = mid + 1; }
    const ctx = b[lo].ctx - (b[lo].end - n) / this.rate;
    let lag = Infinity;
    for (let i = Math.max(0, lo - 100); i < Math.min(b.length, lo + 100); i++) lag = Math.min(lag, b[i].lag);
    return ctx * 1000 + lag;
  }
}

// When the user's speech ended, on this page's clock, from a speech_stopped or latency
// message: [performance.now() time, 'exact' | 'estimate'], or [null, null].
function speechEnd(m, receivedAt) {
  if (state.transport === 'ws' && captureClock && m.speech_end_ms != null) {
    const at = captureClock.at(m.speech_end_ms);
    if (at != null) return [at, 'exact'];
  }
  if (m.since_speech_end_ms != null && receivedAt != null) return [receivedAt - m.since_speech_end_ms, 'estimate'];
  return [null, null];
}

function newFigures(kind) {
  return {turn_id: null, kind, measure: null, speech_end_ms: null, speech_end_client_ms: null,
          audible_client_ms: null, audible_ms: null, transcript_final_ms: null, first_token_ms: null,
          first_audio_sent_ms: null, draft: null, end_of_turn: null, heard_after_ms: null, tools: [],
          transcript: null, reply: null, reason: null};
}

// The reply of turn t became audible at performance.now() time `at`.
function replyAudible(t, at) {
  const f = t.fig;
  if (!f || f.audible_client_ms != null) return;
  f.audible_client_ms = at;
  if (f.speech_end_client_ms != null) f.audible_ms = Math.round(at - f.speech_end_client_ms);
  renderLatency(t, t.latency || {});
}

// AudioContext time -> performance.now(): the context says which of its times is being
// heard now (output latency included); the fallback adds the latency it reports.
function audibleAt(ctx, when) {
  const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  if (ts && ts.performanceTime > 0 && ts.contextTime > 0) return ts.performanceTime + (when - ts.contextTime) * 1000;
  return performance.now() + (when - ctx.currentTime + (ctx.outputLatency || ctx.baseLatency || 0)) * 1000;
}

// ------------------------------------------------------------------ audio out

function ensurePlayCtx() {
  if (!playCtx) playCtx = new AudioContext();
  if (playCtx.state === 'suspended') playCtx.resume();
  return playCtx;
}

function playChunk(head, buf) {
  const t = turn(head.turn_id);
  if (t.stopped) return;
  const ctx = ensurePlayCtx();
  const i16 = new Int16Array(buf);
  const f32 = new Float32Array(i16.length);
  for (let i = 0; i < i16.length; i++) f32[i] = i16[i] / 32768;
  if (!f32.length) return;
  const ab = ctx.createBuffer(1, f32.length, head.sample_rate);
  ab.copyToChannel(f32, 0);
  const node = ctx.createBufferSource();
  node.buffer = ab;
  node.connect(ctx.destination);
  const start = Math.max(ctx.currentTime + 0.02, playHead);
  node.start(start);
  playHead = start + ab.duration;
  const src = {node, start, dur: ab.duration, done: false};
  t.sources.push(src);
  t.audioSeconds += ab.duration;
  state.audioChunks += 1;
  state.audioBytes += buf.byteLength;
  state.sourcesStarted += 1;
  if (t.firstAudioAt == null) {
    t.firstAudioAt = start;
    if (speechStoppedAt != null && t.fromSpeech) {
      t.heardAfterMs = performance.now() - speechStoppedAt + (start - ctx.currentTime) * 1000;
      state.heardAfterMs.push(Math.round(t.heardAfterMs));
      if (t.fig) t.fig.heard_after_ms = Math.round(t.heardAfterMs);
    }
    replyAudible(t, audibleAt(ctx, start));
  }
  node.onended = () => {
    if (src.done) return;
    src.done = true;
    const played = Math.min(Math.max(ctx.currentTime - src.start, 0), src.dur);
    t.played += played;
    state.playedSeconds += played;
    state.sourcesEnded += 1;
    if (t.sources.every((s) => s.done) && isOpen() && !t.stopped) {
      sendMsg({type: 'playback', turn_id: t.id, played_ms: Math.round(t.played * 1000), final: false});
    }
    if (!anyPlaying()) setVad('idle', 'listening');
  };
  setVad('agent', 'agent speaking');
}

function anyPlaying() {
  for (const t of turns.values()) if (!t.stopped && t.sources.some((s) => !s.done)) return true;
  return false;
}

function playedMs(t) {
  const now = playCtx ? playCtx.currentTime : 0;
  let s = 0;
  for (const src of t.sources) s += src.done ? 0 : Math.min(Math.max(now - src.start, 0), src.dur);
  return Math.round((t.played + s) * 1000);
}

// Stop the reply at once (barge-in) and tell the server how much of it was heard.
function stopPlayback(turnId) {
  const t = turns.get(turnId);
  state.stops += 1;
  // Over WebRTC the server flushed its track and knows what it sent: nothing to report.
  if (state.transport === 'webrtc') { if (t) t.stopped = true; return; }
  if (!t) { sendMsg({type: 'playback', turn_id: turnId, played_ms: 0, final: true}); return; }
  const heard = playedMs(t);
  t.stopped = true;
  for (const src of t.sources) {
    if (!src.done) {
      const played = Math.min(Math.max(playCtx.currentTime - src.start, 0), src.dur);
      src.done = true;
      t.played += played;
      state.playedSeconds += played;
      state.sourcesEnded += 1;
      try { src.node.stop(); } catch (e) { /* already stopped */ }
    }
  }
  if (playCtx) playHead = playCtx.currentTime;
  sendMsg({type: 'playback', turn_id: turnId, played_ms: heard, final: true});
}

// ------------------------------------------------------------------ audio in

function sendAudio(f32, ctxEnd) {
  let sum = 0;
  for (let i = 0; i < f32.length; i++) sum += f32[i] * f32[i];
  const rms = Math.sqrt(sum / f32.length);
  if (rms > state.captureMaxRms) state.captureMaxRms = rms;
  if (!ws || ws.readyState !== WebSocket.OPEN || !state.ready) return;
  const i16 = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) {
    const v = Math.max(-1, Math.min(1, f32[i]));
    i16[i] = v < 0 ? v * 32768 : v * 32767;
  }
  ws.send(i16.buffer);
  state.sentAudioBytes += i16.byteLength;
  if (captureClock) captureClock.add(i16.length, ctxEnd);
}

async function startMic() {
  const aec = $('aec').checked;
  // With processing off the browser hands over the microphone exactly as recorded (and
  // Chromium's fake capture device plays its file unchanged); turn it on for loudspeakers.
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: {echoCancellation: aec, noiseSuppression: aec, autoGainControl: aec},
  });
  micCtx = new AudioContext({sampleRate: 16000});
  await micCtx.audioWorklet.addModule('/static/capture-worklet.js');
  const src = micCtx.createMediaStreamSource(micStream);
  micNode = new AudioWorkletNode(micCtx, 'pcm-capture');
  micNode.port.onmessage = (e) => sendAudio(e.data.samples, e.data.end);
  const mute = micCtx.createGain();
  mute.gain.value = 0;
  src.connect(micNode);
  micNode.connect(mute).connect(micCtx.destination);  // keeps the worklet running
  await micCtx.resume();
  return micCtx.sampleRate;
}

// ------------------------------------------------------------------ the socket

function connect(sampleRate) {
  return new Promise((resolve, reject) => {
    const u = new URL('/v1/live', location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (token) u.searchParams.set('token', token);
    u.searchParams.set('sample_rate', String(Math.round(sampleRate)));
    u.searchParams.set('barge_in', $('bargein').checked ? 'true' : 'false');
    passSessionParams(u);
    ws = new WebSocket(u);
    ws.binaryType = 'arraybuffer';
    captureClock = new CaptureClock(Math.round(sampleRate));
    let ready = false;
    ws.onmessage = (e) => {
      const m = onMessage(e.data);
      if (m && m.type === 'ready') { ready = true; resolve(m); }
    };
    ws.onclose = (e) => {
      state.connected = false;
      state.ready = null;
      setConn(false, 'disconnected');
      if (e.code !== 1000) showError(`connection closed (${e.code}${e.reason ? ': ' + e.reason : ''})`);
      if (!ready) reject(new Error(e.reason || `closed with code ${e.code}`));
      stopLocal();
    };
    ws.onerror = () => {};
  });
}

function onMessage(data) {
  if (typeof data !== 'string') {
    // A binary frame is one chunk of reply audio: a 16-byte header, then int16 PCM.
    const v = new DataView(data);
    const head = {turn_id: v.getUint32(0, true), seq: v.getUint32(4, true), sample_rate: v.getUint32(8, true),
                  utterance_index: v.getUint16(12, true), final: (v.getUint8(14) & 1) === 1};
    state.events.push('audio_chunk');
    playChunk(head, data.slice(16));
    return null;
  }
  const m = JSON.parse(data);
  state.events.push(m.type);
  switch (m.type) {
    case 'ready':
      state.ready = m;
      state.connected = true;
      setConn(true, 'connected');
      setVad('idle', 'listening');
      break;
    case 'speech_started':
      if (!m.ignored && !pendingTurnEl) pendingTurnEl = newArticle();
      setVad('user', m.ignored ? 'you (ignored: barge-in off)' : 'you are speaking');
      break;
    case 'speech_stopped':
      if (m.ignored) {  // too short to interrupt the agent, or barge-in is off: no turn
        if (pendingTurnEl) { pendingTurnEl.remove(); pendingTurnEl = null; }
        setVad(anyPlaying() ? 'agent' : 'idle', anyPlaying() ? 'agent speaking' : 'listening');
        break;
      }
      speechStoppedAt = performance.now();
      pendingFig = newFigures('plain');
      pendingFig.speech_end_ms = m.speech_end_ms ?? null;
      pendingFig.end_of_turn = m.end_of_turn ?? null;
      [pendingFig.speech_end_client_ms, pendingFig.measure] = speechEnd(m, speechStoppedAt);
      setVad('idle', 'thinking…');
      break;
    case 'transcript': {  // what the ears heard so far (final: the turn's transcript)
      state.transcripts.push({text: m.text, final: !!m.final, turn_id: m.turn_id ?? null});
      const t = m.turn_id != null ? turns.get(m.turn_id) : null;
      const el = t ? t.el : (pendingTurnEl || (pendingTurnEl = newArticle()));
      const u = el.querySelector('.utext');
      u.textContent = m.text || '…';
      u.classList.toggle('interim', !m.final);
      break;
    }
    case 'no_speech':
      if (pendingTurnEl) { pendingTurnEl.remove(); pendingTurnEl = null; }
      pendingFig = null;
      setVad('idle', 'listening');
      break;
    case 'user_turn': {
      const t = turn(m.turn_id);
      t.fromSpeech = (m.parts || []).some((p) => p.kind === 'audio');
      const u = t.el.querySelector('.utext');
      u.textContent = m.text || '(audio)';
      u.classList.remove('interim');
      state.userTexts.push(m.text);
      if (!t.fig) {
        t.fig = t.fromSpeech ? (pendingFig || newFigures('plain')) : newFigures('text');
        if (t.fromSpeech) pendingFig = null;
        t.fig.turn_id = m.turn_id;
        figures.push(t.fig);
      }
      t.fig.transcript = m.text ?? null;
      break;
    }
    case 'text_delta': { const t = turn(m.turn_id); t.deltas += m.text; renderAgent(t); break; }
    case 'utterance': { const t = turn(m.turn_id); t.utterances[m.index] = m.display ?? m.text; renderAgent(t); break; }
    case 'audio_chunk': {  // base64 framing (?audio_out=base64)
      const bin = atob(m.data);
      const buf = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
      playChunk(m, buf.buffer);
      break;
    }
    case 'stop_playback': stopPlayback(m.turn_id); break;
    case 'interruption': {
      state.interruptions.push(m);
      const t = turn(m.turn_id);
      t.el.querySelector('.atext').insertAdjacentHTML('afterend',
        ` <i class="cut">(interrupted${m.cancel_ms != null ? `, stopped in ${m.cancel_ms} ms` : ''})</i>`);
      break;
    }
    case 'turn_end': {
      const t = turn(m.turn_id);
      if (!t.utterances.length && m.text) { t.deltas = m.text; renderAgent(t); }
      state.agentTexts.push(m.text);
      if (t.fig) { t.fig.reply = m.text ?? null; t.fig.reason = m.reason ?? null; }
      if (!anyPlaying()) setVad('idle', 'listening');
      break;
    }
    case 'memory_revised': {
      state.revisions.push(m);
      const t = turn(m.turn_id);
      t.el.querySelector('.latency').insertAdjacentHTML('beforebegin',
        `<div class="latency">remembered as heard: “${esc(m.heard)}”</div>`);
      break;
    }
    case 'latency': {
      state.latencies.push(m);
      const t = turn(m.turn_id);
      t.latency = m;
      if (t.fig) takeLatency(t, m);
      renderLatency(t, m);
      break;
    }
    case 'trace': {
      state.traces.push(m.trace);
      const t = turn(m.turn_id);
      const tools = (m.trace.tool_calls || []).map((c) => c.name);
      if (t.fig) { t.fig.tools = tools; if (tools.length && t.fig.kind === 'plain') t.fig.kind = 'tool'; }
      renderTrace(t, m.trace);
      break;
    }
    case 'error': state.errors.push(m); showError(m.message); break;
    case 'shutdown': showError('The server is shutting down.'); break;
    default: break;
  }
  return m;
}

// ------------------------------------------------------------------ WebRTC

// WebRTC is the default where the server offers it and the browser has it; ?transport=ws
// (or the switch) picks the WebSocket instead.
async function chooseTransport() {
  const sel = $('transport');
  let on = false;
  if (window.RTCPeerConnection) {
    try {
      const r = await fetch('/v1/webrtc', {headers: token ? {Authorization: `Bearer ${token}`} : {}});
      if (r.ok) { rtcInfo = await r.json(); on = !!rtcInfo.enabled; }
    } catch (e) { /* no WebRTC here: the WebSocket it is */ }
  }
  sel.querySelector('option[value=webrtc]').disabled = !on;
  const asked = params.get('transport');
  sel.value = asked === 'ws' || asked === 'webrtc' ? asked : (on ? 'webrtc' : 'ws');
  if (sel.value === 'webrtc' && !on) sel.value = 'ws';
  syncAec();
}

// The WebRTC path gets the browser's echo cancellation (its reply plays through a media
// element the canceller knows about). ?processing=off turns capture processing off (tests:
// Chromium's fake microphone feeds its file exactly only then).
function syncAec() {
  if ($('transport').value === 'webrtc') $('aec').checked = params.get('processing') !== 'off';
}

function waitIceGathering(conn, ms) {
  if (conn.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (conn.iceGatheringState === 'complete') resolve(); };
    conn.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, ms);  // host candidates come within milliseconds; do not wait on more
  });
}

function rms(an, buf) {
  an.getFloatTimeDomainData(buf);
  let sum = 0;
  for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
  return Math.sqrt(sum / buf.length);
}

async function startRTC() {
  const aec = $('aec').checked;
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: {echoCancellation: aec, noiseSuppression: aec, autoGainControl: aec},
  });
  const ctx = ensurePlayCtx();
  const micAn = ctx.createAnalyser();
  micAn.fftSize = 1024;
  ctx.createMediaStreamSource(micStream).connect(micAn);
  pc = new RTCPeerConnection({iceServers: (rtcInfo && rtcInfo.ice_servers) || []});
  for (const tr of micStream.getAudioTracks()) pc.addTrack(tr, micStream);
  dc = pc.createDataChannel('omni');
  let replyAn = null;
  pc.ontrack = (e) => {
    const stream = e.streams[0] || new MediaStream([e.track]);
    replyEl = replyEl || new Audio();
    replyEl.autoplay = true;
    replyEl.srcObject = stream;  // the playback itself (and what Chromium's echo canceller hears)
    replyEl.play().catch(() => {});
    replyAn = ctx.createAnalyser();
    replyAn.fftSize = 1024;
    ctx.createMediaStreamSource(stream).connect(replyAn);  // measured, not played twice
  };
  const buf = new Float32Array(1024);
  let last = performance.now();
  rtcTimer = setInterval(() => {
    const now = performance.now(), dt = (now - last) / 1000;
    last = now;
    const m = rms(micAn, buf);
    if (m > state.captureMaxRms) state.captureMaxRms = m;
    if (!replyAn || rms(replyAn, buf) < 0.01) return;
    state.rtcPlayedSeconds += dt;
    // The first reply sound after the user stopped: what the user waited for.
    const t = [...turns.values()].reverse().find((x) => x.fromSpeech);
    if (t && t.heardAfterMs == null && speechStoppedAt != null && !t.stopped) {
      t.heardAfterMs = now - speechStoppedAt;
      state.heardAfterMs.push(Math.round(t.heardAfterMs));
      if (t.fig) t.fig.heard_after_ms = Math.round(t.heardAfterMs);
      if (t.latency) renderLatency(t, t.latency);
      replyAudible(t, now);
    }
    setVad('agent', 'agent speaking');
  }, 20);
  const ready = new Promise((resolve, reject) => {
    dc.onmessage = (e) => { const m = onMessage(e.data); if (m && m.type === 'ready') resolve(m); };
    dc.onclose = () => { state.connected = false; state.ready = null; setConn(false, 'disconnected'); stopLocal(); };
    pc.onconnectionstatechange = () => {
      if (pc && (pc.connectionState === 'failed' || pc.connectionState === 'closed')) {
        showError(`WebRTC connection ${pc.connectionState}`);
        reject(new Error(`connection ${pc.connectionState}`));
      }
    };
    setTimeout(() => reject(new Error('no answer on the data channel within 15 s')), 15000);
  });
  await pc.setLocalDescription(await pc.createOffer());
  await waitIceGathering(pc, 2000);
  const u = new URL('/v1/webrtc/offer', location.href);
  u.searchParams.set('barge_in', $('bargein').checked ? 'true' : 'false');
  passSessionParams(u);
  const headers = {'Content-Type': 'application/sdp'};
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(u, {method: 'POST', headers, body: pc.localDescription.sdp});
  if (!r.ok) {
    let msg = `HTTP ${r.status}`;
    try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
  await ready;
}

function closeRTC() {
  if (rtcTimer) { clearInterval(rtcTimer); rtcTimer = null; }
  if (dc) { try { dc.close(); } catch (e) { /* closed */ } dc = null; }
  if (pc) { pc.close(); pc = null; }
  if (replyEl) replyEl.srcObject = null;
}

// ------------------------------------------------------------------ controls

async function start() {
  hideError();
  $('start').disabled = true;
  try {
    ensurePlayCtx();
    state.transport = $('transport').value;
    if (state.transport === 'webrtc') {
      await startRTC();
    } else {
      const rate = await startMic();
      await connect(rate);
    }
    $('stop').disabled = false;
    $('interrupt').disabled = false;
    progressTimer = setInterval(reportProgress, 250);
  } catch (e) {
    showError(`Could not start: ${e.name ? e.name + ': ' : ''}${e.message}`);
    state.errors.push({type: 'error', message: String(e)});
    stop();
  }
}

function reportProgress() {
  if (state.transport !== 'ws' || !isOpen()) return;
  for (const t of turns.values()) {
    if (!t.stopped && t.sources.some((s) => !s.done)) {
      sendMsg({type: 'playback', turn_id: t.id, played_ms: playedMs(t), final: false});
    }
  }
}

function stopLocal() {
  if (progressTimer) { clearInterval(progressTimer); progressTimer = null; }
  if (micStream) { micStream.getTracks().forEach((tr) => tr.stop()); micStream = null; }
  if (micCtx) { micCtx.close(); micCtx = null; }
  $('start').disabled = false;
  $('stop').disabled = true;
  $('interrupt').disabled = true;
}

function stop() {
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  closeRTC();
  stopLocal();
  setVad('idle', 'idle');
}

async function sendText(e) {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  hideError();
  try {
    ensurePlayCtx();
    if (!isOpen()) { state.transport = 'ws'; await connect(16000); }
    sendMsg({type: 'text', text});
    $('text').value = '';
    $('interrupt').disabled = false;
  } catch (err) {
    showError(`Could not send: ${err.message}`);
  }
}

$('start').onclick = start;
$('stop').onclick = stop;
$('interrupt').onclick = () => sendMsg({type: 'interrupt'});
$('bargein').onchange = () => {
  sendMsg({type: 'configure', barge_in: $('bargein').checked});
};
$('typed').onsubmit = sendText;
$('transport').onchange = syncAec;
chooseTransport().then(() => { if (params.get('autostart') === '1') start(); });
