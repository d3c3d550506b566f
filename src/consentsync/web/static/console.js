// Times are rendered in UTC by the server; show them in the viewer's time zone, UTC on hover.
(function () {
  "use strict";
  var fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });
  function localise() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) { return; }
      el.textContent = fmt.format(when);
      el.title = "UTC: " + when.toISOString().replace(".000Z", "Z");
    });
    document.querySelectorAll("[data-seconds]").forEach(function (el) {
      var s = parseInt(el.getAttribute("data-seconds"), 10);
      var text = s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : s < 172800 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " days";
      el.textContent = text;
      el.title = s + " seconds";
    });
  }
  // Date filters mean days in the viewer's zone: tell the server which zone that is, in the
  // filter forms (a hidden field) and in a cookie (for links such as the overview's counts).
  function zone() {
    var name = "";
    try { name = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { name = ""; }
    if (!/^[A-Za-z0-9_+\-\/]{1,64}$/.test(name)) { return; }
    document.cookie = "tz=" + name + "; path=/; max-age=31536000; samesite=lax" +
      (location.protocol === "https:" ? "; secure" : "");
    document.querySelectorAll("input[data-tz]").forEach(function (el) { el.value = name; });
    document.querySelectorAll("[data-zone-note]").forEach(function (el) {
      el.textContent = "Dates are days in " + name + ", your time zone.";
    });
  }
  // A form that does something hard to undo (disabling an account, resetting another's
  // password, ending an account's sessions, rejecting an objection) asks first: its
  // data-confirm text, or only when its data-confirm-field has the data-confirm-value (the
  // state select of an account set to "disabled", the decision "reject"). Inline handlers are
  // not allowed by the console's CSP, hence one listener for every form.
  function confirmations() {
    document.addEventListener("submit", function (event) {
      var form = event.target;
      var text = form && form.getAttribute && form.getAttribute("data-confirm");
      if (!text) { return; }
      var field = form.getAttribute("data-confirm-field");
      if (field) {
        var input = form.elements.namedItem(field);
        if (!input || input.value !== form.getAttribute("data-confirm-value")) { return; }
      }
      if (!window.confirm(text)) { event.preventDefault(); }
    });
  }
  function start() { zone(); localise(); }
  confirmations();
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
