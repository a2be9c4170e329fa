/* compatlab report: the index's filters (verdict, build, hardware, product, change, text).
   The state lives in the URL's fragment (#verdict=crash&q=edr), so a filtered view can be
   linked and survives the back button. Elements filtered carry data-cell and their axis values
   as data- attributes; nothing here is built from guest text, only compared with it. */
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
  var items = Array.prototype.slice.call(document.querySelectorAll("[data-cell]"));
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-build]"));
  var columns = Array.prototype.slice.call(document.querySelectorAll("[data-hw-col]"));
  var shown = document.getElementById("shown");

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

  function matches(data, state, query) {
    if (state.verdict === "failing") {
      if (data.v === "pass" || data.v === "not_run") {
        return false;
      }
    } else if (state.verdict && data.v !== state.verdict) {
      return false;
    }
    if (state.build && data.b !== state.build) {
      return false;
    }
    if (state.hardware && data.h !== state.hardware) {
      return false;
    }
    if (state.product && data.p.split("+").indexOf(state.product) < 0) {
      return false;
    }
    if (state.change && data.c !== state.change) {
      return false;
    }
    return !query || (data.q || "").indexOf(query) >= 0;
  }

  function apply() {
    var state = current();
    var query = state.q.toLowerCase();
    var total = 0;
    var count = 0;
    items.forEach(function (item) {
      var ok = matches(item.dataset, state, query);
      item.hidden = !ok;
      if (item.classList.contains("chip")) {
        total += 1;
        count += ok ? 1 : 0;
      }
    });
    rows.forEach(function (row) {
      row.hidden = Boolean(state.build) && row.dataset.build !== state.build;
    });
    columns.forEach(function (column) {
      column.hidden = Boolean(state.hardware) && column.dataset.hwCol !== state.hardware;
    });
    if (shown) {
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
