/* Offline API reference: renders /openapi.json with no external resources (strict CSP, no inline script). */
"use strict";

(function () {
  const METHODS = ["get", "post", "put", "patch", "delete"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  // Markdown `code` spans as <code> elements; everything else stays plain text (never parsed as HTML).
  function inline(text) {
    const parts = String(text || "").split(/`([^`\n]+)`/);
    return parts.map((part, i) => (i % 2 ? el("code", {}, part) : part)).filter((p) => p !== "");
  }

  function resolve(spec, schema) {
    let s = schema || {};
    for (let i = 0; i < 10 && s && s.$ref; i++) {
      const parts = s.$ref.replace(/^#\//, "").split("/");
      s = parts.reduce((o, k) => (o ? o[k] : undefined), spec) || {};
    }
    return s;
  }

  function typeOf(spec, schema) {
    const s = resolve(spec, schema);
    if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x)).join(" | ");
    if (s.type === "array") return typeOf(spec, s.items) + "[]";
    if (s.format === "binary") return "file";
    return s.type || "object";
  }

  function paramTable(spec, params) {
    if (!params || !params.length) return null;
    const body = el("tbody");
    for (const p of params) {
      const s = resolve(spec, p.schema);
      const dflt = s.default !== undefined ? ` (default ${JSON.stringify(s.default)})` : "";
      body.append(el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
        el("td", {}, typeOf(spec, p.schema) + dflt), el("td", {}, ...inline(p.description || s.description))));
    }
    return el("table", { class: "api-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "type"),
        el("th", {}, "meaning"))), body);
  }

  function bodyBlock(spec, rb) {
    if (!rb || !rb.content) return null;
    const items = Object.entries(rb.content).map(([ctype, media]) => {
      const s = resolve(spec, media.schema);
      const fields = [];
      for (const [name, f] of Object.entries(s.properties || {})) {
        const fs = resolve(spec, f);
        const kind = fs.format === "binary" ? "binary" : typeOf(spec, f);
        if (fields.length) fields.push("; ");
        fields.push("field ", el("code", {}, name), ": ", ...inline(fs.description || kind),
          fs.description ? ` (${kind})` : "");
      }
      return el("li", {}, el("code", {}, ctype), ...(fields.length ? [" with ", ...fields] : []));
    });
    return el("div", {}, el("h4", {}, "Request body" + (rb.required ? " (required)" : "")), el("ul", {}, ...items));
  }

  function responses(op) {
    const rows = Object.entries(op.responses || {}).sort(([a], [b]) => a.localeCompare(b)).map(([code, r]) =>
      el("tr", {}, el("td", {}, el("code", {}, code)), el("td", {}, ...inline(r.description))));
    if (!rows.length) return null;
    return el("table", { class: "api-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "meaning"))), el("tbody", {}, ...rows));
  }

  function render(spec) {
    const info = spec.info || {};
    const line = document.getElementById("api-line");
    line.textContent = `${info.title || "API"} ${info.version || ""} · OpenAPI ${spec.openapi || "?"}`;
    const curl = document.getElementById("curl-example");
    curl.textContent = `curl -F "file=@video.mp4" ${window.location.origin}/api/v1/predict`;
    const root = document.getElementById("endpoints");
    root.replaceChildren();
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const card = el("section", { class: "card api-op", id: `${method}-${path}` },
          el("h2", {}, el("span", { class: `api-method api-${method}` }, method.toUpperCase()), " ",
            el("code", {}, path)),
          el("p", {}, ...inline(op.summary)));
        for (const para of String(op.description || "").split(/\n\s*\n/)) {
          if (para.trim()) card.append(el("p", { class: "muted" }, ...inline(para.trim())));
        }
        if (op.security || (op.parameters || []).some((p) => p.name === "authorization")) {
          card.append(el("p", { class: "muted" }, "Needs the bearer token when the server has one."));
        }
        for (const part of [paramTable(spec, op.parameters), bodyBlock(spec, op.requestBody), responses(op)]) {
          if (part) card.append(part);
        }
        root.append(card);
      }
    }
  }

  fetch("/openapi.json", { headers: { Accept: "application/json" } })
    .then((r) => {
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      return r.json();
    })
    .then(render)
    .catch((err) => {
      document.getElementById("api-line").textContent = `Could not read /openapi.json: ${err.message}`;
    });
})();
