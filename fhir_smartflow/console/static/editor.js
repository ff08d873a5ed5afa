// Flow editor: the trigger's description follows the choice; the condition is checked as you type
// (against the trigger's resource type, by the same loader and lint the server uses). Everything also
// works without this script: "Check" posts the form.
(function () {
  "use strict";
  var token = document.querySelector('meta[name="csrf-token"]');
  var trigger = document.getElementById("trigger");
  var condition = document.getElementById("condition");
  var live = document.getElementById("condition-live");

  function showTrigger() {
    var items = document.querySelectorAll("#trigger-descriptions [data-trigger]");
    for (var i = 0; i < items.length; i++) {
      items[i].hidden = items[i].getAttribute("data-trigger") !== trigger.value;
    }
  }

  var timer = null;
  var asked = 0;
  function checkCondition() {
    if (!condition || !live) return;
    var mine = ++asked;
    var body = new URLSearchParams();
    body.set("trigger", trigger ? trigger.value : "");
    body.set("condition", condition.value);
    fetch(condition.getAttribute("data-check-url"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": token ? token.content : "", "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString()
    }).then(function (r) { return r.json(); }).then(function (result) {
      if (mine !== asked) return;  // a later keystroke's answer wins
      live.textContent = result.ok ? "" : result.problems.join("; ");
      if (result.ok) {
        condition.removeAttribute("aria-invalid");
      } else {
        condition.setAttribute("aria-invalid", "true");
      }
    }).catch(function () { /* the server check on "Check" / "Save" still applies */ });
  }

  if (trigger) trigger.addEventListener("change", function () { showTrigger(); checkCondition(); });
  if (condition) {
    condition.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(checkCondition, 400);
    });
  }
  // "Responsible": names typed are searched among the FHIR server's Practitioners / PractitionerRoles.
  var list = document.getElementById("roles");
  var fixed = list ? list.innerHTML : "";
  var staffTimer = null;
  function searchStaff(input) {
    var q = input.value.trim();
    if (!list || q.length < 2 || q.indexOf("/") >= 0) return;
    fetch(input.getAttribute("data-search-url") + "?q=" + encodeURIComponent(q), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (found) {
        list.innerHTML = fixed;
        found.forEach(function (s) {
          var option = document.createElement("option");
          option.value = s.reference;
          option.textContent = s.label;
          list.appendChild(option);
        });
      }).catch(function () {});
  }
  var staff = document.querySelectorAll(".staff-search");
  for (var i = 0; i < staff.length; i++) {
    staff[i].addEventListener("input", function (e) {
      clearTimeout(staffTimer);
      var input = e.target;
      staffTimer = setTimeout(function () { searchStaff(input); }, 300);
    });
  }
  var summary = document.getElementById("error-summary");
  if (summary) summary.focus();
  var result = document.getElementById("dry-run");
  if (result && !summary) result.focus();
})();
