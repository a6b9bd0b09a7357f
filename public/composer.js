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

// A new job card is scrolled into view. Chainlit follows new messages only while the reader is at the bottom, and
// only its own way: a card started from a button on an earlier card (Retry, Run as a job) or from another tab
// appears below the fold and nobody sees it start. A page that opens a conversation shows all its cards at once:
// those are not new.
(function () {
  var seen = {};
  var path = window.location.pathname;
  var quietUntil = Date.now() + 1500;

  function scan() {
    if (window.location.pathname !== path) {
      if (/^\/thread\//.test(path)) {  // another conversation opened: the cards it shows are not new
        seen = {};
        quietUntil = Date.now() + 1500;
      }  // else a new chat got its thread id: the same conversation goes on
      path = window.location.pathname;
    }
    var heads = document.querySelectorAll(".step h3");
    var fresh = [];
    for (var i = 0; i < heads.length; i++) {
      var match = /^Job (\d+) ·/.exec((heads[i].textContent || "").trim());
      if (match && !seen[match[1]]) {
        seen[match[1]] = true;
        fresh.push(heads[i]);
      }
    }
    if (!fresh.length || Date.now() < quietUntil || fresh.length > 3) return;
    var card = fresh[fresh.length - 1].closest(".step");
    if (card) card.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  new MutationObserver(scan).observe(document.documentElement, { childList: true, subtree: true });
})();
