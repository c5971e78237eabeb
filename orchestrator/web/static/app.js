// mlship status pages: relative times, live list refresh, live build log over Server-Sent Events.
// Data from webhooks is only ever inserted with textContent (never innerHTML).
(function () {
  "use strict";

  function ago(ts) {
    var d = Math.max(0, Math.floor(Date.now() / 1000 - ts));
    if (d < 45) return "just now";
    if (d < 3600) return Math.max(1, Math.round(d / 60)) + " min ago";
    if (d < 86400) return Math.round(d / 3600) + " h ago";
    return Math.round(d / 86400) + " days ago";
  }

  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-ts]").forEach(function (t) {
      var ts = parseFloat(t.getAttribute("data-ts"));
      if (ts) t.textContent = ago(ts);
    });
  }

  // Swap a server-rendered fragment (already escaped by Jinja) into the page.
  function swap(url, selector) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector(selector), old = document.querySelector(selector);
        if (fresh && old) { old.replaceWith(document.adoptNode(fresh)); refreshTimes(); }
        return fresh;
      });
  }

  function withParam(url, key, value) {
    var u = new URL(url, location.href);
    u.searchParams.set(key, value);
    return u.toString();
  }

  // Builds list: refresh the rows every few seconds while the tab is visible.
  function liveList() {
    var holder = document.querySelector("[data-refresh]");
    if (!holder) return;
    var url = withParam(holder.getAttribute("data-refresh"), "fragment", "rows");
    setInterval(function () {
      if (document.visibilityState === "visible") swap(url, "#build-table").catch(function () {});
    }, 3000);
  }

  // Build page: follow the log; refresh the summary (steps, buttons) while running.
  function liveBuild() {
    var log = document.getElementById("log");
    var wrap = document.getElementById("summary-wrap");
    if (!log || !log.hasAttribute("data-stream")) return;
    var follow = document.getElementById("follow");
    var summaryUrl = wrap && wrap.getAttribute("data-summary");
    var url = withParam(log.getAttribute("data-stream"), "after", log.getAttribute("data-after") || "0-0");
    var es = new EventSource(url);
    var timer = summaryUrl ? setInterval(function () { swap(summaryUrl, "#summary").catch(function () {}); }, 2000) : null;

    function append(entry, id) {
      var line = document.createElement("span");
      line.className = "ln" + (entry.stream === "stderr" ? " err" : entry.stream === "system" ? " sys" : "");
      line.setAttribute("data-id", id || "");
      var step = document.createElement("span");
      step.className = "step";
      step.textContent = entry.step || "";
      var text = document.createElement("span");
      text.className = "text";
      text.textContent = entry.text || "";
      line.appendChild(step);
      line.appendChild(text);
      log.appendChild(line);
      if (follow && follow.checked) log.scrollTop = log.scrollHeight;
    }

    es.addEventListener("log", function (ev) {
      try { append(JSON.parse(ev.data), ev.lastEventId); } catch (e) { /* ignore a malformed frame */ }
    });
    es.addEventListener("end", function () {
      es.close();
      if (timer) clearInterval(timer);
      var badge = document.getElementById("live-badge");
      if (badge) badge.remove();
      log.removeAttribute("data-stream");
      if (summaryUrl) swap(summaryUrl, "#summary").catch(function () {});
    });
    if (follow && follow.checked) log.scrollTop = log.scrollHeight;
  }

  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes();
    setInterval(refreshTimes, 30000);
    liveList();
    liveBuild();
  });
})();
