/*
 * FedotaChart: a small SVG line chart for the training dashboard.
 *
 *   const chart = FedotaChart.line(element, {
 *     xLabel: "round", yLabel: "loss",
 *     yDomain: [0, 1],            // optional; otherwise fitted to the data
 *     yClamp: [0, 1],             // optional; a fitted domain never goes beyond it
 *     series: [{name: "eval loss", points: [[1, 0.7], [2, 0.5]], color: "#...", dashed: false,
 *               faded: false}],   // faded: drawn lighter, behind the others (e.g. superseded data)
 *     markers: [{x: 4, label: "resumed, attempt 2"}],  // optional vertical lines with a label
 *   });
 *   chart.update({...same options...});
 *
 * Axes with "nice" ticks, several series with a legend, a hover read-out of every
 * series at the nearest x, redrawn when the element changes size. Points with a
 * null y leave a gap. No dependencies; text goes in with textContent only.
 */
(function (global) {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
  const MARGIN = { top: 12, right: 16, bottom: 44, left: 66 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  // A step of 1, 2 or 5 times a power of ten giving about `count` intervals.
  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const unit = raw / power;
    return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
  }

  function ticks(lo, hi, count, integers) {
    let step = niceStep(hi - lo || 1, count);
    if (integers) step = Math.max(1, Math.round(step));
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  function format(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }

  function domain(values, fixed) {
    if (fixed) return fixed.slice();
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (!isFinite(lo)) return [0, 1];
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    const pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }

  class LineChart {
    constructor(container, options) {
      this.container = container;
      this.container.classList.add("fchart");
      this.frame = document.createElement("div");
      this.frame.className = "fchart-frame";
      this.legend = document.createElement("ul");
      this.legend.className = "fchart-legend";
      this.tip = document.createElement("div");
      this.tip.className = "fchart-tip";
      this.tip.hidden = true;
      this.container.replaceChildren(this.frame, this.legend);
      this.frame.appendChild(this.tip);
      this.options = options;
      if (global.ResizeObserver) {
        let last = 0;
        this.observer = new ResizeObserver(() => {
          const w = this.container.clientWidth;
          if (w !== last) { last = w; this.draw(); }
        });
        this.observer.observe(this.container);
      }
      this.draw();
    }

    update(options) {
      this.options = options;
      this.draw();
    }

    draw() {
      const o = this.options;
      const series = (o.series || []).map((s, i) => ({
        ...s,
        color: s.color || PALETTE[i % PALETTE.length],
        points: (s.points || []).filter((p) => p && isFinite(p[0])),
      }));
      const width = Math.max(240, this.container.clientWidth || 600);
      const height = o.height || 260;
      const w = width - MARGIN.left - MARGIN.right;
      const h = height - MARGIN.top - MARGIN.bottom;
      const markers = (o.markers || []).filter((m) => m && isFinite(m.x));
      const xs = series.flatMap((s) => s.points.map((p) => p[0])).concat(markers.map((m) => m.x));
      const ys = series.flatMap((s) => s.points.map((p) => p[1]).filter((y) => y !== null && isFinite(y)));
      const x0 = xs.length ? Math.min(...xs) : 0;
      let x1 = xs.length ? Math.max(...xs) : 1;
      if (x1 === x0) x1 = x0 + 1;
      let [y0, y1] = domain(ys, o.yDomain);
      if (o.yClamp && ys.every((y) => y >= o.yClamp[0] && y <= o.yClamp[1])) {
        y0 = Math.max(y0, o.yClamp[0]);
        y1 = Math.min(y1, o.yClamp[1]);
      }
      const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0 || 1)) * w;
      const sy = (y) => MARGIN.top + h - ((y - y0) / (y1 - y0 || 1)) * h;

      const svg = el("svg", {
        viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
        "aria-label": o.title || `${o.yLabel || "value"} by ${o.xLabel || "x"}`,
      });
      const axes = el("g", { class: "fchart-axes" }, svg);
      for (const t of ticks(y0, y1, 5, false)) {
        el("line", { x1: MARGIN.left, x2: MARGIN.left + w, y1: sy(t), y2: sy(t), class: "fchart-grid" }, axes);
        const label = el("text", { x: MARGIN.left - 6, y: sy(t), "text-anchor": "end", "dominant-baseline": "middle" }, axes);
        label.textContent = format(t);
      }
      for (const t of ticks(x0, x1, Math.min(8, Math.max(1, Math.floor(w / 60))), o.integerX !== false)) {
        el("line", { x1: sx(t), x2: sx(t), y1: MARGIN.top + h, y2: MARGIN.top + h + 5, class: "fchart-axis" }, axes);
        const label = el("text", { x: sx(t), y: MARGIN.top + h + 18, "text-anchor": "middle" }, axes);
        label.textContent = format(t);
      }
      el("line", { x1: MARGIN.left, x2: MARGIN.left + w, y1: MARGIN.top + h, y2: MARGIN.top + h, class: "fchart-axis" }, axes);
      el("line", { x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: MARGIN.top + h, class: "fchart-axis" }, axes);
      if (o.xLabel) {
        el("text", { x: MARGIN.left + w / 2, y: height - 6, "text-anchor": "middle", class: "fchart-label" }, axes).textContent = o.xLabel;
      }
      if (o.yLabel) {
        el("text", {
          x: 12, y: MARGIN.top + h / 2, "text-anchor": "middle", class: "fchart-label",
          transform: `rotate(-90 12 ${MARGIN.top + h / 2})`,
        }, axes).textContent = o.yLabel;
      }

      if (!ys.length) {
        el("text", { x: MARGIN.left + w / 2, y: MARGIN.top + h / 2, "text-anchor": "middle", class: "fchart-empty" }, svg)
          .textContent = o.empty || "no data yet";
      }

      // Faded series first, so the others are drawn over them.
      const order = series.filter((s) => s.faded).concat(series.filter((s) => !s.faded));
      for (const s of order) {
        const g = el("g", { class: "fchart-series" + (s.faded ? " faded" : "") }, svg);
        let d = "";
        let pen = false;
        for (const [x, y] of s.points) {
          if (y === null || !isFinite(y)) { pen = false; continue; }
          d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
          pen = true;
        }
        el("path", {
          d, fill: "none", stroke: s.color, "stroke-width": 2,
          "stroke-dasharray": s.dashed ? "6 4" : "none", "stroke-linejoin": "round",
        }, g);
        for (const [x, y] of s.points) {
          if (y === null || !isFinite(y)) continue;
          const dot = el("circle", { cx: sx(x), cy: sy(y), r: 3, fill: s.color }, g);
          el("title", {}, dot).textContent = `${s.name}, ${o.xLabel || "x"} ${x}: ${format(y)}`;
        }
      }

      // Markers over the series: a vertical line, its label at the top (stacked where several share an x).
      const layer = el("g", { class: "fchart-markers" }, svg);
      markers.forEach((m, i) => {
        const x = sx(m.x);
        el("line", { x1: x, x2: x, y1: MARGIN.top, y2: MARGIN.top + h, class: "fchart-marker" }, layer);
        const stacked = markers.slice(0, i).filter((other) => other.x === m.x).length;
        const right = x > MARGIN.left + w * 0.65; // near the right edge the label reads leftwards
        const label = el("text", {
          x: right ? x - 4 : x + 4, y: MARGIN.top + 10 + stacked * 14,
          "text-anchor": right ? "end" : "start", class: "fchart-marker-label",
        }, layer);
        label.textContent = String(m.label || "");
      });

      // Hover read-out: every series' value at the x nearest the pointer.
      const guide = el("line", { y1: MARGIN.top, y2: MARGIN.top + h, class: "fchart-guide", visibility: "hidden" }, svg);
      const allX = [...new Set(xs)].sort((a, b) => a - b);
      svg.addEventListener("mousemove", (ev) => {
        if (!allX.length) return;
        const box = svg.getBoundingClientRect();
        const px = ((ev.clientX - box.left) / box.width) * width;
        let best = allX[0];
        for (const x of allX) if (Math.abs(sx(x) - px) < Math.abs(sx(best) - px)) best = x;
        guide.setAttribute("x1", sx(best));
        guide.setAttribute("x2", sx(best));
        guide.setAttribute("visibility", "visible");
        const rows = [`${o.xLabel || "x"} ${best}`];
        for (const s of series) {
          const hit = s.points.find((p) => p[0] === best && p[1] !== null && isFinite(p[1]));
          if (hit) rows.push(`${s.name}: ${format(hit[1])}`);
        }
        this.tip.replaceChildren(...rows.map((r, i) => {
          const line = document.createElement(i ? "div" : "strong");
          line.textContent = r;
          return line;
        }));
        this.tip.hidden = false;
        const left = (sx(best) / width) * box.width;
        this.tip.style.left = `${Math.min(left + 12, box.width - 180)}px`;
        this.tip.style.top = `${MARGIN.top}px`;
      });
      svg.addEventListener("mouseleave", () => {
        guide.setAttribute("visibility", "hidden");
        this.tip.hidden = true;
      });

      const old = this.frame.querySelector("svg");
      if (old) old.replaceWith(svg); else this.frame.insertBefore(svg, this.tip);

      this.legend.replaceChildren(...series.map((s) => {
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "fchart-swatch" + (s.dashed ? " dashed" : "") + (s.faded ? " faded" : "");
        swatch.style.borderColor = s.color;
        item.append(swatch, document.createTextNode(s.name));
        return item;
      }));
    }
  }

  global.FedotaChart = {
    line: (container, options) => new LineChart(container, options),
    palette: PALETTE,
    format,
    niceStep,
    ticks,
  };
})(window);
