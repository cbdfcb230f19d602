// LSD-JAX browser demo: camera -> server -> output, over WebRTC (video tracks) or, where WebRTC
// cannot connect, a WebSocket of JPEG frames. ?transport=webrtc|websocket forces one.
// The token of a server that needs one comes from the URL: http://host:port/#token=...
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const state = {
  transport: null, sent: 0, received: 0, inFlight: false, sentAt: 0, rtts: [],
  width: 256, height: 256, ws: null, pc: null, channel: null, backoff: 1000, cameraFrame: 0,
  lastSentFrame: -1,
  retry: null,
};
const grab = document.createElement("canvas");
const out = $("output");
const remote = document.createElement("video");  // the WebRTC output track, drawn into `out`
remote.muted = true; remote.playsInline = true;

function pct(xs, q) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q / 100 * s.length))];
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function authQuery() { return token ? `?token=${encodeURIComponent(token)}` : ""; }

function sendControl(msg) {
  const text = JSON.stringify(msg);
  if (state.transport === "webrtc" && state.channel && state.channel.readyState === "open") {
    state.channel.send(text);
  } else if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(text);
  }
}

function onMessage(text) {
  const msg = JSON.parse(text);
  if (msg.type === "hello") {
    state.width = msg.width; state.height = msg.height; state.backoff = 1000;
    $("model").textContent = `${msg.model.label} (${msg.model.resolution}, ${msg.model.steps} steps)`;
    $("transport").textContent = msg.transport;
    status("streaming");
    if (state.transport === "websocket") sendFrame();
  } else if (msg.type === "frame") {  // the server's own timestamps: arrival -> output ready
    if (state.transport === "webrtc") adaptFramerate(msg.fps);
    $("server-p50").textContent = msg.p50_ms.toFixed(1);
    $("server-p99").textContent = msg.p99_ms.toFixed(1);
    $("fps").textContent = msg.fps.toFixed(1);
    $("dropped").textContent = msg.dropped;
  } else if (msg.type === "prompt") {
    const e = msg.effect;
    $("effect").textContent = e ? `nearest effect: ${e.name} (${e.score.toFixed(2)})${e.weak ? ", a weak match" : ""}` : "";
  } else if (msg.type === "error") {
    status(msg.error, true);
    state.inFlight = false;
  }
}

function counted() {
  state.received += 1;
  $("received").textContent = state.received;
}

// ---- WebSocket: one JPEG in flight; each camera frame is sent once (requestVideoFrameCallback).

function sendFrame() {
  const ws = state.ws, video = $("camera");
  if (!ws || ws.readyState !== WebSocket.OPEN || state.inFlight || video.readyState < 2) return;
  if (state.cameraFrame === state.lastSentFrame) return;  // no new camera frame yet
  state.lastSentFrame = state.cameraFrame;
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

async function showJpeg(data) {
  const bitmap = await createImageBitmap(new Blob([data], { type: "image/jpeg" }));
  out.width = bitmap.width; out.height = bitmap.height;
  out.getContext("2d").drawImage(bitmap, 0, 0);
  state.rtts.push(performance.now() - state.sentAt); if (state.rtts.length > 300) state.rtts.shift();
  $("rtt-p50").textContent = pct(state.rtts, 50).toFixed(1);
  $("rtt-p99").textContent = pct(state.rtts, 99).toFixed(1);
  counted();
  state.inFlight = false;
  sendFrame();
}

function connectWebSocket() {
  state.transport = "websocket";
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws${authQuery()}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => { if (typeof ev.data === "string") onMessage(ev.data); else showJpeg(ev.data); };
  ws.onclose = (ev) => {
    state.inFlight = false;
    if (ev.code !== 1000) reconnect(`disconnected (${ev.code} ${ev.reason || "no reason"})`);
  };
  state.ws = ws;
}

// ---- WebRTC: the camera as a track, the output back as a track, prompts and stats on a channel.

function drawRemote() {
  if (!remote.videoWidth) return;
  out.width = remote.videoWidth; out.height = remote.videoHeight;
  out.getContext("2d").drawImage(remote, 0, 0);
  counted();
}

function onRemoteFrame() {
  drawRemote();
  remote.requestVideoFrameCallback(onRemoteFrame);
}

// The camera is sent at a little above the rate the model keeps up with: every frame sent is
// encoded here and decoded on the server (a video codec cannot skip frames), so frames the
// server would drop anyway cost both machines' CPU for nothing.
function adaptFramerate(serverFps) {
  const now = performance.now();
  if (!state.sender || now - (state.adaptedAt || 0) < 2000 || !(serverFps > 0)) return;
  state.adaptedAt = now;
  const target = Math.max(2, Math.min(60, Math.ceil(serverFps * 1.25) + 1));
  const p = state.sender.getParameters();
  if (!p.encodings || !p.encodings.length || p.encodings[0].maxFramerate === target) return;
  p.encodings[0].maxFramerate = target;
  state.sender.setParameters(p).catch(() => {});
  $("send-fps").textContent = target;
}

async function connectWebRTC(camera) {
  state.transport = "webrtc";
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  const channel = pc.createDataChannel("control");
  state.channel = channel;
  channel.onmessage = (ev) => onMessage(ev.data);
  const transceiver = pc.addTransceiver(camera.getVideoTracks()[0], { direction: "sendrecv" });
  state.sender = transceiver.sender;
  pc.ontrack = (ev) => {
    remote.srcObject = new MediaStream([ev.track]);
    remote.play().catch(() => {});
    remote.requestVideoFrameCallback(onRemoteFrame);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // non-trickle: all candidates in the offer
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, 3000);
  });
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch("/offer", { method: "POST", headers, body: JSON.stringify(pc.localDescription) });
  const answer = await resp.json();
  if (!resp.ok) throw new Error(answer.error || `offer refused (${resp.status})`);
  await pc.setRemoteDescription(answer);
  await new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === "connected") resolve();
      else if (pc.connectionState === "failed") reject(new Error("WebRTC connection failed"));
    };
    pc.addEventListener("connectionstatechange", check);
    setTimeout(() => reject(new Error("WebRTC did not connect within 8 s")), 8000);
    check();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (["failed", "disconnected", "closed"].includes(pc.connectionState)) reconnect(`WebRTC ${pc.connectionState}`);
  });
}

// ---- Connecting, falling back, reconnecting with back-off.

let cameraStream = null;

async function connect() {
  state.retry = null;
  const want = params.get("transport");
  if (want !== "websocket" && window.RTCPeerConnection) {
    try {
      const info = await (await fetch("/info")).json();
      if (info.webrtc) { await connectWebRTC(cameraStream); return; }
    } catch (e) {
      if (state.pc) { state.pc.close(); state.pc = null; }
      if (want === "webrtc") { reconnect(`WebRTC: ${e.message}`); return; }
      status(`WebRTC unavailable (${e.message}): using the WebSocket`, true);
    }
  }
  connectWebSocket();
}

function reconnect(why) {
  if (state.retry) return;
  status(`${why}; reconnecting in ${(state.backoff / 1000).toFixed(0)} s`, true);
  if (state.pc) { state.pc.close(); state.pc = null; }
  state.retry = setTimeout(connect, state.backoff);
  state.backoff = Math.min(30000, state.backoff * 2);
}

$("prompt-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sendControl({ type: "prompt", text: $("prompt").value, transition: 0 });
});

async function start() {
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    $("camera").srcObject = cameraStream;
    await $("camera").play();
    const onCamera = (now, meta) => {  // counts camera frames, so each is sent once
      state.cameraFrame = meta.presentedFrames;
      sendFrame();
      $("camera").requestVideoFrameCallback(onCamera);
    };
    $("camera").requestVideoFrameCallback(onCamera);
  } catch (e) {
    status(`camera unavailable: ${e.name}: ${e.message}`, true);
    return;
  }
  await connect();
  // A frame lost in transit must not stall the WebSocket loop forever.
  setInterval(() => { if (state.inFlight && performance.now() - state.sentAt > 5000) { state.inFlight = false; sendFrame(); } }, 1000);
}

start();
