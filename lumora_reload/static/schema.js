/* Lumora IR in the browser: the schema checksum and delta application,
 * the same rules as lumora_reload.schema (docs/protocol.md, section 4).
 * Pure functions; no DOM. SHA-256 is implemented here because
 * crypto.subtle exists only on secure origins, and a preview opened over
 * the LAN (http://192.168.x.y) is not one. */
(function (global) {
  "use strict";

  var hasOwn = Object.prototype.hasOwnProperty;

  // Own-key assignment that also works for "__proto__" (a plain
  // assignment would change the object's prototype instead).
  function put(obj, key, value) {
    Object.defineProperty(obj, key, { value: value, enumerable: true, writable: true, configurable: true });
  }

  function isObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  function copy(v) {
    if (Array.isArray(v)) {
      return v.map(copy);
    }
    if (v !== null && typeof v === "object") {
      var out = {};
      var keys = Object.keys(v);
      for (var i = 0; i < keys.length; i++) put(out, keys[i], copy(v[keys[i]]));
      return out;
    }
    return v;
  }

  // -- canonical JSON ----------------------------------------------------

  var INDEX_KEY = /^(?:0|[1-9][0-9]*)$/;
  var MAX_INDEX = 4294967294;

  function keyOrder(obj) {
    var index = [], other = [];
    var keys = Object.keys(obj);
    for (var i = 0; i < keys.length; i++) {
      var k = keys[i];
      if (k === "__proto__") continue;
      if (INDEX_KEY.test(k) && Number(k) <= MAX_INDEX) index.push(k);
      else other.push(k);
    }
    index.sort(function (a, b) { return Number(a) - Number(b); });
    other.sort(); // UTF-16 code units, as the checksum rules say
    return index.concat(other);
  }

  function serialize(v) {
    if (v === null || v === undefined) return "null";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "number" || typeof v === "string") return JSON.stringify(v);
    if (Array.isArray(v)) {
      var items = [];
      for (var i = 0; i < v.length; i++) items.push(serialize(v[i]));
      return "[" + items.join(",") + "]";
    }
    var keys = keyOrder(v);
    var parts = [];
    for (var j = 0; j < keys.length; j++) parts.push(JSON.stringify(keys[j]) + ":" + serialize(v[keys[j]]));
    return "{" + parts.join(",") + "}";
  }

  function normalized(schema) {
    if (!isObject(schema)) throw new Error("schema must be a JSON object");
    if (!hasOwn.call(schema, "metadata")) throw new Error("missing required field 'metadata'");
    var meta = schema.metadata;
    if (Array.isArray(meta)) return schema;
    if (!isObject(meta)) throw new Error("metadata must be an object");
    var root = {}, m = {};
    Object.keys(meta).forEach(function (k) { put(m, k, meta[k]); });
    put(m, "generatedAt", 0);
    Object.keys(schema).forEach(function (k) { put(root, k, schema[k]); });
    put(root, "metadata", m);
    return root;
  }

  function canonicalJson(schema) {
    return serialize(normalized(schema));
  }

  // -- SHA-256 -----------------------------------------------------------

  var K = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
  ];

  function sha256Hex(bytes) {
    var length = bytes.length;
    var padded = new Uint8Array(((length + 9 + 63) >> 6) << 6);
    padded.set(bytes);
    padded[length] = 0x80;
    var view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(length / 0x20000000));
    view.setUint32(padded.length - 4, (length * 8) >>> 0);
    var h = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    var w = new Uint32Array(64);
    for (var off = 0; off < padded.length; off += 64) {
      for (var t = 0; t < 16; t++) w[t] = view.getUint32(off + t * 4);
      for (t = 16; t < 64; t++) {
        var x = w[t - 15], y = w[t - 2];
        var s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        var s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) >>> 0;
      }
      var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
      for (t = 0; t < 64; t++) {
        var S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        var ch = (e & f) ^ (~e & g);
        var t1 = (k + S1 + ch + K[t] + w[t]) >>> 0;
        var S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        var maj = (a & b) ^ (a & c) ^ (b & c);
        var t2 = (S0 + maj) >>> 0;
        k = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
      }
      h[0] = (h[0] + a) >>> 0; h[1] = (h[1] + b) >>> 0; h[2] = (h[2] + c) >>> 0; h[3] = (h[3] + d) >>> 0;
      h[4] = (h[4] + e) >>> 0; h[5] = (h[5] + f) >>> 0; h[6] = (h[6] + g) >>> 0; h[7] = (h[7] + k) >>> 0;
    }
    var hex = "";
    for (var i = 0; i < 8; i++) hex += ("00000000" + h[i].toString(16)).slice(-8);
    return hex;
  }

  function checksum(schema) {
    return sha256Hex(new TextEncoder().encode(canonicalJson(schema)));
  }

  // -- deltas ------------------------------------------------------------

  // id -> {list, node} for the whole tree
  function indexTree(nodes, idx) {
    idx = idx || new Map();
    var stack = [nodes];
    while (stack.length) {
      var list = stack.pop();
      for (var i = 0; i < list.length; i++) {
        var n = list[i];
        idx.set(n.id, { list: list, node: n });
        if (Array.isArray(n.children) && n.children.length) stack.push(n.children);
      }
    }
    return idx;
  }

  function forgetSubtree(idx, node) {
    var stack = Array.isArray(node.children) ? node.children.slice() : [];
    while (stack.length) {
      var x = stack.pop();
      idx.delete(x.id);
      if (Array.isArray(x.children)) stack.push.apply(stack, x.children);
    }
  }

  /* Apply `delta` to `old` and return the new schema (`old` is untouched):
   * removed, then modified, then added (adds into one parent in ascending
   * index order), then the top-level field changes. Throws when the delta
   * does not fit. */
  function applyDelta(old, delta) {
    var result = copy(old);
    var nodes = result.nodes;
    if (nodes === undefined || nodes === null) {
      nodes = [];
      put(result, "nodes", nodes);
    }
    var removed = delta.removed || [], modified = delta.modified || [], added = delta.added || [];
    var idx, hit, pos;
    if (removed.length) {
      idx = indexTree(nodes);
      removed.forEach(function (rid) {
        hit = idx.get(rid);
        if (!hit) throw new Error("removed id " + JSON.stringify(rid) + " not found");
        idx.delete(rid);
        hit.list.splice(hit.list.indexOf(hit.node), 1);
        forgetSubtree(idx, hit.node);
      });
    }
    if (modified.length) {
      idx = indexTree(nodes);
      modified.forEach(function (m) {
        hit = idx.get(m.id);
        if (!hit) throw new Error("modified id " + JSON.stringify(m.id) + " not found");
        var fresh = copy(m);
        pos = hit.list.indexOf(hit.node);
        hit.list[pos] = fresh;
        forgetSubtree(idx, hit.node);
        indexTree([fresh], idx);
        idx.set(fresh.id, { list: hit.list, node: fresh });
      });
    }
    if (added.length) {
      idx = indexTree(nodes);
      var order = added.map(function (_, i) { return i; });
      order.sort(function (i, j) { return (added[i].index || 0) - (added[j].index || 0); });
      order.forEach(function (i) {
        var a = added[i], target;
        if (a.parentId === undefined || a.parentId === null) {
          target = nodes;
        } else {
          hit = idx.get(a.parentId);
          if (!hit) throw new Error("parent id " + JSON.stringify(a.parentId) + " of added node not found");
          target = hit.node.children;
          if (!Array.isArray(target)) {
            target = [];
            put(hit.node, "children", target);
          }
        }
        var index = hasOwn.call(a, "index") ? a.index : target.length;
        if (!Number.isInteger(index) || index < 0 || index > target.length) {
          throw new Error("index " + JSON.stringify(index) + " out of range for added node");
        }
        var node = copy(a);
        delete node.parentId;
        delete node.index;
        target.splice(index, 0, node);
        indexTree([node], idx);
      });
    }
    var changes = delta.metadataChanges || {};
    Object.keys(changes).forEach(function (k) { put(result, k, copy(changes[k])); });
    (delta.removedFields || []).forEach(function (k) { delete result[k]; });
    return result;
  }

  global.LumoraSchema = {
    canonicalJson: canonicalJson,
    checksum: checksum,
    sha256Hex: sha256Hex,
    applyDelta: applyDelta,
    copy: copy
  };
})(typeof window !== "undefined" ? window : this);
