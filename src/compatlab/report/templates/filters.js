/* compatlab report: the index's filters (verdict, build, hardware, product, change, text).
   The state lives in the URL's fragment (#verdict=crash&q=edr), so a filtered view can be
   linked and survives the back button.
   Each cell has one chip in the grid, carrying data-cell and its axis values as data-
   attributes; the rows of the tables (data-cell only) follow their cell's chip, found by the
   page both link to. The search box matches a cell's id, its verdict and the text of its row
   among the failing cells (signature, attribution, reason): the index does not repeat that
   text in every chip. Nothing here is built from guest text, only compared with it. */
(function () {
  "use strict";
  var form = document.getElementById("filters");
  if (!form) {
    return;
  }
  var KEYS = ["verdict", "build", "hardware", "product", "change", "q"];
  var fields = {};
  KEYS.forEach(function (key) {
    fields[key] = form.elements.namedItem(key);
  });
  var chips = Array.prototype.slice.call(document.querySelectorAll(".chip[data-cell]"));
  // Each chip's values, read once: a filter then touches no attribute but "hidden".
  var data = chips.map(function (chip) {
    var d = chip.dataset;
    return {v: d.v || "", b: d.b || "", h: d.h || "", p: (d.p || "").split("+"), c: d.c || ""};
  });
  var chipOf = Object.create(null); // a cell's page -> its chip's number
  chips.forEach(function (chip, n) {
    var page = pageOf(chip);
    if (page) {
      chipOf[page] = n;
    }
  });
  var followers = Array.prototype.slice.call(document.querySelectorAll("tr[data-cell]"));
  var led = followers.map(function (row) {
    var page = pageOf(row);
    return page && chipOf[page] !== undefined ? chipOf[page] : -1;
  });
  var texts = null; // what the search box matches, per chip: built on the first search
  var builds = Array.prototype.slice.call(document.querySelectorAll("tr[data-build]"));
  var columns = Array.prototype.slice.call(document.querySelectorAll("[data-hw-col]"));
  var shown = document.getElementById("shown");

  function pageOf(element) {
    var link = element.tagName === "A" ? element : element.querySelector("a[href]");
    return link ? (link.getAttribute("href") || "").split("#")[0] : "";
  }

  function current() {
    var state = {};
    KEYS.forEach(function (key) {
      var field = fields[key];
      state[key] = field ? field.value.trim() : "";
    });
    return state;
  }

  function hasOption(select, value) {
    return Array.prototype.some.call(select.options, function (option) {
      return option.value === value;
    });
  }

  function fromUrl() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    KEYS.forEach(function (key) {
      var field = fields[key];
      if (!field) {
        return;
      }
      var value = params.get(key) || "";
      if (field.tagName === "SELECT" && !hasOption(field, value)) {
        value = "";
      }
      if (field.value !== value) {
        field.value = value;
      }
    });
  }

  function toUrl(state) {
    var params = new URLSearchParams();
    KEYS.forEach(function (key) {
      if (state[key]) {
        params.set(key, state[key]);
      }
    });
    var text = params.toString();
    var url = text ? "#" + text : window.location.pathname + window.location.search;
    try {
      window.history.replaceState(null, "", url);
    } catch (error) {
      window.location.hash = text;
    }
  }

  function searchTexts() {
    if (texts === null) {
      var rowText = Object.create(null);
      var failing = document.querySelectorAll("#failing-cells tr[data-cell]");
      Array.prototype.forEach.call(failing, function (row) {
        rowText[pageOf(row)] = row.textContent;
      });
      texts = chips.map(function (chip, n) {
        var page = pageOf(chip);
        var row = page && rowText[page] ? rowText[page] : "";
        return (chip.dataset.cell + "\n" + data[n].v + "\n" + row).toLowerCase();
      });
    }
    return texts;
  }

  function matches(d, state) {
    if (state.verdict === "failing") {
      if (d.v === "pass" || d.v === "not_run") {
        return false;
      }
    } else if (state.verdict && d.v !== state.verdict) {
      return false;
    }
    if (state.build && d.b !== state.build) {
      return false;
    }
    if (state.hardware && d.h !== state.hardware) {
      return false;
    }
    if (state.product && d.p.indexOf(state.product) < 0) {
      return false;
    }
    return !state.change || d.c === state.change;
  }

  function apply() {
    var state = current();
    var query = state.q.toLowerCase();
    var haystack = query ? searchTexts() : null;
    var count = 0;
    var ok = chips.map(function (chip, n) {
      var match = matches(data[n], state) && (!haystack || haystack[n].indexOf(query) >= 0);
      if (chip.hidden === match) {
        chip.hidden = !match;
      }
      count += match ? 1 : 0;
      return match;
    });
    followers.forEach(function (row, n) {
      var hide = led[n] >= 0 && !ok[led[n]];
      if (row.hidden !== hide) {
        row.hidden = hide;
      }
    });
    builds.forEach(function (row) {
      row.hidden = Boolean(state.build) && row.dataset.build !== state.build;
    });
    columns.forEach(function (column) {
      column.hidden = Boolean(state.hardware) && column.dataset.hwCol !== state.hardware;
    });
    if (shown) {
      var total = chips.length;
      shown.textContent = count === total ? "all " + total + " cells" : count + " of " + total + " cells";
    }
    return state;
  }

  form.addEventListener("input", function () {
    toUrl(apply());
  });
  form.addEventListener("change", function () {
    toUrl(apply());
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
  });
  form.addEventListener("reset", function () {
    window.setTimeout(function () {
      toUrl(apply());
    }, 0);
  });
  window.addEventListener("hashchange", function () {
    fromUrl();
    apply();
  });
  fromUrl();
  apply();
}());
