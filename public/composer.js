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

  // A streamed answer changes the page at every token: look at most every 200 ms, not at each change.
  var pending = false;
  function later() {
    if (pending) return;
    pending = true;
    setTimeout(function () { pending = false; scan(); }, 200);
  }

  new MutationObserver(later).observe(document.documentElement, { childList: true, subtree: true });
})();

// Browser notifications when a job of the user's conversations ends or waits for them. The page polls /jobs/signals
// (the user's jobs that run or ended lately, in every conversation: a socket only reaches the sessions showing a
// job's own conversation). Permission is asked once, when the first job starts, never on page load. A job that ends
// notifies only when the page is hidden or shows another conversation; clicking opens its conversation at its card.
(function () {
  var POLL_MS = 3000;
  var ASKED = "assistant.notifications.asked";
  var OPEN_CARD = "assistant.notifications.openCard";
  var ACTIVE = { queued: 1, preparing: 1, setting_up: 1, running: 1 };
  var known = null;  // job id -> the state last seen; null until the first answer (what was there is not news)

  function supported() { return typeof window.Notification === "function"; }

  function askOnce() {
    if (!supported() || window.Notification.permission !== "default") return;
    try { if (window.localStorage.getItem(ASKED)) return; window.localStorage.setItem(ASKED, "1"); } catch (e) {}
    try {
      var asked = window.Notification.requestPermission();
      if (asked && asked.catch) asked.catch(function () {});
    } catch (e) {}
  }

  function shownThread() {
    var match = /^\/thread\/([^\/?#]+)/.exec(window.location.pathname);
    return match ? match[1] : null;
  }

  function stateWords(state) { return String(state).replace(/_/g, " "); }

  function openCard(cardId) {
    var card = document.getElementById("step-" + cardId);
    if (card) {
      card.scrollIntoView({ block: "start", behavior: "smooth" });
      return true;
    }
    return false;
  }

  function notify(job) {
    if (!supported() || window.Notification.permission !== "granted") return;
    if (!document.hidden && shownThread() === job.thread) return;  // the card is on screen already
    var title = "Job " + job.number + " \u00b7 " + job.title + " \u2014 " + stateWords(job.state) +
      (job.kind ? " (" + job.kind + ")" : "");
    var body = job.text || (job.state === "waiting" ? "It is waiting for you." : "");
    try {
      var shown = new window.Notification(title, { body: body, tag: "job-" + job.id });
      shown.onclick = function () {
        window.focus();
        if (shown.close) shown.close();
        if (shownThread() === job.thread && openCard(job.card)) return;
        try { window.sessionStorage.setItem(OPEN_CARD, job.card); } catch (e) {}
        window.location.assign("/thread/" + encodeURIComponent(job.thread));
      };
    } catch (e) {}
  }

  function seen(jobs) {
    var first = known === null;
    var next = {};
    for (var i = 0; i < jobs.length; i++) {
      var job = jobs[i];
      var before = first ? job.state : (known[job.id] || null);
      next[job.id] = job.state;
      if (first || before === job.state) continue;
      // a job started (or already waits for the user: its agent may ask within a poll): the moment to ask
      if (before === null && (ACTIVE[job.state] || job.state === "waiting")) askOnce();
      if (job.notify) notify(job);
    }
    known = next;
  }

  function poll() {
    if (/\/login\/?$/.test(window.location.pathname)) { setTimeout(poll, POLL_MS); return; }
    window.fetch("/jobs/signals", { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      return response.ok ? response.json() : null;
    }).then(function (answer) {
      if (answer && answer.jobs) seen(answer.jobs);
    }, function () {}).then(function () { setTimeout(poll, POLL_MS); });
  }

  // Opened from a notification: the card is shown once the conversation has rendered it.
  (function openWhenShown() {
    var cardId = null;
    try { cardId = window.sessionStorage.getItem(OPEN_CARD); } catch (e) {}
    if (!cardId) return;
    var tries = 0;
    var timer = setInterval(function () {
      if (openCard(cardId) || ++tries > 150) {
        clearInterval(timer);
        try { window.sessionStorage.removeItem(OPEN_CARD); } catch (e) {}
      }
    }, 200);
  })();

  setTimeout(poll, 500);
})();
