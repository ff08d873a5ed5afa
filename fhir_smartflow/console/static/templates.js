// Template editor: the Insert menu puts a merge field at the cursor of the last focused text field, and
// the preview follows the text (rendered by the server against the sample record).
(function () {
  "use strict";
  var token = document.querySelector('meta[name="csrf-token"]');
  var targets = document.querySelectorAll("[data-merge-target]");
  var last = document.getElementById("body");
  for (var i = 0; i < targets.length; i++) {
    targets[i].addEventListener("focus", function (e) { last = e.target; });
    targets[i].addEventListener("input", schedule);
  }
  var menu = document.querySelector("[data-insert-menu]");
  var button = document.getElementById("insert-button");
  if (button && menu) {
    button.addEventListener("click", function () {
      if (!menu.value || !last) return;
      var text = "{{ " + menu.value + " }}";
      var start = last.selectionStart == null ? last.value.length : last.selectionStart;
      var end = last.selectionEnd == null ? start : last.selectionEnd;
      last.value = last.value.slice(0, start) + text + last.value.slice(end);
      last.focus();
      last.selectionStart = last.selectionEnd = start + text.length;
      schedule();
    });
  }
  var chosen = document.getElementById("preview_patient");
  if (chosen) chosen.addEventListener("change", function () { schedule(); });
  var section = document.querySelector("[data-preview-url]");
  var out = document.getElementById("preview");
  var timer = null;
  function schedule() { clearTimeout(timer); timer = setTimeout(refresh, 400); }
  function value(id) { var el = document.getElementById(id); return el ? el.value : ""; }
  function refresh() {
    if (!section || !out) return;
    var body = new URLSearchParams();
    body.set("subject", value("subject"));
    body.set("body", value("body"));
    body.set("prompt", value("prompt_text"));
    body.set("preview_patient", value("preview_patient"));
    fetch(section.getAttribute("data-preview-url"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": token ? token.content : "", "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString()
    }).then(function (r) { return r.json(); }).then(function (parts) {
      out.textContent = "";
      Object.keys(parts).forEach(function (part) {
        var h = document.createElement("h3");
        h.textContent = part;
        out.appendChild(h);
        var p = document.createElement(parts[part].error ? "p" : "pre");
        p.className = parts[part].error ? "field-error" : "message";
        if (parts[part].error) p.setAttribute("role", "alert");
        p.textContent = parts[part].error || parts[part].text;
        out.appendChild(p);
      });
    }).catch(function () {});
  }
})();
