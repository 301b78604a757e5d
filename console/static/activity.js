// The activity page, live: every 2 seconds, swap in the chart the server draws at
// /activity/chart. Paused while the page is hidden, and on request. Without this script
// the page shows the same chart and a "Refresh" link.
(function () {
  "use strict";

  var PERIOD_MS = 2000;
  var live = document.getElementById("activity-live");
  if (!live || !window.fetch) {
    return;
  }
  var source = live.getAttribute("data-src");
  var status = document.getElementById("activity-status");
  var pause = document.getElementById("activity-pause");
  var timer = null;
  var paused = false;
  var stopped = false;

  function say(text) {
    if (status && status.textContent !== text) {
      status.textContent = text;
    }
  }

  function running() {
    return !paused && !stopped && document.visibilityState === "visible";
  }

  function schedule() {
    clearTimeout(timer);
    timer = running() ? setTimeout(refresh, PERIOD_MS) : null;
  }

  function swap(response) {
    if (response.type === "opaqueredirect") {
      // The session ended: the chart would be the sign-in page.
      stopped = true;
      say("Updates stopped: sign in again to see the activity.");
      return null;
    }
    if (response.status !== 200) {
      say("Could not update (HTTP " + response.status + "); trying again.");
      return null;
    }
    return response.text().then(function (html) {
      live.innerHTML = html;
      say("Updating every 2 seconds.");
    });
  }

  function refresh() {
    fetch(source, {
      credentials: "same-origin",
      redirect: "manual",
      cache: "no-store",
      headers: { Accept: "text/html" },
    })
      .then(swap)
      .catch(function () {
        say("Could not reach the console; trying again.");
      })
      .then(schedule);
  }

  function toggle() {
    paused = !paused;
    pause.setAttribute("aria-pressed", paused ? "true" : "false");
    pause.textContent = paused ? "Resume updates" : "Pause updates";
    say(paused ? "Updates paused." : "Updating every 2 seconds.");
    if (paused) {
      schedule();
    } else {
      refresh();
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (running()) {
      refresh();
    } else {
      schedule();
    }
  });
  if (pause) {
    pause.hidden = false;
    pause.addEventListener("click", toggle);
  }
  say("Updating every 2 seconds.");
  schedule();
})();
