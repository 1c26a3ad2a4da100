// Small DOM helpers: elements built with properties (never HTML strings, so data cannot
// inject markup), the confirmation dialog, announcements for screen readers, formatting.

/** `h("td", {class: "num"}, "12")`: an element with attributes/properties and children. */
export function h(tag, attributes = {}, ...children) {
  const svg = ["svg", "g", "rect", "line", "text", "title", "path", "polyline"].includes(tag);
  const element = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "value" && !svg) {
      element.value = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replaces `target`'s content. */
export function show(target, ...children) {
  target.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

export function loading(text = "Loading…") {
  return h("p", { class: "loading", role: "status" }, text);
}

export function errorBox(error, what) {
  return h("p", { class: "error", role: "alert" }, `${what}: ${error.message}`);
}

export function empty(text) {
  return h("p", { class: "empty" }, text);
}

/** Says `text` to screen readers (and tests) through the polite live region. */
export function announce(text) {
  const region = document.getElementById("announce");
  region.textContent = "";
  window.setTimeout(() => { region.textContent = text; }, 30);
}

/** Asks the user to confirm; resolves true only on the confirm button. */
export function confirmAction(title, text, confirmLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = confirmLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

export function formatDate(text) {
  if (!text) return "—";
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return text;
  return date.toISOString().replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC");
}

export function formatNumber(value) {
  const number = Number(value || 0);
  return number.toLocaleString("en-US");
}

export function formatSeconds(seconds) {
  const s = Number(seconds || 0);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** A table with a caption, header cells and rows of cells (strings or nodes). */
export function table(caption, headers, rows, { id, numeric = [] } = {}) {
  return h("div", { class: "table-wrap" },
    h("table", { id },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((name, i) =>
        h("th", { scope: "col", class: numeric.includes(i) ? "num" : undefined }, name)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell, i) =>
        h("td", { class: numeric.includes(i) ? "num" : undefined }, cell)))))));
}
