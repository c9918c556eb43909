// spoolkit dashboard: keep the parts marked data-live up to date without a reload.
// Every refresh fetches this same page and swaps each live element for its new copy
// (matched by id). Paused while the tab is hidden; stops when the page stops answering
// as itself (signed out, server gone), so a stale view is never passed off as live.
"use strict";
(function () {
  var period = parseInt(document.body.getAttribute("data-refresh-ms"), 10) || 2000;
  var busy = false;
  var failures = 0;

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll("[data-live][id]").forEach(function (old) {
      var replacement = fresh.getElementById(old.id);
      if (replacement && replacement.innerHTML !== old.innerHTML) {
        old.replaceWith(document.importNode(replacement, true));
      }
    });
    document.documentElement.setAttribute("data-refreshed", String(Date.now()));
  }

  function refresh() {
    if (busy || document.hidden || !document.querySelector("[data-live]")) return;
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", redirect: "manual",
                                  headers: { "X-Spoolkit-Refresh": "1" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) { failures = 0; swap(html); })
      .catch(function () {
        failures += 1;
        document.documentElement.setAttribute("data-refresh-failed", String(failures));
      })
      .finally(function () { busy = false; });
  }

  window.setInterval(refresh, period);
})();
