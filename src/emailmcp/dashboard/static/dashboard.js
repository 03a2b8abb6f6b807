// Draws each .chart from its data-chart figures ({days, sent, failed}); the table beside it holds the same figures.
(function () {
  "use strict";

  function monthDay(ts) {
    return new Date(ts * 1000).toISOString().slice(5, 10);
  }

  function draw(element) {
    const data = JSON.parse(element.dataset.chart);
    const days = data.days.map((day) => Date.parse(day + "T00:00:00Z") / 1000);
    const width = Math.max(element.clientWidth, 280);
    const options = {
      width: width,
      height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
      axes: [
        { incrs: [86400, 7 * 86400, 28 * 86400], values: (u, splits) => splits.map(monthDay) },
        { label: "messages", values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? v : "")) },
      ],
      series: [
        {},
        { label: "Sent", stroke: "#1f7a3d", fill: "rgba(31, 122, 61, 0.12)", width: 2 },
        { label: "Failed", stroke: "#b3261e", fill: "rgba(179, 38, 30, 0.12)", width: 2 },
      ],
    };
    element.replaceChildren();
    const plot = new uPlot(options, [days, data.sent, data.failed], element);
    element.dataset.drawn = "true";
    return plot;
  }

  function drawAll() {
    document.querySelectorAll(".chart[data-chart]").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", drawAll);
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(drawAll, 200);
  });
})();
