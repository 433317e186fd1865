/* Lumora IR -> HTML. Every node becomes one element tagged with its id;
 * `patch` reconciles the page with a new schema by node id, so an element
 * whose node id persists is kept (an input keeps its text and focus) and
 * only what changed is touched. Text always goes in as text, never HTML. */
(function (global) {
  "use strict";

  var FAMILIES = {
    layout: ["Container", "View", "SafeAreaView", "Padding", "Center", "Align", "SizedBox", "Expanded",
      "Flexible", "Row", "Column", "Stack", "Positioned", "ScrollView", "SingleChildScrollView",
      "KeyboardAvoidingView", "Wrap", "Spacer", "Fragment", "Box", "HStack", "VStack", "ZStack"],
    text: ["Text", "Paragraph", "RichText", "Heading", "Label", "SelectableText"],
    button: ["Button", "TouchableOpacity", "TouchableHighlight", "TouchableWithoutFeedback", "Pressable",
      "ElevatedButton", "TextButton", "OutlinedButton", "IconButton", "FloatingActionButton", "InkWell",
      "GestureDetector"],
    input: ["TextField", "TextInput", "TextFormField", "Input", "TextArea"],
    toggle: ["Switch", "Checkbox", "CheckBox", "Radio"],
    list: ["ListView", "FlatList", "SectionList", "GridView", "List", "VirtualizedList"],
    image: ["Image", "ImageBackground", "NetworkImage", "Img", "Avatar", "CircleAvatar"],
    icon: ["Icon", "Icons", "MaterialIcons", "Ionicons", "FontAwesome"],
    card: ["Card", "Paper", "ListTile"],
    scaffold: ["Scaffold", "Screen", "Page"],
    bar: ["AppBar", "Header", "NavigationBar", "TopAppBar", "Toolbar", "BottomNavigationBar", "TabBar"],
    misc: ["Divider", "ActivityIndicator", "CircularProgressIndicator", "LinearProgressIndicator"]
  };
  var FAMILY = {};
  Object.keys(FAMILIES).forEach(function (f) {
    FAMILIES[f].forEach(function (t) { FAMILY[t] = f; });
  });

  var ICONS = { add: "+", close: "✕", menu: "☰", search: "⌕", home: "⌂", star: "★", favorite: "♥",
    heart: "♥", settings: "⚙", check: "✓", delete: "🗑", edit: "✎", person: "👤", back: "‹",
    arrow_back: "‹", "arrow-back": "‹", chevron_right: "›", "chevron-right": "›", info: "ℹ", share: "⇪" };

  function familyOf(type) {
    return FAMILY[type] || "unknown";
  }

  function firstString() {
    for (var i = 0; i < arguments.length; i++) {
      var v = arguments[i];
      if (typeof v === "string") return v;
      if (typeof v === "number" || typeof v === "boolean") return String(v);
    }
    return null;
  }

  function textOf(props) {
    return firstString(props.text, props.children, props.data, props.content, props.value, props.title,
      props.label);
  }

  // -- styles ------------------------------------------------------------

  var LENGTHS = /^(width|height|min|max|padding|margin|top|left|right|bottom|border.*(Width|Radius)|fontSize|gap|rowGap|columnGap|lineHeight|letterSpacing|flexBasis)/;
  var ALIGN = { start: "flex-start", end: "flex-end", center: "center", spaceBetween: "space-between",
    spaceAround: "space-around", spaceEvenly: "space-evenly", stretch: "stretch" };

  function cssName(key) {
    return key.replace(/[A-Z]/g, function (c) { return "-" + c.toLowerCase(); });
  }

  function cssValue(key, value) {
    if (typeof value === "number") {
      if (/^(paddingHorizontal|paddingVertical|marginHorizontal|marginVertical)$/.test(key)) return value + "px";
      return LENGTHS.test(key) ? value + "px" : String(value);
    }
    if (typeof value === "string") return value;
    return null;
  }

  function styleOf(node) {
    var props = node.props || {};
    var out = {};
    var style = props.style;
    if (Array.isArray(style)) style = Object.assign.apply(null, [{}].concat(style.filter(isObj)));
    if (isObj(style)) {
      Object.keys(style).forEach(function (k) {
        var v = cssValue(k, style[k]);
        if (v === null) return;
        if (k === "paddingHorizontal" || k === "marginHorizontal") {
          var base = k.slice(0, -10);
          out[base + "-left"] = v; out[base + "-right"] = v;
        } else if (k === "paddingVertical" || k === "marginVertical") {
          var b = k.slice(0, -8);
          out[b + "-top"] = v; out[b + "-bottom"] = v;
        } else {
          out[cssName(k)] = v;
        }
      });
    }
    // Flutter-style props
    ["width", "height", "color", "backgroundColor", "padding", "margin", "flex", "gap"].forEach(function (k) {
      if (props[k] === undefined || isObj(props[k])) return;
      var v = cssValue(k, props[k]);
      if (v === null) return;
      out[k === "color" && familyOf(node.type) !== "text" ? "background-color" : cssName(k)] = v;
    });
    if (isObj(props.padding) && typeof props.padding.all === "number") out.padding = props.padding.all + "px";
    if (ALIGN[props.mainAxisAlignment]) out["justify-content"] = ALIGN[props.mainAxisAlignment];
    if (ALIGN[props.crossAxisAlignment]) out["align-items"] = ALIGN[props.crossAxisAlignment];
    return out;
  }

  function isObj(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  function imageSource(props) {
    var src = props.source;
    if (isObj(src)) src = src.uri;
    src = firstString(src, props.src, props.uri, props.url, props.image, props.backgroundImage);
    if (src && /^(https?:|data:image\/|blob:|\/)/i.test(src)) return src;
    return null;
  }

  // -- elements ----------------------------------------------------------

  /* What the element of `node` is built as: a node whose shape changes
   * gets a new element (an <input> cannot become a <textarea>). */
  function shapeOf(node) {
    var multiline = familyOf(node.type) === "input" && (node.type === "TextArea" || !!(node.props || {}).multiline);
    return node.type + (multiline ? "/multiline" : "");
  }

  function create(node) {
    var family = familyOf(node.type);
    var el;
    if (family === "input") {
      el = document.createElement("label");
      el.appendChild(document.createElement("span")).className = "lr-field-label";
      el.appendChild(document.createElement(node.type === "TextArea" || (node.props || {}).multiline ? "textarea" : "input"));
    } else if (family === "toggle") {
      el = document.createElement("label");
      var box = el.appendChild(document.createElement("input"));
      box.type = node.type === "Radio" ? "radio" : "checkbox";
      if (node.type === "Switch") box.setAttribute("role", "switch");
      el.appendChild(document.createElement("span")).className = "lr-field-label";
    } else if (family === "image") {
      el = document.createElement("div");
      el.appendChild(document.createElement("img"));
    } else if (family === "button") {
      el = document.createElement("button");
      el.type = "button";
      el.appendChild(document.createElement("span")).className = "lr-button-label";
    } else if (family === "text") {
      el = document.createElement(node.type === "Heading" ? "h2" : "p");
      el.appendChild(document.createTextNode(""));
    } else if (family === "unknown") {
      el = document.createElement("div");
      el.appendChild(document.createElement("div")).className = "lr-unknown-type";
      el.appendChild(document.createElement("pre")).className = "lr-unknown-props";
    } else if (family === "bar") {
      el = document.createElement("header");
      el.appendChild(document.createElement("span")).className = "lr-bar-title";
    } else {
      el = document.createElement(family === "list" ? "ul" : "div");
    }
    el.className = "lr-node lr-" + family + " lr-type-" + node.type.replace(/[^A-Za-z0-9_-]/g, "_");
    el.dataset.lumoraId = node.id;
    el.dataset.lumoraType = node.type;
    el._lr = { props: null, kids: new Map(), shape: shapeOf(node) };
    return el;
  }

  function childBox(el, family) {
    // where children go: inputs, toggles and images have none of their own
    if (family === "input" || family === "toggle" || family === "image" || family === "icon") return null;
    return el;
  }

  function setText(node, text) {
    if (node.nodeValue !== text) node.nodeValue = text;
  }

  function update(el, node) {
    var props = node.props || {};
    var family = familyOf(node.type);
    // a list shows its `data` only while it has no child nodes
    var sig = JSON.stringify([props, node.state || null, family === "list" && !(node.children || []).length]);
    if (el._lr.props === sig) return;
    var fresh = el._lr.props === null;
    var before = el._lr.before || {};
    el._lr.props = sig;
    el._lr.before = props;
    var style = styleOf(node);
    el.removeAttribute("style");
    Object.keys(style).forEach(function (k) { el.style.setProperty(k, style[k]); });
    if (family === "text") {
      setText(el.firstChild, textOf(props) || "");
    } else if (family === "button") {
      el.firstChild.textContent = firstString(props.title, props.text, props.label, props.children) || "";
      el.disabled = props.disabled === true;
    } else if (family === "input") {
      el.firstChild.textContent = firstString(props.label, props.labelText) || "";
      var input = el.lastChild;
      input.placeholder = firstString(props.placeholder, props.hintText, props.hint) || "";
      if (input.tagName === "INPUT") {
        input.type = props.secureTextEntry === true || props.obscureText === true ? "password" : "text";
      }
      var value = firstString(props.value, props.defaultValue, props.initialValue);
      // the user's typing wins until the schema itself changes the value
      // (taking it away too: the field is then empty, as on a fresh page)
      var old = firstString(before.value, before.defaultValue, before.initialValue);
      if (fresh ? value !== null : value !== old) input.value = value === null ? "" : value;
      input.disabled = props.editable === false || props.enabled === false;
    } else if (family === "toggle") {
      var on = props.value === true || props.checked === true || props.isOn === true;
      var was = before.value === true || before.checked === true || before.isOn === true;
      if (fresh || on !== was) el.firstChild.checked = on;
      el.lastChild.textContent = firstString(props.label, props.title, props.text) || "";
    } else if (family === "image") {
      var img = el.firstChild;
      var src = imageSource(props);
      img.alt = firstString(props.alt, props.accessibilityLabel, props.semanticLabel) || "image";
      if (src) {
        if (img.getAttribute("src") !== src) img.setAttribute("src", src);
      } else {
        img.removeAttribute("src");
      }
    } else if (family === "icon") {
      var name = firstString(props.name, props.icon, props.iconName, props.text) || "?";
      el.textContent = ICONS[name] || ICONS[name.replace(/^Icons\./, "")] || name;
      el.title = name;
    } else if (family === "bar") {
      el.firstChild.textContent = firstString(props.title, props.text, props.label) || "";
    } else if (family === "unknown") {
      el.firstChild.textContent = node.type;
      el.children[1].textContent = JSON.stringify(props, null, 1);
    } else if (family === "list" && Array.isArray(props.data) && !(node.children || []).length) {
      el.replaceChildren.apply(el, props.data.slice(0, 200).map(function (item) {
        var li = document.createElement("li");
        li.className = "lr-list-item";
        li.textContent = isObj(item) ? (firstString(item.title, item.text, item.label, item.name, item.key) ||
          JSON.stringify(item)) : String(item);
        return li;
      }));
    } else if (family === "list") {
      // no data shown now: items of an earlier `data` go (child nodes stay)
      Array.prototype.slice.call(el.querySelectorAll(":scope > .lr-list-item")).forEach(function (li) {
        el.removeChild(li);
      });
    }
  }

  /* Make `box`'s children show `nodes`, reusing the elements of nodes whose
   * id (and type) persist. `kids` maps id -> element for the box. */
  function patchChildren(box, kids, nodes, stats) {
    var seen = new Map();
    var wanted = [];
    (nodes || []).forEach(function (node) {
      if (!isObj(node) || typeof node.id !== "string" || typeof node.type !== "string") return;
      var el = kids.get(node.id);
      if (!el || el._lr.shape !== shapeOf(node)) {
        el = create(node);
        stats.created++;
      }
      patchNode(el, node, stats);
      seen.set(node.id, el);
      wanted.push(el);
    });
    kids.forEach(function (el, id) {
      if (seen.get(id) !== el && el.parentNode === box) {
        box.removeChild(el);
        stats.removed++;
      }
    });
    // order: move only what is out of place (moving a focused input blurs it)
    var fixed = box.firstChild;
    while (fixed && !(fixed._lr)) fixed = fixed.nextSibling; // skip the element's own parts
    wanted.forEach(function (el) {
      if (el === fixed) {
        fixed = fixed.nextSibling;
      } else {
        box.insertBefore(el, fixed);
      }
    });
    return seen;
  }

  function patchNode(el, node, stats) {
    update(el, node);
    var box = childBox(el, familyOf(node.type));
    if (box) el._lr.kids = patchChildren(box, el._lr.kids, node.children, stats);
  }

  /* Render `schema` into `root`, reusing what is there; returns counts. */
  function patch(root, schema) {
    var stats = { created: 0, removed: 0 };
    if (!root._lr) root._lr = { kids: new Map() };
    root._lr.kids = patchChildren(root, root._lr.kids, (schema && schema.nodes) || [], stats);
    return stats;
  }

  global.LumoraRender = { patch: patch, familyOf: familyOf, FAMILIES: FAMILIES };
})(window);
