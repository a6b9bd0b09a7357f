// Typing "/jobs" and Enter runs the command at once. Chainlit's command menu takes that Enter to pick the
// command and then waits for a second one; a command that needs no text should not make the user press twice.
(function () {
  var RUN_AT_ONCE = ["/jobs"];

  function pressSend(tries) {
    var button = document.getElementById("chat-submit");
    if (button && !button.disabled) {
      button.click();
    } else if (tries < 20) {  // the menu's pick re-renders the composer first
      setTimeout(function () { pressSend(tries + 1); }, 25);
    }
  }

  document.addEventListener("keydown", function (event) {
    var input = event.target;
    if (event.key !== "Enter" || event.shiftKey || !input || input.id !== "chat-input") return;
    if (RUN_AT_ONCE.indexOf(input.value.trim().toLowerCase()) < 0) return;
    setTimeout(function () { pressSend(0); }, 0);
  }, true);
})();

// The login page shows why a login was refused in the server's words ("wrong user name or password", "too many
// attempts, try again in N s"): Chainlit's page looks the reason up as a translation key and, finding none for
// a sentence, says only "Unable to sign in".
(function () {
  var reason = null;
  var fetchFirst = window.fetch;
  window.fetch = function (input, init) {
    var url = typeof input === "string" ? input : (input && input.url) || "";
    var method = ((init && init.method) || (input && input.method) || "GET").toUpperCase();
    var answer = fetchFirst.apply(this, arguments);
    if (method === "POST" && /\/login$/.test(url.split("?")[0])) {
      answer.then(function (response) {
        if (response.ok) { reason = null; return; }
        response.clone().json().then(function (body) {
          reason = body && typeof body.detail === "string" ? body.detail : null;
          show();
        }, function () {});
      }, function () {});
    }
    return answer;
  };

  function show() {
    if (!reason || !/\/login\/?$/.test(window.location.pathname)) return;
    var text = reason.charAt(0).toUpperCase() + reason.slice(1) + ".";
    var alerts = document.querySelectorAll("form [role=alert] p");
    for (var i = 0; i < alerts.length; i++) {
      if (alerts[i].textContent !== text) alerts[i].textContent = text;
    }
  }

  new MutationObserver(show).observe(document.documentElement, { childList: true, subtree: true });
})();
