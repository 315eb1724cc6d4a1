// Refreshes the overview's numbers and charts every 5 s with a fragment from the server.
(function () {
  "use strict";
  var target = document.getElementById("overview");
  if (!target) { return; }
  var url = target.getAttribute("data-refresh");
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) { throw new Error(response.status); }
        return response.text();
      })
      .then(function (html) { target.innerHTML = html; target.removeAttribute("data-stale"); })
      .catch(function () { target.setAttribute("data-stale", "true"); });
  }
  setInterval(refresh, 5000);
})();
