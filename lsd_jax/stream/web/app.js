// LSD-JAX browser client: camera -> JPEG over a WebSocket -> output canvas.
// Latest-frame semantics: a new frame is sent only after the previous result arrived.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { sent: 0, received: 0, inFlight: false, sentAt: 0, rtts: [], doneAt: [],
                width: 256, height: 256, ws: null };
const grab = document.createElement("canvas");
const out = $("output");

function pct(xs, q) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q / 100 * s.length))];
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function sendFrame() {
  const ws = state.ws, video = $("camera");
  if (!ws || ws.readyState !== WebSocket.OPEN || state.inFlight || video.readyState < 2) return;
  // Centre-crop to the model's aspect; the server resizes to its exact size.
  const vw = video.videoWidth, vh = video.videoHeight, aspect = state.width / state.height;
  let sw = vw, sh = vh;
  if (vw / vh > aspect) sw = Math.round(vh * aspect); else sh = Math.round(vw / aspect);
  grab.width = state.width; grab.height = state.height;
  grab.getContext("2d").drawImage(video, (vw - sw) / 2, (vh - sh) / 2, sw, sh, 0, 0, state.width, state.height);
  state.inFlight = true;
  grab.toBlob((blob) => {
    if (!blob || ws.readyState !== WebSocket.OPEN) { state.inFlight = false; return; }
    blob.arrayBuffer().then((buf) => {
      state.sentAt = performance.now();
      ws.send(buf);
      state.sent += 1;
      $("sent").textContent = state.sent;
    });
  }, "image/jpeg", 0.85);
}

async function showFrame(data) {
  const bitmap = await createImageBitmap(new Blob([data], { type: "image/jpeg" }));
  out.width = bitmap.width; out.height = bitmap.height;
  out.getContext("2d").drawImage(bitmap, 0, 0);
  const now = performance.now();
  state.rtts.push(now - state.sentAt); if (state.rtts.length > 300) state.rtts.shift();
  state.doneAt.push(now); if (state.doneAt.length > 60) state.doneAt.shift();
  state.received += 1;
  $("received").textContent = state.received;
  $("rtt-p50").textContent = pct(state.rtts, 50).toFixed(1);
  $("rtt-p99").textContent = pct(state.rtts, 99).toFixed(1);
  if (state.doneAt.length > 1) {
    const span = (state.doneAt[state.doneAt.length - 1] - state.doneAt[0]) / 1000;
    $("fps").textContent = ((state.doneAt.length - 1) / span).toFixed(1);
  }
  state.inFlight = false;
  sendFrame();
}

function onMessage(ev) {
  if (typeof ev.data !== "string") { showFrame(ev.data); return; }
  const msg = JSON.parse(ev.data);
  if (msg.type === "hello") {
    state.width = msg.width; state.height = msg.height;
    $("model").textContent = `${msg.model.label} (${msg.model.resolution}, ${msg.model.steps} steps)`;
    status("streaming");
    sendFrame();
  } else if (msg.type === "frame") {
    $("step-p50").textContent = msg.p50_ms.toFixed(1);
    $("step-p99").textContent = msg.p99_ms.toFixed(1);
    $("dropped").textContent = msg.dropped;
  } else if (msg.type === "prompt") {
    $("effect").textContent = msg.effect ? `nearest effect: ${msg.effect.name} (${msg.effect.score.toFixed(2)})` : "";
  } else if (msg.type === "error") {
    status(msg.error, true);
    state.inFlight = false;
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = onMessage;
  ws.onclose = (ev) => { if (ev.code !== 1000) status(`disconnected (${ev.code} ${ev.reason})`, true); };
  state.ws = ws;
}

$("prompt-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: "prompt", text: $("prompt").value, transition: 0 }));
  }
});

async function start() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    $("camera").srcObject = stream;
    await $("camera").play();
  } catch (e) {
    status(`camera unavailable: ${e.name}: ${e.message}`, true);
    return;
  }
  connect();
  setInterval(sendFrame, 100);  // starts the loop once both the camera and the socket are ready
  // A frame lost in transit must not stall the loop forever.
  setInterval(() => { if (state.inFlight && performance.now() - state.sentAt > 5000) { state.inFlight = false; sendFrame(); } }, 1000);
}

start();
