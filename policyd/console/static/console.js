// Live updates: when a grant this identity may see changes, reload the page's main
// section from the server (no data is built here; the server renders everything).
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var source = new EventSource("/console/events");
  var busy = false;
  function editing() {
    var el = document.activeElement;
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA") && el.value !== "";
  }
  function refresh() {
    if (busy || editing()) { return; }
    busy = true;
    fetch(window.location.pathname, { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) { main.replaceWith(fresh); }
        document.body.setAttribute("data-updated", String(Date.now()));
      })
      .finally(function () { busy = false; });
  }
  source.addEventListener("grant", refresh);
})();
