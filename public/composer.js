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
