// blepay operator console: progressive enhancement only; every page works without it.
// 1. <time datetime> in the browser's time zone; 2. data-confirm asks before a destructive
// form is sent; 3. [data-refresh] blocks re-fetch themselves (the fleet, every N seconds).
"use strict";
(function () {
  const fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", timeZoneName: "short",
  });
  function localise(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.textContent = fmt.format(d); t.title = t.getAttribute("datetime"); }
    });
  }
  document.addEventListener("submit", function (e) {
    const form = e.target;
    const ask = form.getAttribute("data-confirm") ||
      (e.submitter && e.submitter.getAttribute("data-confirm"));
    if (ask && !window.confirm(ask)) { e.preventDefault(); }
  });
  function refresh(block) {
    const secs = parseInt(block.getAttribute("data-refresh"), 10) || 10;
    setInterval(function () {
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { if (r.redirected || !r.ok) { throw new Error("signed out"); } return r.text(); })
        .then(function (html) {
          const doc = new DOMParser().parseFromString(html, "text/html");
          const fresh = doc.getElementById(block.id);
          if (fresh) { block.innerHTML = fresh.innerHTML; localise(block); }
        })
        .catch(function () { /* keep what is shown; the next tick tries again */ });
    }, secs * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    localise(document);
    document.querySelectorAll("[data-refresh][id]").forEach(refresh);
  });
})();
