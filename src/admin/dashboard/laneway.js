// laneway dashboard: live filter over the lanes table and copy buttons.
// Every page works without this script (the filter box also submits ?q=).
(function () {
  "use strict";
  var filter = document.getElementById("filter");
  var table = document.getElementById("lanes");
  if (filter && table) {
    var apply = function () {
      var q = filter.value.trim().toLowerCase();
      var rows = table.querySelectorAll("tbody tr[data-lane]");
      for (var i = 0; i < rows.length; i++) {
        var text = rows[i].getAttribute("data-search") || "";
        rows[i].hidden = q !== "" && text.indexOf(q) < 0;
      }
    };
    filter.addEventListener("input", apply);
  }
  // navigator.clipboard exists only on https and localhost; the admin
  // listener is often plain http on a LAN address, hence the fallback.
  var copy = function (text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = document.execCommand("copy");
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  };
  var buttons = document.querySelectorAll("button[data-copy]");
  for (var i = 0; i < buttons.length; i++) {
    var b = buttons[i];
    b.hidden = false;
    b.addEventListener("click", function (ev) {
      var btn = ev.currentTarget;
      var el = document.getElementById(btn.getAttribute("data-copy"));
      if (!el) return;
      var text = el.tagName === "A" ? el.href : el.textContent;
      copy(text).then(function () {
        btn.textContent = "Copied";
      }, function () {
        btn.textContent = "Select and copy";
      });
      setTimeout(function () { btn.textContent = "Copy"; }, 1500);
    });
  }
  var confirmed = document.querySelectorAll("form[data-confirm]");
  for (var j = 0; j < confirmed.length; j++) {
    confirmed[j].addEventListener("submit", function (ev) {
      if (!window.confirm(ev.currentTarget.getAttribute("data-confirm"))) ev.preventDefault();
    });
  }
})();
