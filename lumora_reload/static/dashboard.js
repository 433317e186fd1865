/* The dashboard: polls GET overview every second and shows each session
 * (QR code, devices and health, recent updates, log tail) with buttons to
 * open its preview and to reload its devices. With an API token, open the
 * page as /?token=TOKEN: the token is kept for this tab, sent as
 * "Authorization: Bearer" on every call, and removed from the address bar. */
(function () {
  "use strict";

  var POLL_MS = 1000;
  var params = new URLSearchParams(location.search);
  var token = params.get("token") || sessionStorage.getItem("lumora-token");
  if (params.has("token")) {
    sessionStorage.setItem("lumora-token", token);
    params.delete("token");
    var rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }

  var main = document.getElementById("sessions");
  var summary = document.getElementById("summary");
  var empty = document.getElementById("empty");
  var cards = new Map();
  var messages = new Map(); // session id -> last button result

  function call(method, path) {
    var headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    return fetch(path, { method: method, headers: headers, cache: "no-store" }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
        return body;
      });
    });
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function ago(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    return s < 60 ? s + " s" : Math.round(s / 60) + " min";
  }

  function card(id) {
    var c = cards.get(id);
    if (c) return c;
    c = el("section", "session");
    c.dataset.session = id;
    var head = c.appendChild(el("div", "head"));
    head.appendChild(el("h2", "sid", id.slice(0, 8) + "…")).title = id;
    head.appendChild(el("span", "seq"));
    var actions = head.appendChild(el("span", "actions"));
    var open = actions.appendChild(el("a", "button open", "Open preview"));
    open.href = "preview/" + encodeURIComponent(id);
    open.target = "_blank";
    open.rel = "noopener";
    var reload = actions.appendChild(el("button", "button reload", "Reload devices"));
    reload.type = "button";
    reload.addEventListener("click", function () {
      reload.disabled = true;
      call("POST", "session/" + encodeURIComponent(id) + "/reload").then(function (r) {
        messages.set(id, "reloaded " + r.devicesUpdated + " device(s) at #" + r.sequenceNumber);
      }, function (e) {
        messages.set(id, "reload failed: " + e.message);
      }).then(function () {
        reload.disabled = false;
        c.querySelector(".message").textContent = messages.get(id);
      });
    });
    c.appendChild(el("div", "message"));
    var grid = c.appendChild(el("div", "grid"));
    var qr = grid.appendChild(el("figure", "qr"));
    qr.appendChild(el("div", "code"));
    qr.appendChild(el("figcaption", "url"));
    var cols = grid.appendChild(el("div", "cols"));
    cols.appendChild(el("h3", null, "Devices"));
    cols.appendChild(el("table", "devices"));
    cols.appendChild(el("h3", null, "Recent updates"));
    cols.appendChild(el("ol", "updates"));
    cols.appendChild(el("h3", null, "Log"));
    cols.appendChild(el("pre", "logs"));
    cards.set(id, c);
    main.appendChild(c);
    return c;
  }

  function show(s) {
    var c = card(s.sessionId);
    c.querySelector(".seq").textContent = "#" + s.sequenceNumber + " · " + s.devices.length + " device(s) · " +
      s.healthyDevices + " healthy";
    var code = c.querySelector(".code");
    if (code.dataset.url !== s.deviceUrl) {
      code.innerHTML = s.qrSvg; // an SVG the daemon made from the URL (segno)
      code.dataset.url = s.deviceUrl;
      c.querySelector(".url").textContent = s.deviceUrl;
    }
    var table = c.querySelector(".devices");
    table.replaceChildren();
    var head = table.appendChild(el("tr"));
    ["device", "platform", "health", "last ack", "ack lag", "last seen"].forEach(function (h) {
      head.appendChild(el("th", null, h));
    });
    s.devices.forEach(function (d) {
      var row = table.appendChild(el("tr", d.healthy ? "healthy" : "unhealthy"));
      row.dataset.device = d.deviceId;
      row.appendChild(el("td", null, d.deviceName ? d.deviceName + " (" + d.deviceId + ")" : d.deviceId));
      row.appendChild(el("td", null, d.platform || ""));
      row.appendChild(el("td", "health", d.healthy ? "healthy" : "unhealthy"));
      row.appendChild(el("td", null, "#" + d.lastAckSequence));
      row.appendChild(el("td", "lag", String(d.ackLag)));
      row.appendChild(el("td", null, ago(d.timeSinceLastPing) + " ago"));
    });
    if (!s.devices.length) table.appendChild(el("tr")).appendChild(el("td", "none", "no device connected"));
    var updates = c.querySelector(".updates");
    updates.replaceChildren.apply(updates, s.updates.map(function (u) {
      return el("li", null, "#" + u.sequenceNumber + " " + u.updateType +
        (u.checksum ? " · " + u.checksum.slice(0, 10) : ""));
    }));
    var logs = c.querySelector(".logs");
    logs.replaceChildren.apply(logs, s.logs.map(function (line) {
      var t = new Date(line.time).toLocaleTimeString();
      return el("div", "level-" + line.level, t + " " + (line.deviceName || line.deviceId) + " [" + line.level + "] " +
        line.message);
    }));
    if (!s.logs.length) logs.textContent = "(nothing logged)";
  }

  function poll() {
    call("GET", "overview").then(function (data) {
      var seen = new Set();
      data.sessions.forEach(function (s) {
        seen.add(s.sessionId);
        show(s);
      });
      cards.forEach(function (c, id) {
        if (!seen.has(id)) {
          c.remove();
          cards.delete(id);
        }
      });
      empty.hidden = data.sessions.length > 0;
      summary.textContent = data.sessions.length + " session(s), " + data.totalDevices + " device(s) · updated " +
        new Date().toLocaleTimeString();
      document.body.dataset.state = "ok";
    }, function (e) {
      summary.textContent = "cannot reach the daemon: " + e.message;
      document.body.dataset.state = "error";
    }).then(function () {
      setTimeout(poll, POLL_MS);
    });
  }

  poll();
})();
