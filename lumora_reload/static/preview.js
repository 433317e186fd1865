/* The browser preview: a device of the session, like a phone running the
 * Lumora app (docs/protocol.md, section 2). It sends `connect` with
 * platform "web", applies full and incremental updates with LumoraSchema,
 * checks every checksum, acks, pings, resumes after a reconnect with
 * lastSequence and lastChecksum, and renders with LumoraRender. Console
 * errors go to the daemon as `log` lines. */
(function () {
  "use strict";

  var body = document.body;
  var SESSION = body.dataset.session;
  var WS_PATH = body.dataset.wsPath || "/ws";
  var CLIENT_VERSION = "1.1.0";
  var PING_SECONDS = 10;
  var RECEIVE_TIMEOUT = 45; // seconds without a word from the daemon: reconnect
  // closes a reconnect cannot fix (the close-code table of the protocol)
  var FINAL = { 1009: 1, 4400: 1, 4401: 1, 4403: 1, 4404: 1, 4410: 1, 4426: 1 };

  var app = document.getElementById("lr-app");
  var statusEl = document.getElementById("lr-status");
  var overlay = document.getElementById("lr-overlay");

  var state = { schema: null, sequence: 0, checksum: null, synced: false };
  var stats = { updates: 0, full: 0, incremental: 0, failed: 0, connections: 0, lastApplyMs: 0,
    created: 0, removed: 0, receivedAt: 0 };
  var deviceId = "web-" + Math.random().toString(36).slice(2, 10);
  var ws = null, attempts = 0, retryTimer = null, pingTimer = null, lastHeard = 0;
  var stopped = false, failedFull = null, reloadAsked = null, pending = [];

  function wsUrl() {
    // the page lives at <prefix>/preview/<id>; the socket at <prefix><ws path>
    var path = location.pathname;
    var prefix = path.slice(0, path.lastIndexOf("/preview/"));
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + prefix + WS_PATH +
      "?session=" + encodeURIComponent(SESSION);
  }

  function send(type, payload) {
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify({ type: type, sessionId: SESSION, timestamp: Date.now(), version: CLIENT_VERSION,
      payload: payload || {} }));
    return true;
  }

  // -- what the page shows ------------------------------------------------

  function setStatus(kind, text) {
    body.dataset.status = kind;
    statusEl.textContent = text;
    statusEl.className = "lr-status-" + kind;
  }

  function showOverlay(kind, title, detail) {
    overlay.hidden = false;
    overlay.dataset.kind = kind;
    overlay.querySelector(".lr-overlay-title").textContent = title;
    overlay.querySelector(".lr-overlay-detail").textContent = detail || "";
  }

  function hideOverlay(kind) {
    if (!kind || overlay.dataset.kind === kind) {
      overlay.hidden = true;
      overlay.dataset.kind = "";
    }
  }

  function render() {
    var t0 = performance.now();
    var counts = LumoraRender.patch(app, state.schema);
    stats.created += counts.created;
    stats.removed += counts.removed;
    body.dataset.sequence = String(state.sequence);
    body.dataset.checksum = state.checksum || "";
    setStatus("live", "live · #" + state.sequence + " · " + (performance.now() - t0).toFixed(1) + " ms");
    if (!state.schema) setStatus("live", "connected · waiting for the first push");
  }

  // -- the replica ----------------------------------------------------------

  function verified(schema, expected) {
    var actual = LumoraSchema.checksum(schema);
    if (expected && actual !== expected) {
      var e = new Error("checksum mismatch: expected " + expected.slice(0, 12) + "…, computed " +
        actual.slice(0, 12) + "…");
      e.code = "CHECKSUM_MISMATCH";
      throw e;
    }
    return actual;
  }

  function takeUpdate(p) {
    var seq = p.sequenceNumber;
    if (!Number.isInteger(seq)) throw new Error("update without a sequenceNumber");
    var schema;
    if (p.type === "full") {
      if (!p.schema || typeof p.schema !== "object") throw new Error("full update without a schema");
      schema = p.schema;
    } else if (p.type === "incremental") {
      if (!state.schema) throw new Error("incremental update but no schema held");
      if (seq <= state.sequence) return false; // already held
      if (seq !== state.sequence + 1) throw new Error("missed updates: holding " + state.sequence + ", got " + seq);
      schema = LumoraSchema.applyDelta(state.schema, p.delta || {});
    } else {
      throw new Error("unknown update type " + JSON.stringify(p.type));
    }
    var sum = verified(schema, p.checksum);
    state.schema = schema;
    state.sequence = seq;
    state.checksum = sum;
    return true;
  }

  function onUpdate(p) {
    var t0 = performance.now();
    try {
      var changed = takeUpdate(p);
    } catch (e) {
      stats.failed++;
      var ms = performance.now() - t0;
      if (e.code === "CHECKSUM_MISMATCH") {
        showOverlay("checksum", "Checksum mismatch on update #" + p.sequenceNumber,
          e.message + " — the page keeps what it had and asks for the full schema.");
      } else {
        showOverlay("update", "Update #" + p.sequenceNumber + " could not be applied", e.message);
      }
      if (p.type === "full" && failedFull === p.sequenceNumber) return; // asking again would loop
      if (p.type === "full") failedFull = p.sequenceNumber;
      // a failed ack makes the daemon send the full schema
      send("ack", { sequenceNumber: Number.isInteger(p.sequenceNumber) ? p.sequenceNumber : 0, success: false,
        error: e.message, applyTime: ms });
      return;
    }
    failedFull = null;
    var apply = performance.now() - t0;
    if (changed) {
      stats.updates++;
      stats[p.type === "full" ? "full" : "incremental"]++;
      render();
    }
    stats.lastApplyMs = performance.now() - t0;
    send("ack", { sequenceNumber: p.sequenceNumber, success: true, applyTime: apply });
    hideOverlay("checksum");
    hideOverlay("update");
    hideOverlay("error");
  }

  function onConnected(p) {
    attempts = 0;
    stats.connections++;
    failedFull = null;
    reloadAsked = null;
    hideOverlay("closed");
    body.dataset.resumed = String(!!p.resumed);
    if (!p.resumed) {
      var t0 = performance.now();
      var seq = p.sequenceNumber || 0;
      if (p.initialSchema) {
        try {
          state.checksum = verified(p.initialSchema, p.checksum);
          state.schema = p.initialSchema;
          state.sequence = seq;
          stats.updates++;
          stats.full++;
          send("ack", { sequenceNumber: seq, success: true });
        } catch (e) {
          showOverlay("checksum", "Checksum mismatch on the initial schema", e.message);
          send("ack", { sequenceNumber: seq, success: false, error: e.message });
        }
      } else {
        state.schema = null;
        state.sequence = seq;
        state.checksum = null;
      }
    }
    state.synced = true;
    render();
    if (!p.resumed) stats.lastApplyMs = performance.now() - t0;
    flushLogs();
  }

  function onPong(p) {
    var current = p.sequenceNumber;
    if (Number.isInteger(current) && current > state.sequence && reloadAsked !== current) {
      // an update went missing: ask for the full schema
      reloadAsked = current;
      send("reload", { reason: "missed update" });
    }
  }

  function onError(p) {
    showOverlay("error", (p.code || "ERROR") + (p.severity ? " (" + p.severity + ")" : ""), p.message || "");
  }

  var HANDLERS = { connected: onConnected, update: onUpdate, pong: onPong, error: onError };

  function handle(message) {
    lastHeard = Date.now();
    var handler = HANDLERS[message && message.type];
    if (handler) handler(message.payload || {});
  }

  // -- the connection ----------------------------------------------------

  function connect() {
    retryTimer = null;
    setStatus("connecting", attempts ? "reconnecting (attempt " + (attempts + 1) + ")…" : "connecting…");
    var socket = new WebSocket(wsUrl());
    ws = socket;
    socket.onopen = function () {
      lastHeard = Date.now();
      var payload = { deviceId: deviceId, platform: "web", clientVersion: CLIENT_VERSION,
        deviceName: "Browser preview (" + (navigator.platform || "web") + ")" };
      if (state.synced) {
        payload.lastSequence = state.sequence;
        if (state.checksum) payload.lastChecksum = state.checksum;
      }
      send("connect", payload);
    };
    socket.onmessage = function (event) {
      stats.receivedAt = performance.now();
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      handle(message);
    };
    socket.onclose = function (event) {
      if (ws !== socket) return;
      ws = null;
      closed(event.code, event.reason);
    };
  }

  function closed(code, reason) {
    if (stopped) return;
    var final = FINAL[code] || (code === 1000 && reason !== "Connection timeout");
    if (final) {
      setStatus("closed", "disconnected");
      showOverlay("closed", "Disconnected (" + code + ")", (reason || "") +
        (code === 4404 || code === 4410 ? " — create a new session and open its preview." : ""));
      return;
    }
    // 1012: the daemon is restarting, come back at once; else back off
    var delay = code === 1012 && attempts === 0 ? 100 : Math.min(5000, 250 * Math.pow(2, attempts));
    delay = delay * (1 - 0.25 * Math.random());
    attempts++;
    setStatus("connecting", "connection lost (" + code + "); retrying in " + (delay / 1000).toFixed(1) + " s");
    retryTimer = setTimeout(connect, delay);
  }

  function beat() {
    if (!ws || ws.readyState !== 1) return;
    if (Date.now() - lastHeard > RECEIVE_TIMEOUT * 1000) {
      ws.close(4000, "no word from the daemon");
      return;
    }
    send("ping", { status: "ok" });
  }

  // -- console errors as device log lines -----------------------------------

  var sending = false;

  function log(level, message) {
    if (sending) return;
    pending.push({ level: level, message: String(message).slice(0, 2000) });
    if (pending.length > 50) pending.shift();
    flushLogs();
  }

  function flushLogs() {
    sending = true;
    try {
      while (pending.length && ws && ws.readyState === 1) send("log", pending.shift());
    } finally {
      sending = false;
    }
  }

  ["error", "warn"].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      original.apply(console, arguments);
      log(level, Array.prototype.map.call(arguments, function (a) {
        return a instanceof Error ? a.message : typeof a === "string" ? a : JSON.stringify(a);
      }).join(" "));
    };
  });
  window.addEventListener("error", function (event) {
    log("error", event.message + (event.filename ? " (" + event.filename + ":" + event.lineno + ")" : ""));
  });
  window.addEventListener("unhandledrejection", function (event) {
    log("error", "unhandled rejection: " + (event.reason && event.reason.message || event.reason));
  });

  overlay.querySelector(".lr-overlay-close").addEventListener("click", function () { hideOverlay(); });

  window.lumoraPreview = { state: state, stats: stats, handle: handle, deviceId: deviceId,
    send: send, render: render };
  pingTimer = setInterval(beat, PING_SECONDS * 1000);
  window.addEventListener("pagehide", function () {
    stopped = true;
    clearInterval(pingTimer);
    if (retryTimer) clearTimeout(retryTimer);
    if (ws) ws.close(1000, "page closed");
  });
  connect();
})();
