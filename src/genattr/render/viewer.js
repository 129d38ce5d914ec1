/* genattr viewer (genattr.render.viewer): colours the prompt by a result's sequence scores or by
   one output token's row of token_scores. Reads the JSON of the viewer's script.ga-data element and
   writes every piece of text with textContent, never as HTML. */
(function () {
  "use strict";

  function decode(packed) {
    /* genattr.render.viewer.pack's {dtype, shape, base64}: little-endian float32 or float64. */
    if (!packed) return null;
    var bin = atob(packed.base64), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var view = new DataView(bytes.buffer), wide = packed.dtype === "f8";
    var out = new Float64Array(bytes.length / (wide ? 8 : 4));
    for (var k = 0; k < out.length; k++) {
      out[k] = wide ? view.getFloat64(k * 8, true) : view.getFloat32(k * 4, true);
    }
    return out;
  }

  function numbers(list) {
    var out = new Float64Array(list.length);
    for (var i = 0; i < list.length; i++) out[i] = list[i] === null ? NaN : list[i];
    return out;
  }

  function maxAbs(values) {
    /* genattr.render.max_abs: the largest finite |value|, 1 when there is none or it is 0. */
    var peak = 0;
    for (var i = 0; i < values.length; i++) {
      var m = Math.abs(values[i]);
      if (isFinite(m) && m > peak) peak = m;
    }
    return peak > 0 ? peak : 1;
  }

  function colour(value, scale, palette) {
    /* genattr.render.colour: the same operations in the same order, so the same integers. */
    if (!isFinite(value)) return palette[5];
    var u = Math.min(Math.abs(value) / scale, 1) * 5, k = Math.min(Math.floor(u), 4);
    var a = value > 0 ? palette[5 + k] : palette[5 - k], b = value > 0 ? palette[6 + k] : palette[4 - k];
    return [0, 1, 2].map(function (c) { return Math.floor(a[c] + (b[c] - a[c]) * (u - k) + 0.5); });
  }

  function rgb(c) { return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }

  function ink(c) { return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 ? "#000" : "#fff"; }

  function trim(s) { return s.indexOf(".") < 0 ? s : s.replace(/0+$/, "").replace(/\.$/, ""); }

  function fmt(v, digits) {
    /* Python's format(v, ".4g"), or with that many significant digits. */
    var d = digits || 4;
    if (isNaN(v)) return "undefined";
    if (!isFinite(v)) return v > 0 ? "inf" : "-inf";
    if (v === 0) return "0";
    var parts = v.toExponential(d - 1).split("e"), exp = +parts[1];
    if (exp < -4 || exp >= d) {
      var e = Math.abs(exp);
      return trim(parts[0]) + "e" + (exp < 0 ? "-" : "+") + (e < 10 ? "0" : "") + e;
    }
    return trim(v.toFixed(d - 1 - exp));
  }

  function node(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function jsonNumber(v) {
    if (isNaN(v)) return "null";
    return Object.is(v, -0) ? "-0.0" : String(v);
  }

  function fullJson(data, entry, matrix) {
    /* The whole result: its own fields as Python wrote them, then the shared ones rebuilt. */
    var rows = "null";
    if (matrix) {
      var shape = entry.token_scores.shape, lines = [];
      for (var r = 0; r < shape[0]; r++) {
        lines.push("[" + Array.prototype.map.call(matrix.subarray(r * shape[1], (r + 1) * shape[1]), jsonNumber).join(",") + "]");
      }
      rows = "[" + lines.join(",") + "]";
    }
    return entry.rest.slice(0, -1) + ',"prompt":' + JSON.stringify(data.prompts[entry.prompt]) +
      ',"features":' + JSON.stringify(data.feature_lists[entry.features]) + ',"token_scores":' + rows + "}";
  }

  function download(text, name) {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    a.download = name;
    a.style.display = "none";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
  }

  function Legend(box, data, what, note) {
    /* The colour key of `what`: the palette from -scale to +scale, the range it is coloured on. */
    var ramp = node("span", "ga-ramp"), lo = node("span", "ga-lo"), hi = node("span", "ga-hi");
    ramp.style.background = "linear-gradient(to right," + data.palette.map(rgb).join(",") + ")";
    box.append(node("span", "ga-label", "legend (" + what + ")"), lo, ramp, hi);
    if (note) box.appendChild(node("span", "ga-note", data.legend));
    this.set = function (scale) { lo.textContent = "-" + fmt(scale); hi.textContent = "+" + fmt(scale); };
  }

  var ROW = 20, SPARE = 10;

  function Table(box, view) {
    /* The features with the shown row's scores, sortable by each column (a click on its header).
       Only the rows in sight (and SPARE more on each side) are in the document, so that a click
       costs the same for 20 features or 20,000, and a click reads no layout. */
    var columns = [["index", "#"], ["text", "feature"], ["score", "score"]], order = { key: "index", dir: 1 };
    var n = view.features.length, values = null, scale = 1, palette = null, sorted = null, pending = false;
    var top = 0, height = 400; /* the scroll position and the box's height, read only when it scrolls */
    var scroller = node("div", "ga-scroll"), head = node("div", "ga-row ga-headrow"), room = node("div", "ga-room");
    var rows = node("div", "ga-rows"), heads = [];
    box.setAttribute("role", "table");
    box.setAttribute("aria-rowcount", String(n + 1));
    head.setAttribute("role", "row");
    columns.forEach(function (col) {
      var cell = node("div", col[0] === "text" ? "ga-cell" : "ga-cell ga-num"), button = node("button", null, col[1]);
      button.type = "button";
      button.addEventListener("click", function () {
        var first = col[0] === "score" ? -1 : 1;
        order = { key: col[0], dir: order.key === col[0] ? -order.dir : first };
        sort();
      });
      cell.setAttribute("role", "columnheader");
      cell.setAttribute("aria-sort", "none");
      cell.appendChild(button);
      head.appendChild(cell);
      heads.push(cell);
    });
    room.style.height = n * ROW + "px";
    scroller.style.height = Math.min((n + 1.5) * ROW, 320) + "px"; /* a fixed size: its own layout root */
    room.appendChild(rows);
    scroller.append(head, room);
    box.textContent = "";
    box.appendChild(scroller);
    scroller.addEventListener("scroll", function () {
      if (pending) return;
      pending = true;
      requestAnimationFrame(function () {
        pending = false;
        top = scroller.scrollTop;
        height = scroller.clientHeight || height;
        paint();
      });
    });

    function compare(a, b) {
      if (order.key === "score") {
        var x = values[a], y = values[b];
        if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y) || a - b;
        return (x - y) * order.dir || a - b;
      }
      var s = view.features[a], t = view.features[b];
      if (order.key === "text") return (s < t ? -1 : s > t ? 1 : 0) * order.dir || a - b;
      return (a - b) * order.dir;
    }

    function sort() {
      sorted = [];
      for (var i = 0; i < n; i++) sorted.push(i);
      sorted.sort(compare);
      heads.forEach(function (cell, c) {
        var on = columns[c][0] === order.key;
        cell.setAttribute("aria-sort", on ? (order.dir > 0 ? "ascending" : "descending") : "none");
      });
      paint();
    }

    function paint() {
      var first = Math.max(0, Math.floor(top / ROW) - SPARE);
      var stop = Math.min(n, first + Math.ceil(height / ROW) + 2 * SPARE);
      var fragment = document.createDocumentFragment();
      for (var j = first; j < stop; j++) {
        var i = sorted[j], c = colour(values[i], scale, palette), row = node("div", "ga-row");
        var score = node("div", "ga-cell ga-num", fmt(values[i]));
        score.style.backgroundColor = rgb(c);
        score.style.color = ink(c);
        row.setAttribute("role", "row");
        row.setAttribute("aria-rowindex", String(j + 2));
        row.append(node("div", "ga-cell ga-num", String(i)), node("div", "ga-cell", view.features[i]), score);
        fragment.appendChild(row);
      }
      rows.style.transform = "translateY(" + first * ROW + "px)";
      rows.textContent = "";
      rows.appendChild(fragment);
    }

    this.show = function (shown, shownScale, shownPalette) {
      values = shown;
      scale = shownScale;
      palette = shownPalette;
      if (sorted === null || order.key === "score") sort();
      else paint();
    };
  }

  function Panel(el, data, state, changed) {
    var r = +el.getAttribute("data-r"), entry = data.results[r], view = entry.view;
    var rest = JSON.parse(entry.rest), palette = data.palette, F = view.n_features;
    var scores = numbers(rest.scores), matrix = decode(entry.token_scores);
    var cols = entry.token_scores ? entry.token_scores.shape[1] : 0;
    var marks = {}, spans = [], inks = [], tokens = [], shown = null;
    view.marks.forEach(function (i) { marks[i] = true; });
    this.el = el;
    this.r = r;

    var prompt = el.querySelector(".ga-prompt"), fragment = document.createDocumentFragment();
    view.pieces.forEach(function (piece) {
      if (piece[1] < 0) { fragment.appendChild(document.createTextNode(piece[0])); return; }
      var span = node("span", marks[piece[1]] ? "ga-f ga-mark" : "ga-f", piece[0]);
      span.setAttribute("data-i", piece[1]);
      spans[piece[1]] = span;
      fragment.appendChild(span);
    });
    prompt.textContent = "";
    prompt.appendChild(fragment);
    prompt.addEventListener("mouseover", function (e) {
      var i = e.target.getAttribute && e.target.getAttribute("data-i");
      if (i === null || shown === null) return;
      e.target.title = "feature " + i + ": score " + fmt(shown[+i]) + (marks[i] ? " (ground truth)" : "");
    });

    var strip = el.querySelector(".ga-tokens");
    view.tokens.forEach(function (text, k) {
      var pick = matrix !== null && k >= view.first && k < view.stop;
      var box = node("span", pick ? "ga-tok ga-pick" : "ga-tok ga-na"), label = node("span", "ga-tt", text);
      var tip = ["output token " + (k + 1) + ": " + text];
      box.setAttribute("data-k", k);
      box.appendChild(label);
      view.steps.forEach(function (name) {
        box.appendChild(node("span", "ga-st", data.shown_steps[name] + " " + fmt(rest.step_scores[name][k], 2)));
      });
      Object.keys(rest.step_scores).forEach(function (name) {
        tip.push((data.step_labels[name] || name) + " = " + fmt(rest.step_scores[name][k]));
      });
      if (pick) {
        box.tabIndex = k === view.first ? 0 : -1;
        box.setAttribute("role", "button");
        box.setAttribute("aria-pressed", "false");
      } else {
        tip.push(matrix === null ? "this result has no per-token rows" : "not explained (outside the rows)");
      }
      box.title = tip.join("\n");
      tokens.push({ box: box, label: label, pick: pick });
      strip.appendChild(box);
    });

    var legend = new Legend(el.querySelector(".ga-legend-prompt"), data, "prompt", true);
    var outLegend = view.target_columns ? new Legend(el.querySelector(".ga-legend-out"), data, "output tokens", false) : null;
    var table = new Table(el.querySelector(".ga-table"), view);
    var seq = el.querySelector(".ga-seq"), showing = el.querySelector(".ga-showing");

    function target(e) {
      var box = e.target.closest && e.target.closest(".ga-pick");
      return box && strip.contains(box) ? +box.getAttribute("data-k") : null;
    }
    function focus(k) {
      tokens.forEach(function (t, j) { if (t.pick) t.box.tabIndex = j === k ? 0 : -1; });
      tokens[k].box.focus();
    }
    function step(from, by) {
      for (var k = from + by; k >= 0 && k < tokens.length; k += by) if (tokens[k].pick) return k;
      return from;
    }
    strip.addEventListener("mouseover", function (e) {
      var k = target(e);
      if (k !== null && state.preview !== k) { state.preview = k; changed(); }
    });
    strip.addEventListener("mouseleave", function () {
      if (state.preview !== null) { state.preview = null; changed(); }
    });
    strip.addEventListener("focusout", function (e) {
      if (!strip.contains(e.relatedTarget) && state.preview !== null) { state.preview = null; changed(); }
    });
    strip.addEventListener("click", function (e) {
      var k = target(e);
      if (k === null) return;
      state.sel = state.sel === k ? null : k;
      state.preview = null;
      changed();
    });
    strip.addEventListener("keydown", function (e) {
      var k = target(e);
      if (k === null) return;
      var moves = { ArrowRight: step(k, 1), ArrowDown: step(k, 1), ArrowLeft: step(k, -1), ArrowUp: step(k, -1),
        Home: step(view.first - 1, 1), End: step(view.stop, -1) };
      if (e.key in moves) {
        focus(moves[e.key]);
        state.preview = moves[e.key];
      } else if (e.key === "Enter" || e.key === " ") {
        state.sel = state.sel === k ? null : k;
        state.preview = null;
      } else if (e.key === "Escape") {
        state.sel = null;
        state.preview = null;
      } else {
        return;
      }
      e.preventDefault();
      changed();
    });
    seq.addEventListener("click", function () { state.sel = null; state.preview = null; changed(); });
    el.querySelector(".ga-dl").addEventListener("click", function () {
      var name = "genattr-" + rest.method.replace(/[^A-Za-z0-9_.-]+/g, "_") + "-" + (r + 1) + ".json";
      download(fullJson(data, entry, matrix), name);
    });

    this.draw = function () {
      /* Colour everything by the row of the token previewed or selected, else the sequence scores:
       the prompt (and the features table) on the scale of the prompt's columns, the output tokens
       on that of theirs, each with its legend. */
      var t = state.preview !== null ? state.preview : state.sel;
      var has = t !== null && matrix !== null && t >= view.first && t < view.stop;
      var values = has ? matrix.subarray((t - view.first) * cols, (t - view.first + 1) * cols) : scores;
      var scale = maxAbs(values.subarray(0, F)), outScale = maxAbs(values.subarray(F));
      shown = values;
      for (var i = 0; i < F; i++) {
        if (!spans[i]) continue;
        var c = colour(values[i], scale, palette), text = ink(c);
        spans[i].style.backgroundColor = rgb(c);
        if (inks[i] !== text) spans[i].style.color = inks[i] = text;
      }
      tokens.forEach(function (tok, k) {
        tok.box.classList.toggle("ga-sel", k === state.sel);
        if (tok.pick) tok.box.setAttribute("aria-pressed", String(k === state.sel));
        if (!view.target_columns) return;
        var v = values[F + k], undef = isNaN(v), c = colour(v, outScale, palette);
        tok.label.classList.toggle("ga-undef", undef);
        tok.label.style.backgroundColor = undef ? "" : rgb(c);
        tok.label.style.color = undef ? "" : ink(c);
      });
      seq.setAttribute("aria-pressed", String(state.sel === null));
      legend.set(scale);
      if (outLegend) outLegend.set(outScale);
      showing.textContent = has
        ? "showing the row of output token " + (t + 1) + " \u201c" + view.tokens[t] + "\u201d"
        : t !== null ? "no row for output token " + (t + 1) + " here; showing the sequence scores"
        : "showing the sequence scores";
      table.show(values, scale, palette);
    };
  }

  function Group(el, data) {
    var state = { sel: null, preview: null }, panels = [], active = null;
    var buttons = Array.prototype.slice.call(el.querySelectorAll(".ga-method"));
    var side = el.querySelector(".ga-side"), box = el.querySelector(".ga-panels");
    function changed() { panels.forEach(function (p) { if (!p.el.hidden) p.draw(); }); }
    el.querySelectorAll(".ga-panel").forEach(function (p) { panels.push(new Panel(p, data, state, changed)); });
    function show(r) {
      active = r;
      var all = side !== null && side.checked;
      box.classList.toggle("ga-sbs", all);
      panels.forEach(function (p) { p.el.hidden = !all && p.r !== r; });
      buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(+b.getAttribute("data-r") === r)); });
      changed();
    }
    buttons.forEach(function (b) { b.addEventListener("click", function () { show(+b.getAttribute("data-r")); }); });
    if (side) side.addEventListener("change", function () { show(active); });
    show(panels[0].r);
  }

  function bind(root) {
    root.setAttribute("data-ga-bound", "1");
    try {
      var data = JSON.parse(root.querySelector("script.ga-data").textContent);
      root.querySelectorAll(".ga-group").forEach(function (group) { Group(group, data); });
    } catch (err) {
      root.insertBefore(node("div", "ga-error", "genattr viewer: " + err), root.firstChild);
    }
  }

  document.querySelectorAll("div.ga-viewer:not([data-ga-bound])").forEach(bind);
})();
