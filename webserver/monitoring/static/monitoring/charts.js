/*
 * FedotaCharts: the training dashboard's loss and accuracy charts, drawn by plotly.js (served
 * from the installed plotly package as plotly/plotly.min.js: no CDN, works offline).
 *
 *   FedotaCharts.draw({ loss: element, acc: element }, runs, revision);
 *   runs: [{ number, current, rounds: [{ round, attempt, train_loss, eval_loss, eval_acc }] }]
 *
 * The shown run first, then the runs overlaid to compare. Every series on the page has its own
 * colour and legend entry; a compared run's lines are also dashed differently, and the legend
 * groups each run's series under its number. A click on a legend entry hides or shows that one
 * series. The loss axis fits the data; the accuracy axis is [0, 1], where accuracy lives, so a dip
 * from 0.99 to 0.98 does not look like a crash (drag to zoom, double-click to go back). Hovering
 * shows the round and every series' value. Where the shown run's coordinator was restarted, a
 * vertical line says "resumed (attempt N)". Redrawing with the same `revision` keeps what the user
 * did (zoom, pan, hidden series): plotly's uirevision.
 */
(function (global) {
  "use strict";

  // Distinct colours in the order series get them: the shown run's train loss, eval loss and
  // accuracy take the first three, each compared run the next three.
  const PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f", "#393b79", "#e6550d", "#637939", "#843c39", "#7b4173", "#3182bd", "#a55194", "#31a354",
    "#756bb1", "#636363", "#b5cf6b", "#ce6dbd", "#6baed6", "#fd8d3c",
  ];
  const DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"];
  const METRICS = [
    { key: "train_loss", label: "train loss", chart: "loss" },
    { key: "eval_loss", label: "eval loss", chart: "loss" },
    { key: "eval_acc", label: "eval accuracy", chart: "acc" },
  ];
  const MAX_POINTS = 2000; // per series; plotly draws SVG, and more cannot be told apart at a chart's width
  const MARKERS_UP_TO = 60; // points are dotted while few enough to see one by one
  const RESUMED = "#92400e";
  const FONT = { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12, color: "#1d2330" };

  // At most `max` rounds, evenly spread, the first and the last always among them.
  function downsample(rounds, max) {
    if (rounds.length <= max) return rounds;
    const step = (rounds.length - 1) / (max - 1);
    const out = [];
    for (let i = 0; i < max; i++) out.push(rounds[Math.round(i * step)]);
    return out;
  }

  // How a run's attempts are drawn. A resumed attempt continues the line where the one before
  // stopped (round numbers go on), so a resumed run is one curve; an attempt that could not resume
  // counts from round 1 again and starts the line anew. Either way the rounds an attempt did again
  // leave the line, which is always the latest attempt's view of the run. They are drawn as one
  // lighter "earlier attempts" series, broken between attempts, so the chart never zig-zags back to
  // round 1 and nothing reported is hidden. Each attempt after the first gets a marker where it began.
  function attemptLines(rounds) {
    const byAttempt = new Map();
    for (const r of rounds) {
      const a = r.attempt || 1;
      if (!byAttempt.has(a)) byAttempt.set(a, []);
      byAttempt.get(a).push(r);
    }
    let line = [];
    const earlier = []; // segments of rounds a later attempt did again
    const markers = [];
    for (const [attempt, own] of [...byAttempt.entries()].sort((a, b) => a[0] - b[0])) {
      own.sort((a, b) => a.round - b.round);
      const first = own[0].round;
      const redone = line.filter((r) => r.round >= first);
      if (redone.length) earlier.push(redone);
      line = line.filter((r) => r.round < first).concat(own);
      if (attempt > 1) markers.push({ x: first, attempt, resumed: first > 1 });
    }
    return { line, earlier, markers };
  }

  // The rounds that have the metric (an app may evaluate every few rounds only): the line joins them.
  function xy(rounds, key) {
    const had = downsample(rounds.filter((r) => r[key] !== null && r[key] !== undefined), MAX_POINTS);
    return { x: had.map((r) => r.round), y: had.map((r) => r[key]) };
  }

  // Segments as one series, broken (a null point) between them.
  function segmentsXY(segments, key) {
    const x = [];
    const y = [];
    segments.forEach((seg, i) => {
      const part = xy(seg, key);
      if (i && part.x.length) {
        x.push(part.x[0]);
        y.push(null);
      }
      x.push(...part.x);
      y.push(...part.y);
    });
    return { x, y };
  }

  function trace(points, name, color, dash, faded) {
    return {
      type: "scatter",
      mode: points.x.length <= MARKERS_UP_TO ? "lines+markers" : "lines",
      x: points.x,
      y: points.y,
      name,
      line: { color, dash, width: faded ? 1.5 : 2 },
      marker: { color, size: 5 },
      opacity: faded ? 0.4 : 1,
      connectgaps: false,
      hovertemplate: "%{y:.4f}",
    };
  }

  // A vertical line with its label at the top where each later attempt of the shown run began.
  function markerShapes(markers) {
    const shapes = markers.map((m) => ({
      type: "line", xref: "x", yref: "paper", x0: m.x, x1: m.x, y0: 0, y1: 1,
      line: { color: RESUMED, width: 1.5, dash: "dot" },
    }));
    const annotations = markers.map((m, i) => ({
      // Inside the plot at its top, right of the line; close-together restarts alternate between two rows.
      x: m.x, xref: "x", y: 1, yref: "paper", yanchor: "top", xanchor: "left", xshift: 2,
      yshift: -2 - 16 * (i % 2),
      text: `${m.resumed ? "resumed" : "restarted"} (attempt ${m.attempt})`,
      hovertext: m.resumed
        ? `The coordinator was restarted and resumed after round ${m.x - 1} from its checkpoint.`
        : "The coordinator was restarted and its app could not resume: training began again at round 1.",
      showarrow: false, font: { size: 11, color: RESUMED }, bgcolor: "rgba(255,255,255,0.6)",
    }));
    return { shapes, annotations };
  }

  function layout(yTitle, revision, fixedRange, markers, empty) {
    const { shapes, annotations } = markerShapes(markers);
    if (empty) {
      annotations.push({
        text: empty, xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
        font: { size: 13, color: "#9ca3af" },
      });
    }
    return {
      uirevision: revision,
      height: 360,
      margin: { l: 64, r: 24, t: 8, b: 48 },
      font: FONT,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
      hovermode: "x unified",
      showlegend: true,
      // Above the plot: below it, plotly would lay the legend over the x axis' title.
      legend: { orientation: "h", x: 0, xanchor: "left", y: 1.02, yanchor: "bottom", groupclick: "toggleitem" },
      xaxis: {
        title: { text: "round" }, zeroline: false, gridcolor: "#e5e7eb", unifiedhovertitle: { text: "round %{x}" },
      },
      yaxis: fixedRange
        ? { title: { text: yTitle }, range: fixedRange, autorange: false, zeroline: false, gridcolor: "#e5e7eb" }
        : { title: { text: yTitle }, autorange: true, zeroline: false, gridcolor: "#e5e7eb" },
      shapes,
      annotations,
    };
  }

  const CONFIG = {
    responsive: true,
    displaylogo: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d"],
    toImageButtonOptions: { format: "png", scale: 2 },
    showTips: false, // plotly's pop-up hints; the page says how to zoom and hide series
  };

  function draw(elements, runs, revision) {
    const Plotly = global.Plotly;
    if (!Plotly) return;
    const traces = { loss: [], acc: [] };
    let markers = [];
    const comparing = runs.length > 1;
    runs.forEach((run, i) => {
      const { line, earlier, markers: began } = attemptLines(run.rounds || []);
      // Where the shown run's coordinator was restarted; compared runs' restarts would crowd the chart.
      if (run.current) markers = began;
      const dash = DASHES[i % DASHES.length];
      METRICS.forEach((m, j) => {
        const color = PALETTE[(i * METRICS.length + j) % PALETTE.length];
        const name = comparing ? `run ${run.number} ${m.label}` : m.label;
        const series = [trace(xy(line, m.key), name, color, dash, false)];
        if (earlier.length) {
          series.push(trace(segmentsXY(earlier, m.key), `${name}, earlier attempts`, color, dash, true));
        }
        series.forEach((t, k) => {
          // Plotly keeps a series hidden from the legend across redraws by its uid.
          t.uid = `run${run.number}-${m.key}-${k ? "earlier" : "latest"}`;
          if (comparing) {
            // Each run's series together in the legend, under its number.
            t.legendgroup = `run ${run.number}`;
            t.legendgrouptitle = { text: `run ${run.number}${run.current ? " (shown)" : ""}` };
          }
        });
        // A metric the app does not report (no eval loss, say) gets no legend entry.
        traces[m.chart].push(...series.filter((t) => t.x.length));
      });
    });
    const any = runs.some((run) => (run.rounds || []).length);
    const empty = (list, what) => (list.length ? "" : any ? `no ${what} reported` : "no round finished yet");
    const lossLayout = layout("loss", revision, null, markers, empty(traces.loss, "loss"));
    const accLayout = layout("accuracy", revision, [0, 1], markers, empty(traces.acc, "accuracy"));
    Plotly.react(elements.loss, traces.loss, lossLayout, CONFIG);
    Plotly.react(elements.acc, traces.acc, accLayout, CONFIG);
  }

  global.FedotaCharts = { draw };
})(window);
