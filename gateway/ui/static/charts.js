// A small SVG chart helper for the dashboard: time-bucketed bars (stacked) and lines, with
// axes, a hover guide and a tooltip. No dependencies; every label goes in through textContent.

const NS = "http://www.w3.org/2000/svg";
const MARGIN = { top: 12, right: 14, bottom: 26, left: 48 };

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  if (parent) parent.append(node);
  return node;
}

export function compact(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${trim(value / 1e9)}B`;
  if (abs >= 1e6) return `${trim(value / 1e6)}M`;
  if (abs >= 1e3) return `${trim(value / 1e3)}k`;
  return trim(value);
}

function trim(value) {
  const abs = Math.abs(value);
  const digits = abs >= 100 || Number.isInteger(value) ? 0 : abs >= 10 ? 1 : 2;
  return value.toFixed(digits).replace(/\.0+$|(\.\d*?)0+$/, "$1");
}

// Axis labels for durations: round numbers read better without decimals ("2 s", "500 ms").
export function durationTick(ms) {
  if (ms === 0) return "0";
  if (ms < 1000) return `${trim(ms)} ms`;
  if (ms < 60000) return `${trim(ms / 1000)} s`;
  return `${trim(ms / 60000)} min`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60000)}m ${Math.round((ms % 60000) / 1000)}s`;
}

// A round step so that about `count` steps reach `max`: 1, 2 or 5 times a power of ten.
function niceScale(max, count = 4, integer = false) {
  if (!(max > 0)) max = 1;
  const raw = integer ? Math.max(1, max / count) : max / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const n = raw / magnitude;
  const step = (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 && !(integer && magnitude === 1) ? 2.5 : n <= 5 ? 5 : 10) * magnitude;
  const top = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(v);
  return { top, ticks };
}

export function timeLabel(t, span) {
  const d = new Date(t * 1000);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  if (span <= 86400 * 1.5) return hm;
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${hm}`;
}

// spec: { times: [unix s], bucket: s, kind: "bar" | "line", series: [{ name, color, values,
//         dash }], format: value -> text, tickFormat, integer: counts (whole ticks), empty: text,
//         label, height }
export function drawChart(container, spec) {
  container.replaceChildren();
  container.classList.add("chart-host");
  const width = Math.max(280, Math.floor(container.clientWidth || 600));
  const height = spec.height || 200;
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const n = spec.times.length;
  const format = spec.format || compact;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: `chart chart-${spec.kind}`,
    role: "img",
    "aria-label": spec.label || "",
  });
  container.append(root);

  const max = spec.kind === "bar" ? stackedMax(spec.series, n) : lineMax(spec.series);
  const { top, ticks } = niceScale(max, 4, spec.integer);
  const y = (v) => MARGIN.top + plotH - (v / top) * plotH;
  const slot = plotW / Math.max(1, n);
  const x = (i) => MARGIN.left + i * slot;

  const axes = svg("g", { class: "axes" }, root);
  for (const tick of ticks) {
    svg("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(tick), y2: y(tick), class: tick === 0 ? "baseline" : "grid" }, axes);
    const label = svg("text", { x: MARGIN.left - 8, y: y(tick), class: "tick y", "dominant-baseline": "middle", "text-anchor": "end" }, axes);
    label.textContent = (spec.tickFormat || format)(tick);
  }
  const span = n * (spec.bucket || 60);
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plotW / 90))));
  for (let i = 0; i < n; i += every) {
    const label = svg("text", { x: x(i) + slot / 2, y: height - 8, class: "tick x", "text-anchor": "middle" }, axes);
    label.textContent = timeLabel(spec.times[i], span);
  }

  const drawn = spec.kind === "bar" ? drawBars(root, spec.series, n, x, y, slot) : drawLines(root, spec.series, x, y, slot);
  if (!drawn) {
    const note = svg("text", { x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, class: "empty-note", "text-anchor": "middle" }, root);
    note.textContent = spec.empty || "No data in this range";
    return;
  }
  hover(container, root, spec, { x, slot, height, n, format, span });
}

function stackedMax(series, n) {
  let max = 0;
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (const s of series) sum += s.values[i] || 0;
    max = Math.max(max, sum);
  }
  return max;
}

function lineMax(series) {
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  return max;
}

function drawBars(root, series, n, x, y, slot) {
  const group = svg("g", { class: "bars" }, root);
  const barW = Math.max(1, Math.min(slot * 0.72, 28));
  let drawn = false;
  for (let i = 0; i < n; i++) {
    let base = 0;
    for (const s of series) {
      const v = s.values[i] || 0;
      if (v <= 0) continue;
      const top = y(base + v);
      const h = Math.max(1, y(base) - top);
      svg("rect", { x: x(i) + (slot - barW) / 2, y: top, width: barW, height: h, rx: Math.min(2, barW / 4), fill: s.color, class: "bar" }, group);
      base += v;
      drawn = true;
    }
  }
  return drawn;
}

function drawLines(root, series, x, y, slot) {
  const group = svg("g", { class: "lines" }, root);
  let drawn = false;
  // Dashed (secondary) lines first, so solid ones and their points stay on top.
  for (const s of [...series.filter((s) => s.dash), ...series.filter((s) => !s.dash)]) {
    let d = "";
    let previous = null;
    const dots = [];
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        previous = null;
        return;
      }
      const px = x(i) + slot / 2;
      const py = y(v);
      d += `${previous === null ? "M" : "L"}${px.toFixed(1)},${py.toFixed(1)}`;
      const next = s.values[i + 1];
      dots.push([px, py, previous === null && (next === null || next === undefined)]);
      previous = v;
    });
    if (!d) continue;
    drawn = true;
    svg("path", { d, fill: "none", stroke: s.color, "stroke-width": s.dash ? 1.5 : 2.2, "stroke-dasharray": s.dash ? "5 4" : null, "stroke-linejoin": "round", "stroke-linecap": "round", class: s.dash ? "line dashed" : "line" }, group);
    // Points mark sparse series; in a dense one only lone points (invisible as a path) get one.
    const sparse = dots.length <= 24;
    for (const [px, py, alone] of dots) {
      if (!sparse && !alone) continue;
      svg("circle", { cx: px, cy: py, r: s.dash ? 2 : 2.6, fill: s.dash ? null : s.color, stroke: s.color, "stroke-width": 1.4, class: s.dash ? "point hollow" : "point" }, group);
    }
  }
  return drawn;
}

function hover(container, root, spec, geometry) {
  const { x, slot, height, n, format, span } = geometry;
  const guide = svg("line", { y1: MARGIN.top, y2: height - MARGIN.bottom, class: "guide", visibility: "hidden" }, root);
  const overlay = svg("rect", { x: MARGIN.left, y: MARGIN.top, width: slot * n, height: height - MARGIN.top - MARGIN.bottom, fill: "transparent" }, root);
  const tip = el("div", { class: "chart-tip", hidden: true });
  container.append(tip);
  overlay.addEventListener("mousemove", (event) => {
    const box = root.getBoundingClientRect();
    const scale = box.width / root.viewBox.baseVal.width;
    const px = (event.clientX - box.left) / scale;
    const i = Math.min(n - 1, Math.max(0, Math.floor((px - MARGIN.left) / slot)));
    const cx = x(i) + slot / 2;
    guide.setAttribute("x1", cx);
    guide.setAttribute("x2", cx);
    guide.setAttribute("visibility", "visible");
    const rows = spec.series
      .filter((s) => s.values[i] !== null && s.values[i] !== undefined && (spec.kind !== "bar" || s.values[i] > 0))
      .map((s) =>
        el("div", { class: "tip-row" }, el("span", { class: `swatch${s.dash ? " dashed" : ""}`, style: null, "data-color": s.color }), el("span", { class: "tip-name", text: s.name }), el("span", { class: "tip-value", text: format(s.values[i]) })),
      );
    tip.replaceChildren(el("div", { class: "tip-time", text: timeLabel(spec.times[i], span) }), ...(rows.length ? rows : [el("div", { class: "tip-none", text: "nothing" })]));
    for (const swatch of tip.querySelectorAll(".swatch")) paintSwatch(swatch, swatch.dataset.color, swatch.classList.contains("dashed"));
    tip.hidden = false;
    const left = cx * scale + 12;
    tip.style.left = `${Math.min(left, box.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${MARGIN.top}px`;
  });
  overlay.addEventListener("mouseleave", () => {
    guide.setAttribute("visibility", "hidden");
    tip.hidden = true;
  });
}

function paintSwatch(swatch, color, dashed) {
  swatch.style.background = dashed ? "transparent" : color;
  swatch.style.borderColor = color;
}

export function drawLegend(container, items) {
  container.replaceChildren(
    ...items.map((item) => {
      const swatch = el("span", { class: `swatch${item.dash ? " dashed" : ""}` });
      paintSwatch(swatch, item.color, item.dash);
      return el("span", { class: "legend-item" }, swatch, el("span", { text: item.name }));
    }),
  );
}
