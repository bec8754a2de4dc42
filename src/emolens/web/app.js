// emolens web page: live camera over a websocket, per-face timelines, drag-and-drop photo upload.
// Plain browser JavaScript, no libraries and no network access beyond this server (works offline).
"use strict";

(() => {
  const COLORS = {
    angry: "#e53935", disgust: "#43a047", fear: "#8e24aa", happy: "#fbc02d",
    neutral: "#78909c", sad: "#1e88e5", surprise: "#fb8c00",
  };
  const CAPTURE_WIDTH = 640;      // frames are scaled down to this before JPEG encoding
  const SEND_INTERVAL_MS = 100;   // at most 10 frames/s offered; the server drops what it cannot keep up with
  const MAX_UNANSWERED = 2;       // frames in flight before the page waits for an answer
  const TIMELINE_S = 30;          // seconds of history per face
  const MAX_TIMELINES = 4;
  // A face that leaves the picture for a moment comes back with its track id (the server keeps an ended track
  // for its return), so its timeline goes on; a track not seen for STALE_S is gone for good: its timeline goes.
  const STALE_S = 5;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // State is in memory only: nothing goes to localStorage, cookies or anywhere else.
  const state = {
    classes: Object.keys(COLORS), authRequired: false,
    stream: null, ws: null, timer: null, sent: 0, lastFrame: -1, lastSendAt: 0,
    lastResult: null, results: 0, dropped: 0, tracks: new Map(), t0: performance.now(),
    latency: [], sentAt: new Map(),
  };
  window.emolens = state;  // for debugging and the browser test

  const colorOf = (name) => COLORS[name] || "#2f6fed";
  const pct = (p) => `${Math.round(p * 100)}%`;
  const apiKey = () => $("api-key").value.trim();
  const authHeaders = () => (apiKey() ? { "X-API-Key": apiKey() } : {});

  // ------------------------------------------------------------------------------------------ setup
  async function init() {
    buildLegend();
    try {
      const health = await (await fetch("/healthz")).json();
      state.authRequired = !!health.auth_required;
      $("auth").hidden = !state.authRequired;
    } catch (e) {
      $("model-info").textContent = "server not reachable";
      return;
    }
    await loadModelInfo();
    $("api-key").addEventListener("change", loadModelInfo);
  }

  async function loadModelInfo() {
    const r = await fetch("/v1/model", { headers: authHeaders() });
    const body = await r.json();
    if (!r.ok) {
      $("model-info").textContent = body.error ? body.error.message : `error ${r.status}`;
      return;
    }
    state.classes = body.classes;
    const acc = body.accuracy == null ? "accuracy not recorded"
    : `FER2013 public test accuracy ${pct(body.accuracy)}${body.accuracy_tta === "flip" ? " (with flip TTA)" : ""}`;
    $("model-info").textContent = `model ${body.name} (${body.runtime}), ${acc}, sha256 ${body.sha256.slice(0, 12)}`;
  }

  function buildLegend() {
    const legend = $("legend");
    legend.textContent = "";
    for (const name of Object.keys(COLORS)) {
      const s = el("span", "", name);
      s.style.setProperty("--swatch", colorOf(name));
      legend.appendChild(s);
    }
  }

  // ------------------------------------------------------------------------------------------ camera
  async function startCamera() {
    $("start").disabled = true;
    setLiveStatus("asking for the camera...");
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
      });
    } catch (e) {
      setLiveStatus(`camera unavailable: ${e.message || e.name}`, true);
      $("start").disabled = false;
      return;
    }
    const video = $("video");
    video.srcObject = state.stream;
    await video.play();
    $("placeholder").hidden = true;
    $("stop").disabled = false;
    openSocket();
  }

  function stopCamera() {
    clearInterval(state.timer);
    state.timer = null;
    if (state.ws) state.ws.close(1000, "stopped");
    state.ws = null;
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    $("video").srcObject = null;
    clearOverlay();
    $("placeholder").hidden = false;
    $("start").disabled = false;
    $("stop").disabled = true;
    setLiveStatus("camera off");
  }

  function openSocket() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/v1/stream`);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    state.sent = 0;
    state.lastFrame = -1;
    state.sentAt.clear();
    ws.onopen = () => {
      if (state.authRequired) ws.send(JSON.stringify({ api_key: apiKey() }));
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "ready") {
        setLiveStatus("streaming");
        state.timer = setInterval(sendFrame, SEND_INTERVAL_MS);
      } else if (msg.type === "result") {
        onResult(msg);
      } else if (msg.type === "error") {
        state.lastFrame = Math.max(state.lastFrame, msg.frame);
        setLiveStatus(`frame ${msg.frame}: ${msg.error.message}`, true);
      }
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;  // closed by stopCamera(): nothing to report
      if (state.stream) stopCamera();
      if (ev.code === 1013) {  // all live-stream places taken (or the model still loading): not our fault
        setLiveStatus(`the server is busy${ev.reason ? ` (${ev.reason})` : ""}: press "Start camera" again in a moment`, true);
        return;
      }
      setLiveStatus(`connection closed${ev.reason ? `: ${ev.reason}` : ""}`, ev.code !== 1000);
    };
  }

  function sendFrame() {
    const ws = state.ws;
    const video = $("video");
    if (!ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    const unanswered = state.sent - (state.lastFrame + 1);
    // Flow control on our side too; after 2 s without an answer send anyway (the server keeps only the newest).
    if (unanswered >= MAX_UNANSWERED && performance.now() - state.lastSendAt < 2000) return;
    const scale = Math.min(1, CAPTURE_WIDTH / video.videoWidth);
    const canvas = $("capture");
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const index = state.sent++;
    state.lastSendAt = performance.now();
    canvas.toBlob((blob) => {
      if (blob && ws.readyState === WebSocket.OPEN) {
        state.sentAt.set(index, performance.now());
        ws.send(blob);
      }
    }, "image/jpeg", 0.8);
  }

  function onResult(msg) {
    state.lastFrame = Math.max(state.lastFrame, msg.frame);
    state.lastResult = msg;
    state.results += 1;
    state.dropped = msg.dropped;
    const sentAt = state.sentAt.get(msg.frame);
    for (const k of state.sentAt.keys()) if (k <= msg.frame) state.sentAt.delete(k);
    if (sentAt !== undefined) {
      state.latency.push(performance.now() - sentAt);
      if (state.latency.length > 30) state.latency.shift();
    }
    const ms = state.latency.length ? state.latency.reduce((a, b) => a + b, 0) / state.latency.length : 0;
    setLiveStatus(`streaming: ${msg.faces.length} face(s), ${Math.round(ms)} ms round trip, ` +
                  `${state.results} answered, ${msg.dropped} dropped by the server`);
    drawOverlay(msg);
    renderFaceList($("live-faces"), msg.faces, true);
    recordTimeline(msg.faces);
    drawTimelines();
  }

  function setLiveStatus(text, isError) {
    const s = $("live-status");
    s.textContent = text;
    s.className = isError ? "error" : "muted";
  }

  // ------------------------------------------------------------------------------------------ drawing
  function clearOverlay() {
    const c = $("overlay");
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
    $("live-faces").textContent = "";
  }

  // The overlay canvas covers the video; the video is letterboxed (object-fit: contain) inside the stage.
  function drawOverlay(msg) {
    const canvas = $("overlay");
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(rect.width * dpr);
    canvas.height = Math.round(rect.height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, rect.width, rect.height);
    const s = Math.min(rect.width / msg.width, rect.height / msg.height);
    const ox = (rect.width - msg.width * s) / 2;
    const oy = (rect.height - msg.height * s) / 2;
    for (const f of msg.faces) {
      const [x, y, w, h] = f.box;
      drawFace(ctx, ox + x * s, oy + y * s, w * s, h * s, f, rect.width);
    }
  }

  function drawFace(ctx, x, y, w, h, face, maxX) {
    const color = colorOf(face.emotion);
    ctx.lineWidth = 3;
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, w, h);
    const id = face.track_id !== undefined ? `#${face.track_id} ` : "";
    const label = `${id}${face.emotion} ${pct(face.confidence)}`;
    ctx.font = "bold 15px system-ui, sans-serif";
    const tw = ctx.measureText(label).width + 10;
    const ly = y > 22 ? y - 22 : y + h;
    ctx.fillStyle = color;
    ctx.fillRect(x - 1.5, ly, tw, 22);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 4, ly + 16);
    // Emotion bars beside the box (right side, or left when there is no room).
    const bw = 70;
    const bx = x + w + 6 + bw < maxX ? x + w + 6 : Math.max(0, x - bw - 6);
    const names = Object.keys(face.probabilities);
    const bh = Math.max(4, Math.min(12, h / names.length - 2));
    names.forEach((name, i) => {
      const by = y + i * (bh + 2);
      ctx.fillStyle = "rgba(0,0,0,0.45)";
      ctx.fillRect(bx, by, bw, bh);
      ctx.fillStyle = colorOf(name);
      ctx.fillRect(bx, by, bw * face.probabilities[name], bh);
    });
  }

  function renderFaceList(list, faces, live) {
    list.textContent = "";
    if (!faces.length) {
      list.appendChild(el("li", "muted", live ? "no face in this frame" : "no face found"));
      return;
    }
    faces.forEach((f, i) => {
      const li = el("li", "face");
      const title = el("div", "title");
      const who = live && f.track_id !== undefined ? `face #${f.track_id}` : `face ${i + 1}`;
      title.appendChild(el("span", "", who));
      const emo = el("span", "emotion", `${f.emotion} ${pct(f.confidence)}`);
      emo.style.color = colorOf(f.emotion);
      title.appendChild(emo);
      li.appendChild(title);
      for (const [name, p] of Object.entries(f.probabilities)) {
        const row = el("div", "bar");
        row.appendChild(el("span", "", name));
        const track = el("div", "track");
        const fill = el("div", "fill");
        fill.style.width = `${(p * 100).toFixed(1)}%`;
        fill.style.background = colorOf(name);
        track.appendChild(fill);
        row.appendChild(track);
        row.appendChild(el("span", "pct", pct(p)));
        li.appendChild(row);
      }
      list.appendChild(li);
    });
  }

  // ------------------------------------------------------------------------------------------ timelines
  function recordTimeline(faces) {
    const now = (performance.now() - state.t0) / 1000;
    for (const f of faces) {
      if (f.track_id === undefined) continue;
      let tr = state.tracks.get(f.track_id);
      if (!tr) {
        tr = { id: f.track_id, points: [], lastSeen: now };
        state.tracks.set(f.track_id, tr);
      }
      tr.points.push({ t: now, p: f.probabilities });
      tr.lastSeen = now;
    }
    for (const [id, tr] of state.tracks) {
      tr.points = tr.points.filter((pt) => pt.t >= now - TIMELINE_S);
      if (!tr.points.length || tr.lastSeen < now - STALE_S) state.tracks.delete(id);
    }
  }

  function drawTimelines() {
    const box = $("timelines");
    const tracks = [...state.tracks.values()].sort((a, b) => b.lastSeen - a.lastSeen).slice(0, MAX_TIMELINES);
    const wanted = new Set(tracks.map((t) => `timeline-${t.id}`));
    for (const child of [...box.children]) if (!wanted.has(child.id)) child.remove();
    const now = (performance.now() - state.t0) / 1000;
    for (const tr of tracks) {
      let wrap = document.getElementById(`timeline-${tr.id}`);
      if (!wrap) {
        wrap = el("div", "timeline");
        wrap.id = `timeline-${tr.id}`;
        wrap.appendChild(el("div", "label", `face #${tr.id}`));
        const c = el("canvas");
        c.width = 360;
        c.height = 150;
        wrap.appendChild(c);
        box.appendChild(wrap);
      }
      drawChart(wrap.querySelector("canvas"), tr.points, now);
    }
  }

  // A small line chart: one line per class, probability (0..1) against time over the last TIMELINE_S seconds.
  function drawChart(canvas, points, now) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height;
    const L = 30, R = 6, T = 6, B = 18;
    ctx.clearRect(0, 0, W, H);
    ctx.font = "10px system-ui, sans-serif";
    ctx.strokeStyle = "#e3e6ec";
    ctx.fillStyle = "#6b7385";
    ctx.lineWidth = 1;
    for (const v of [0, 0.5, 1]) {
      const y = T + (1 - v) * (H - T - B);
      ctx.beginPath();
      ctx.moveTo(L, y);
      ctx.lineTo(W - R, y);
      ctx.stroke();
      ctx.fillText(v.toFixed(1), 4, y + 3);
    }
    for (const s of [0, 10, 20, 30]) {
      const x = L + (1 - s / TIMELINE_S) * (W - L - R);
      ctx.fillText(s ? `-${s}s` : "now", Math.min(x - 8, W - 24), H - 4);
    }
    const tx = (t) => L + (1 - (now - t) / TIMELINE_S) * (W - L - R);
    const ty = (p) => T + (1 - p) * (H - T - B);
    ctx.lineWidth = 2;
    for (const name of state.classes) {
      ctx.strokeStyle = colorOf(name);
      ctx.beginPath();
      points.forEach((pt, i) => {
        const x = tx(pt.t), y = ty(pt.p[name] || 0);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }

  // ------------------------------------------------------------------------------------------ photo upload
  async function uploadPhoto(file) {
    const status = $("photo-status");
    if (!file) return;
    status.className = "muted";
    status.textContent = `analysing ${file.name}...`;
    // the previous photo's faces and boxes go now: after a failed upload they would read as this file's
    $("photo-faces").replaceChildren();
    const canvas = $("photo-canvas");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    const form = new FormData();
    form.append("file", file, file.name);
    let body, r;
    try {
      r = await fetch("/v1/predict", { method: "POST", body: form, headers: authHeaders() });
      body = await r.json();
    } catch (e) {
      status.className = "error";
      status.textContent = `request failed: ${e.message}`;
      return;
    }
    if (!r.ok) {
      status.className = "error";
      status.textContent = body.error ? body.error.message : `error ${r.status}`;
      return;
    }
    status.textContent = `${body.faces.length} face(s) in ${Math.round(body.timing_ms)} ms (model ${body.model.name})`;
    await drawPhoto(file, body);
    renderFaceList($("photo-faces"), body.faces, false);
  }

  async function drawPhoto(file, result) {
    const url = URL.createObjectURL(file);
    try {
      const img = new Image();
      img.src = url;
      await img.decode();
      const canvas = $("photo-canvas");
      const s = Math.min(1, 800 / img.naturalWidth);
      canvas.width = Math.round(img.naturalWidth * s);
      canvas.height = Math.round(img.naturalHeight * s);
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      // Boxes are in the server's pixel grid (result.image); the browser may have applied EXIF rotation the same way.
      const k = canvas.width / result.image.width;
      result.faces.forEach((f, i) => {
        const [x, y, w, h] = f.box;
        drawFace(ctx, x * k, y * k, w * k, h * k, { ...f, track_id: i + 1 }, canvas.width);
      });
      canvas.hidden = false;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  function setupDropzone() {
    const dz = $("dropzone");
    const input = $("file");
    dz.addEventListener("click", (e) => { if (e.target !== input) input.click(); });
    dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
    input.addEventListener("change", () => uploadPhoto(input.files[0]));
    for (const ev of ["dragenter", "dragover"]) {
      dz.addEventListener(ev, (e) => { e.preventDefault(); dz.classList.add("over"); });
    }
    for (const ev of ["dragleave", "drop"]) {
      dz.addEventListener(ev, (e) => { e.preventDefault(); dz.classList.remove("over"); });
    }
    dz.addEventListener("drop", (e) => uploadPhoto(e.dataTransfer.files[0]));
    // A file dropped outside the zone would make the browser navigate away from the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
  }

  $("start").addEventListener("click", startCamera);
  $("stop").addEventListener("click", stopCamera);
  setupDropzone();
  init();
})();
