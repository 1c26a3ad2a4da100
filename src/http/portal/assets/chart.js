// Inline SVG bar chart of a daily series (tokens and requests side by side), drawn here so the
// portal needs no chart library and no inline styles.

import { h } from "./dom.js";

const WIDTH = 900;
const HEIGHT = 280;
const MARGIN = { top: 16, right: 56, bottom: 42, left: 64 };

/**
 * `days`: [{day: "YYYY-MM-DD", tokens, requests}], oldest first. Tokens use the left axis,
 * requests the right one (they differ by orders of magnitude).
 */
export function dailyChart(days, title) {
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const maxTokens = niceMax(Math.max(0, ...days.map((d) => d.tokens)));
  const maxRequests = niceMax(Math.max(0, ...days.map((d) => d.requests)));
  const slot = plotWidth / Math.max(days.length, 1);
  const barWidth = Math.max(1, Math.min(24, slot * 0.38));
  const y = (value, max) => MARGIN.top + plotHeight - (value / max) * plotHeight;
  const children = [h("title", {}, title)];
  for (let i = 0; i <= 4; i += 1) {
    const gy = MARGIN.top + (plotHeight * i) / 4;
    children.push(h("line", { class: "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: gy, y2: gy }));
    children.push(h("text", { x: MARGIN.left - 6, y: gy + 4, "text-anchor": "end" },
      compact(maxTokens * (1 - i / 4))));
    children.push(h("text", { x: WIDTH - MARGIN.right + 6, y: gy + 4, "text-anchor": "start" },
      compact(maxRequests * (1 - i / 4))));
  }
  children.push(h("line", { class: "axis", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: MARGIN.top + plotHeight, y2: MARGIN.top + plotHeight }));
  const labelEvery = Math.ceil(days.length / 12);
  days.forEach((day, i) => {
    const x = MARGIN.left + slot * i + slot / 2;
    const tokensTop = y(day.tokens, maxTokens);
    const requestsTop = y(day.requests, maxRequests);
    children.push(h("rect", {
      class: "bar-tokens", x: x - barWidth, y: tokensTop, width: barWidth,
      height: MARGIN.top + plotHeight - tokensTop, "data-day": day.day, "data-tokens": day.tokens,
    }, h("title", {}, `${day.day}: ${day.tokens} tokens`)));
    children.push(h("rect", {
      class: "bar-requests", x, y: requestsTop, width: barWidth,
      height: MARGIN.top + plotHeight - requestsTop, "data-day": day.day, "data-requests": day.requests,
    }, h("title", {}, `${day.day}: ${day.requests} requests`)));
    if (i % labelEvery === 0) {
      children.push(h("text", { x, y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, day.day.slice(5)));
    }
  });
  children.push(h("text", { x: 12, y: MARGIN.top + plotHeight / 2, transform: `rotate(-90 12 ${MARGIN.top + plotHeight / 2})`, "text-anchor": "middle" }, "tokens"));
  children.push(h("text", { x: WIDTH - 10, y: MARGIN.top + plotHeight / 2, transform: `rotate(90 ${WIDTH - 10} ${MARGIN.top + plotHeight / 2})`, "text-anchor": "middle" }, "requests"));
  return h("svg", {
    class: "chart", id: "usage-chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img",
    "aria-label": title, preserveAspectRatio: "xMidYMid meet",
  }, children);
}

/** Every day from `from` (inclusive) to `to` (exclusive), "YYYY-MM-DD", with zeroes filled in. */
export function fillDays(rows, from, to) {
  const byDay = new Map(rows.map((row) => [row.day, row]));
  const days = [];
  const end = new Date(`${to}T00:00:00Z`);
  for (let at = new Date(`${from}T00:00:00Z`); at < end; at = new Date(at.getTime() + 86400000)) {
    const day = at.toISOString().slice(0, 10);
    const row = byDay.get(day);
    days.push({ day, tokens: row ? Number(row.totalTokens) : 0, requests: row ? Number(row.requests) : 0 });
    if (days.length > 400) break;
  }
  return days;
}

/** A round axis maximum divisible into four whole-number steps (both series are counts). */
function niceMax(value) {
  if (value <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 4, 8, 10]) {
    if (value <= step * magnitude) return step * magnitude;
  }
  return 10 * magnitude;
}

function compact(value) {
  if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  return `${+value.toFixed(1)}`;
}
