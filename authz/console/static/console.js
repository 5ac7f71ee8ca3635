// The authz console's only script: keeps the pending-approvals list live. On a server-sent `approvals`
// event (or every 5 s when the stream is unavailable) it fetches the list again and swaps it in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var target = document.getElementById("pending");
  if (!live || !target) { return; }
  var src = live.getAttribute("data-live-src");
  var busy = false, timer = null;
  function refresh() {
    if (busy) { return; }
    busy = true;
    fetch(src, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var table = doc.getElementById("pending-table");
        if (table) { target.replaceChildren(document.importNode(table, true)); }
        live.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
      })
      .catch(function () { live.textContent = "Cannot reach the server; retrying."; })
      .then(function () { busy = false; });
  }
  function poll() { if (!timer) { timer = setInterval(refresh, 5000); } }
  if (window.EventSource) {
    var es = new EventSource(live.getAttribute("data-events"));
    es.addEventListener("approvals", refresh);
    es.addEventListener("hello", function () { if (timer) { clearInterval(timer); timer = null; } refresh(); });
    es.onerror = poll;
  } else {
    poll();
  }
}());
