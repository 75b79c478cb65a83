// Upload page of deepfake-detector: plain JavaScript, no external resources, no inline script.
// Everything shown from the server or the user's file name goes through textContent, never innerHTML.
// Uploads go to the jobs API (POST /api/v1/jobs, then GET /api/v1/jobs/{id} until done), so a long
// video never hits a browser or proxy time limit while it is analysed.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "deepfake-detector-token";
  let maxUploadMb = null;
  let busy = false;

  const els = {
    file: $("file"), dropzone: $("dropzone"), explain: $("explain"), token: $("token"), tokenBox: $("token-box"),
    modelLine: $("model-line"), limit: $("limit-mb"),
    progress: $("progress"), progressLabel: $("progress-label"), bar: $("upload-bar"), pct: $("upload-pct"),
    analysing: $("analysing"), analysingText: $("analysing-text"), scoreKind: $("score-kind"),
    message: $("message"), messageTitle: $("message-title"), messageText: $("message-text"),
    result: $("result"), verdict: $("verdict"), verdictText: $("verdict-text"), fileLine: $("file-line"),
    meter: $("meter"), meterFill: $("meter-fill"), meterThreshold: $("meter-threshold"),
    thresholdValue: $("threshold-value"), note: $("note"),
    frames: $("fact-frames"), faces: $("fact-faces"), video: $("fact-video"), time: $("fact-time"),
    segments: $("segments"), segmentsBox: $("segments-box"), segmentsNote: $("segments-note"),
    segmentsList: $("segments-list"),
    explainFig: $("explain-fig"), explainImg: $("explain-img"), explainOpen: $("explain-open"),
    explainName: $("explain-name"), explainFull: $("explain-full"), explainSave: $("explain-save"),
    dialog: $("explain-dialog"), dialogName: $("explain-dialog-name"), dialogImg: $("explain-full-img"),
    dialogClose: $("explain-close"),
  };
  const POLL_FIRST_MS = 500;
  const POLL_MAX_MS = 2000;
  let explainUrl = null;

  function token() {
    return els.token.value.trim();
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  function pct(x, digits) {
    return (100 * x).toFixed(digits === undefined ? 0 : digits) + "\u00a0%";
  }

  function formatBytes(n) {
    if (n >= 1024 * 1024) return (n / (1024 * 1024)).toFixed(1) + " MB";
    if (n >= 1024) return (n / 1024).toFixed(0) + " kB";
    return n + " bytes";
  }

  function show(section) {
    for (const s of [els.progress, els.message, els.result]) s.hidden = s !== section;
  }

  function showMessage(title, text) {
    els.messageTitle.textContent = title;
    els.messageText.textContent = text;
    show(els.message);
    busy = false;
    els.dropzone.classList.remove("disabled");
  }

  // ---------------------------------------------------------------- model and limits

  async function loadInfo() {
    try {
      const h = await fetch("/healthz", { cache: "no-store" });
      const health = await h.json();
      if (health.limits) {
        maxUploadMb = health.limits.max_upload_mb;
        els.limit.textContent = String(maxUploadMb);
        if (health.limits.auth) els.tokenBox.open = true;
      }
      if (!h.ok) {
        els.modelLine.textContent = "The model is not loaded yet; reload the page in a moment.";
        return;
      }
    } catch (e) {
      els.modelLine.textContent = "The server cannot be reached.";
      return;
    }
    try {
      const r = await fetch("/api/v1/model", { headers: authHeaders(), cache: "no-store" });
      if (r.status === 401) {
        els.modelLine.textContent = "This server needs an access token: enter it under \u201cAccess token\u201d.";
        els.tokenBox.open = true;
        return;
      }
      const info = await r.json();
      const parts = [];
      parts.push("Model: " + (info.name || "unnamed"));
      const sha = (info.model && info.model.sha256) || info.sha256;
      if (sha) parts.push("checkpoint " + String(sha).slice(0, 12));
      if (typeof info.threshold === "number") parts.push("threshold " + info.threshold.toFixed(2));
      const auc = info.metrics && (info.metrics.val_auc ?? info.metrics.roc_auc ?? info.metrics.auc);
      if (typeof auc === "number") parts.push("validation ROC-AUC " + auc.toFixed(3));
      els.modelLine.textContent = parts.join(" \u00b7 ");
    } catch (e) {
      els.modelLine.textContent = "Model information is unavailable.";
    }
  }

  // ---------------------------------------------------------------- upload

  function start(file) {
    if (busy || !file) return;
    if (maxUploadMb !== null && file.size > maxUploadMb * 1024 * 1024) {
      showMessage("File too large",
        file.name + " is " + formatBytes(file.size) + "; this server accepts videos up to " + maxUploadMb + " MB.");
      return;
    }
    busy = true;
    els.dropzone.classList.add("disabled");
    els.progressLabel.textContent = "Uploading " + file.name + " (" + formatBytes(file.size) + ")\u2026";
    els.bar.value = 0;
    els.bar.hidden = false;
    els.pct.textContent = "0\u00a0%";
    els.analysing.hidden = true;
    els.progress.setAttribute("aria-busy", "true");
    show(els.progress);

    const form = new FormData();
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    const query = new URLSearchParams();
    if (els.explain.checked) query.set("explain", "true");
    if (els.segments.checked) query.set("segments", "true");
    const url = "/api/v1/jobs" + (query.toString() ? "?" + query.toString() : "");
    xhr.open("POST", url);
    const headers = authHeaders();
    for (const k in headers) xhr.setRequestHeader(k, headers[k]);
    xhr.responseType = "text";

    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) {
        const p = Math.round((100 * ev.loaded) / ev.total);
        els.bar.value = p;
        els.pct.textContent = p + "\u00a0%";
      }
    };
    xhr.upload.onload = () => {
      els.bar.value = 100;
      els.pct.textContent = "100\u00a0%";
      els.progressLabel.textContent = "Uploaded " + file.name + ".";
      els.analysingText.textContent = "Waiting for the server\u2026";
      els.analysing.hidden = false;
    };
    xhr.onerror = () => showMessage("Connection problem",
      "The upload did not reach the server (network error, or the server closed the connection, " +
      "which it does for files over the size limit). Check the file and try again.");
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      if (xhr.status === 202 && body && body.id) {
        els.analysing.hidden = false;
        followJob(body, file, POLL_FIRST_MS, 0);
      } else {
        els.progress.setAttribute("aria-busy", "false");
        httpError(xhr.status, body, xhr.getResponseHeader("Retry-After"), file);
      }
    };
    xhr.send(form);
  }

  // ---------------------------------------------------------------- job polling

  const STATE_TEXT = {
    queued: "Waiting for a free worker\u2026",
    processing: "Analysing the video: sampling frames, finding the face, running the model\u2026",
  };

  function followJob(job, file, delay, failures) {
    if (job.state === "done" && job.result) {
      els.progress.setAttribute("aria-busy", "false");
      render(job.result, file);
      return;
    }
    if (job.state === "error") {
      els.progress.setAttribute("aria-busy", "false");
      const err = job.error || {};
      httpError(err.status || 500, { detail: err.detail || "" }, null, file);
      return;
    }
    els.analysingText.textContent = STATE_TEXT[job.state] || STATE_TEXT.processing;
    setTimeout(() => poll(job.id, file, Math.min(POLL_MAX_MS, delay * 1.5), failures), delay);
  }

  async function poll(id, file, delay, failures) {
    let r = null;
    let body = null;
    try {
      r = await fetch("/api/v1/jobs/" + encodeURIComponent(id), { headers: authHeaders(), cache: "no-store" });
      body = await r.json();
    } catch (e) {
      if (failures < 5) {  // a brief network problem: keep asking
        setTimeout(() => poll(id, file, POLL_MAX_MS, failures + 1), POLL_MAX_MS);
      } else {
        showMessage("Connection problem", "The server stopped answering while " + file.name +
          " was being analysed. Try again in a moment.");
      }
      return;
    }
    if (r.ok && body) {
      followJob(body, file, delay, 0);
    } else if (r.status === 404) {
      showMessage("Result not found", "The server no longer knows this analysis (it restarted, or the " +
        "result expired). Upload " + file.name + " again.");
    } else {
      els.progress.setAttribute("aria-busy", "false");
      httpError(r.status, body, r.headers.get("Retry-After"), file);
    }
  }

  function detailText(body) {
    if (!body || body.detail === undefined) return "";
    if (typeof body.detail === "string") return body.detail;
    try { return JSON.stringify(body.detail); } catch (e) { return ""; }
  }

  function sentence(text) {
    text = String(text || "").trim();
    if (!text) return "";
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  function httpError(status, body, retry, file) {
    const detail = detailText(body);
    switch (status) {
      case 401:
        els.tokenBox.open = true;
        els.token.focus();
        showMessage("Access token needed",
          (token() ? "The token was not accepted. " : "This server needs an access token. ") +
          "Enter it under \u201cAccess token\u201d and upload again.");
        return;
      case 413:
        showMessage("File too large", file.name + ": " + (sentence(detail) || "The file is larger than this server accepts."));
        return;
      case 415:
        showMessage("Not a video we can read",
          file.name + ": " + (sentence(detail.replace(/^not a video:\s*/, "")) || "Not a video.") +
          " Upload a video file (MP4, MOV, MKV, WebM, AVI, \u2026); " +
          "images, audio-only files and damaged videos cannot be analysed.");
        return;
      case 503:
        showMessage("Server busy", (sentence(detail) || "The server is analysing other videos right now.") +
          (retry ? " Try again in " + retry + " s." : " Try again shortly."));
        return;
      case 504:
        showMessage("Took too long", sentence(detail) || "The analysis took longer than the server allows.");
        return;
      case 408:
        showMessage("Upload too slow", sentence(detail) || "The upload took longer than the server allows.");
        return;
      case 400:
        showMessage("Upload problem", sentence(detail) || "The server could not read the upload.");
        return;
      default:
        showMessage("Server error " + status, sentence(detail) || "The server could not analyse this video.");
    }
  }

  // ---------------------------------------------------------------- result

  const STATUS_TEXT = {
    unreadable: "The video could not be decoded.",
    too_short: "The video is too short to analyse.",
    refused: "The video was refused (for example, its resolution or length is beyond the server's limits).",
    no_face: "No face was found.",
    error: "The analysis failed.",
  };

  function render(r, file) {
    busy = false;
    els.dropzone.classList.remove("disabled");
    const scored = typeof r.p_fake === "number" && (r.label === "FAKE" || r.label === "REAL");
    if (!scored) {
      const reason = STATUS_TEXT[r.status] || "The video could not be scored (status " + r.status + ").";
      showMessage("Could not analyse " + (r.filename || file.name), reason + (r.error ? " Details: " + r.error : ""));
      return;
    }
    const fake = r.label === "FAKE";
    els.verdict.textContent = fake ? "FAKE" : "REAL";
    els.verdict.className = "verdict " + (fake ? "fake" : "real");
    els.result.classList.toggle("is-fake", fake);
    els.result.classList.toggle("is-real", !fake);
    // only a calibrated model's score may be read as a probability; otherwise say "score"
    const calibrated = r.calibrated === true;
    const score = calibrated ? pct(r.p_fake, 1) + " probability of a deepfake"
      : "P(FAKE) score " + r.p_fake.toFixed(3) + " (a model score from 0 to 1, not a probability)";
    els.verdictText.textContent = (fake ? "Likely manipulated: " : "No manipulation detected: ") + score + ".";
    els.scoreKind.textContent = calibrated
      ? "the calibrated probability that the video is fake"
      : "the model's P(FAKE) score, from 0 (real) to 1 (fake); a score, not a calibrated probability";
    els.fileLine.textContent = (r.filename || file.name) + " \u00b7 " + formatBytes(r.size || file.size) +
      (r.cached ? " \u00b7 analysed before: the earlier verdict was reused" : "");

    const p = Math.max(0, Math.min(1, r.p_fake));
    els.meterFill.style.width = (100 * p).toFixed(1) + "%";
    els.meterFill.className = "meter-fill " + (fake ? "fake" : "real");
    els.meter.setAttribute("aria-valuenow", (100 * p).toFixed(1));
    els.meter.setAttribute("aria-valuetext", calibrated ? pct(p, 1) + " probability of fake"
      : "P(FAKE) score " + p.toFixed(3));
    if (typeof r.threshold === "number") {
      els.meterThreshold.hidden = false;
      els.meterThreshold.style.left = (100 * r.threshold).toFixed(1) + "%";
      els.thresholdValue.textContent = "(" + r.threshold.toFixed(2) + ")";
    } else {
      els.meterThreshold.hidden = true;
      els.thresholdValue.textContent = "";
    }

    const notes = [];
    if (r.status === "no_face") {
      notes.push("No face was found in this video, so the centre of the frame was analysed instead. " +
        "The model was trained on faces: treat this verdict with caution.");
    } else if (typeof r.face_ratio === "number" && r.face_ratio < 0.5) {
      notes.push("A face was found in only " + pct(r.face_ratio) + " of the sampled frames; the verdict is less reliable.");
    }
    if (r.error) notes.push(r.error);
    els.note.textContent = notes.join(" ");
    els.note.hidden = notes.length === 0;

    els.frames.textContent = r.frames === null || r.frames === undefined ? "\u2013" : String(r.frames);
    els.faces.textContent = typeof r.face_ratio === "number" ? pct(r.face_ratio) + " of frames" : "\u2013";
    const v = r.video || {};
    const vparts = [];
    if (v.width && v.height) vparts.push(v.width + "\u00d7" + v.height);
    if (typeof v.duration === "number") vparts.push(v.duration.toFixed(1) + " s");
    if (v.codec) vparts.push(v.codec);
    els.video.textContent = vparts.length ? vparts.join(", ") : "\u2013";
    const t = r.timing || {};
    els.time.textContent = typeof t.seconds === "number" ? t.seconds.toFixed(2) + " s" : "\u2013";

    showSegments(r);
    showExplanation(r.explanation_png, r.filename || file.name);
    show(els.result);
    els.verdict.focus();
  }

  // ---------------------------------------------------------------- scores per time window

  function showSegments(r) {
    const segs = Array.isArray(r.segments) ? r.segments : [];
    els.segmentsList.replaceChildren();
    els.segmentsBox.hidden = segs.length === 0;
    if (!segs.length) return;
    let top = false;
    for (const s of segs) {
      const li = document.createElement("li");
      const scored = typeof s.p_fake === "number";
      const span = Number(s.start).toFixed(1) + "\u2013" + Number(s.end).toFixed(1) + " s: ";
      let text = span + (scored ? s.p_fake.toFixed(3) : "not scored (" + String(s.status || "") + ")");
      if (scored && !top && s.p_fake === r.p_fake) {
        top = true;
        text += " \u2190 highest: the video's score";
      }
      li.textContent = text;
      if (scored && typeof r.threshold === "number") li.className = s.p_fake >= r.threshold ? "fake" : "real";
      els.segmentsList.appendChild(li);
    }
    const width = typeof r.segment_seconds === "number" ? r.segment_seconds.toFixed(1) + "-second" : "time";
    els.segmentsNote.textContent = "The video was scored in " + segs.length + " " + width +
      " window(s), each sampled like a whole clip; its score is the highest window's.";
  }

  // ---------------------------------------------------------------- heat maps at full size

  function dropExplanation() {
    if (explainUrl) URL.revokeObjectURL(explainUrl);
    explainUrl = null;
    els.explainImg.removeAttribute("src");
    els.dialogImg.removeAttribute("src");
    els.explainFull.href = "#";
    els.explainSave.href = "#";
  }

  function showExplanation(b64, name) {
    dropExplanation();
    if (!b64) {
      els.explainFig.hidden = true;
      return;
    }
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    explainUrl = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    els.explainImg.src = explainUrl;
    els.dialogImg.src = explainUrl;
    els.explainFull.href = explainUrl;
    els.explainSave.href = explainUrl;
    els.explainSave.download = String(name || "video").replace(/\.[^.]*$/, "") + "-heatmaps.png";
    els.explainName.textContent = name;
    els.dialogName.textContent = name;
    els.explainFig.hidden = false;
  }

  function openDialog() {
    if (!els.dialogImg.getAttribute("src")) return;
    if (typeof els.dialog.showModal === "function") {
      els.dialog.showModal();
      els.dialogClose.focus();
    } else {
      window.open(explainUrl, "_blank", "noopener");
    }
  }

  function reset() {
    els.file.value = "";
    dropExplanation();
    show(null);
    els.file.focus();
  }

  // ---------------------------------------------------------------- wiring

  els.file.addEventListener("change", () => {
    if (els.file.files && els.file.files.length) start(els.file.files[0]);
  });
  for (const type of ["dragenter", "dragover"]) {
    els.dropzone.addEventListener(type, (ev) => {
      ev.preventDefault();
      if (!busy) els.dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    els.dropzone.addEventListener(type, () => els.dropzone.classList.remove("dragging"));
  }
  els.dropzone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    els.dropzone.classList.remove("dragging");
    const files = ev.dataTransfer && ev.dataTransfer.files;
    if (files && files.length) start(files[0]);
  });
  // a file dropped outside the zone must not make the browser navigate away from the page
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());
  els.explainOpen.addEventListener("click", openDialog);
  els.dialogClose.addEventListener("click", () => els.dialog.close());
  els.dialog.addEventListener("click", (ev) => { if (ev.target === els.dialog) els.dialog.close(); });
  $("again").addEventListener("click", reset);
  $("message-again").addEventListener("click", reset);

  try {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) els.token.value = saved;
  } catch (e) { /* storage disabled */ }
  els.token.addEventListener("change", () => {
    try { sessionStorage.setItem(TOKEN_KEY, token()); } catch (e) { /* storage disabled */ }
    loadInfo();
  });

  loadInfo();
})();
