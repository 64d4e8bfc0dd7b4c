// profilebase dashboard: refresh the live parts of a page by themselves.
// Every element with a data-live attribute (and an id) is replaced, every two seconds,
// by the element with the same id in a fresh copy of the page; a page whose parts are
// no longer live (a batch that completed) stops asking. Without this script every
// page still works: reload it to see the news.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function refresh() {
    var live = document.querySelectorAll("[data-live][id]");
    if (live.length === 0) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (reply) {
        if (!reply.ok) {
          throw new Error("status " + reply.status);
        }
        return reply.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        live.forEach(function (element) {
          var next = fresh.getElementById(element.id);
          if (next) {
            element.replaceWith(document.importNode(next, true));
          }
        });
      })
      .catch(function () {
        // The server is restarting or the network is down: try again later.
      })
      .finally(function () {
        window.setTimeout(refresh, PERIOD_MS);
      });
  }

  window.setTimeout(refresh, PERIOD_MS);
})();
