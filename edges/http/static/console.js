// The live panel: counts from /console/live.json every 2 s, shown as rates between two reads (no reload).
(function () {
  const panel = document.getElementById("live");
  if (!panel) return;
  let last = null;
  async function tick() {
    try {
      const answer = await fetch(panel.dataset.url, { credentials: "same-origin" });
      if (answer.ok) {
        const now = await answer.json();
        if (last) {
          const seconds = Math.max(0.001, now.t - last.t);
          panel.querySelectorAll("[data-rate]").forEach((el) => {
            const name = el.dataset.rate;
            el.textContent = ((now[name] - last[name]) / seconds).toFixed(1);
          });
        }
        panel.querySelectorAll("[data-count]").forEach((el) => { el.textContent = now[el.dataset.count]; });
        last = now;
      }
    } finally {
      setTimeout(tick, 2000);
    }
  }
  tick();
})();
