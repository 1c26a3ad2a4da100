// The portal's pages. Each renders into `main` from the REST API, with a loading state, an
// honest empty state and the server's own error message when a call fails.

import { ApiError, call, download } from "./api.js";
import { dailyChart, fillDays } from "./chart.js";
import {
  announce, confirmAction, empty, errorBox, formatDate, formatNumber, formatSeconds, h, loading,
  show, table,
} from "./dom.js";

const WARN_DAYS = 7;
const EXPIRY_CHOICES = [1, 7, 30, 90, 180, 365];

function statusBadge(status) {
  return h("span", { class: `status status-${status}` }, status);
}

function labelsText(labels) {
  const entries = Object.entries(labels || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "—";
}

function expiryCell(key) {
  if (!key.expiresAt) return "never";
  const left = (new Date(key.expiresAt).getTime() - Date.now()) / 86400000;
  const text = formatDate(key.expiresAt);
  if (key.status === "active" && left <= WARN_DAYS) {
    const days = Math.max(0, Math.ceil(left));
    return h("span", {}, text, " ", h("span", { class: "warn", "data-expiry-warning": "" }, `expires in ${days} day${days === 1 ? "" : "s"}`));
  }
  return text;
}

function parseLabels(text) {
  const labels = {};
  for (const line of text.split(/[\n,]/)) {
    const trimmed = line.trim();
    if (!trimmed) continue;
    const at = trimmed.indexOf("=");
    if (at <= 0) throw new Error(`label "${trimmed}" is not key=value`);
    labels[trimmed.slice(0, at).trim()] = trimmed.slice(at + 1).trim();
  }
  return labels;
}

function keysQuery(filters) {
  const query = { filters: { }, sort: { by: "created_at", order: "desc" }, pagination: { limit: 100, offset: 0 } };
  if (filters.status && filters.status !== "all") query.filters.status = [filters.status];
  if (filters.username) query.filters.username = filters.username;
  if (filters.subscription) query.filters.subscription = filters.subscription;
  return query;
}

// ---------------------------------------------------------------- My keys

export async function keysPage(main, session) {
  const listArea = h("div", { id: "keys-list" });
  const secretArea = h("div", { id: "new-key-area" });
  const statusFilter = h("select", { id: "key-status-filter", onchange: () => refresh() },
    h("option", { value: "active" }, "Active"),
    h("option", { value: "all" }, "All"),
    h("option", { value: "expired" }, "Expired"),
    h("option", { value: "revoked" }, "Revoked"));
  const revokeAll = h("button", { type: "button", class: "danger", id: "revoke-all", onclick: () => revokeAllKeys() }, "Revoke all my keys");

  const createArea = h("div", {}, loading("Loading subscriptions…"));
  show(main,
    h("h1", {}, "My keys"),
    secretArea,
    createArea,
    h("section", { "aria-labelledby": "keys-title" },
      h("h2", { id: "keys-title" }, "Your API keys"),
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "key-status-filter" }, "Show"), statusFilter),
        h("div", {}, revokeAll)),
      listArea));

  async function refresh() {
    show(listArea, loading("Loading your keys…"));
    try {
      const page = await call("v1/api-keys/search", { method: "POST", body: keysQuery({ status: statusFilter.value, username: session.username }) });
      if (!page.data.length) {
        show(listArea, empty(statusFilter.value === "active" ? "You have no active keys yet. Create one above." : "No keys match this filter."));
        return;
      }
      show(listArea, table("Your keys, newest first",
        ["Name", "ID", "Status", "Subscription", "Labels", "Created", "Last used", "Expires", ""],
        page.data.map((key) => [
          h("span", { "data-key-name": key.name }, key.name),
          h("code", { title: key.id }, key.id.slice(0, 8)),
          statusBadge(key.status),
          key.subscription,
          labelsText(key.labels),
          formatDate(key.createdAt),
          key.lastUsedAt ? formatDate(key.lastUsedAt) : "never",
          expiryCell(key),
          key.status === "active"
            ? h("button", { type: "button", class: "danger small", "data-revoke": key.id, "aria-label": `Revoke ${key.name}`, onclick: () => revokeOne(key) }, "Revoke")
            : "",
        ]), { id: "keys-table" }),
      page.has_more ? h("p", { class: "hint" }, "Showing the newest 100 keys.") : null);
    } catch (error) {
      show(listArea, errorBox(error, "Could not load your keys"));
    }
  }

  async function revokeOne(key) {
    const sure = await confirmAction("Revoke this key?", `“${key.name}” stops working at once for every application using it. This cannot be undone.`, "Revoke key");
    if (!sure) return;
    try {
      await call(`v1/api-keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      announce(`Key ${key.name} revoked.`);
      await refresh();
    } catch (error) {
      show(listArea, errorBox(error, "Could not revoke the key"));
    }
  }

  async function revokeAllKeys() {
    try {
      revokeAll.disabled = true;
      const dry = await call("v1/api-keys/bulk-revoke", { method: "POST", body: { dryRun: true } });
      if (!dry.revokedCount) {
        announce("You have no active keys to revoke.");
        return;
      }
      const sure = await confirmAction("Revoke all your keys?", `${dry.revokedCount} active key(s) stop working at once. This cannot be undone.`, `Revoke ${dry.revokedCount} key(s)`);
      if (!sure) return;
      const done = await call("v1/api-keys/bulk-revoke", { method: "POST", body: {} });
      announce(done.message);
      await refresh();
    } catch (error) {
      show(listArea, errorBox(error, "Could not revoke your keys"));
    } finally {
      revokeAll.disabled = false;
    }
  }

  refresh();
  try {
    if (session.credential === "apiKey") {
      show(createArea, h("p", { class: "notice" }, "You signed in with an API key: it can list keys but not create them. Sign in with your token to create keys."));
    } else {
      const [subscriptions, config, models] = await Promise.all([
        call("v1/subscriptions"), call("v1/api-keys/config"), call("v1/models"),
      ]);
      show(createArea, createForm(subscriptions, config, models, secretArea, refresh));
    }
  } catch (error) {
    show(createArea, errorBox(error, "Cannot offer key creation"));
  }
}

function createForm(subscriptions, config, models, secretArea, refresh) {
  const sorted = [...subscriptions].sort((a, b) => b.priority - a.priority);
  const max = config.max_expiration_days;
  const choices = EXPIRY_CHOICES.filter((days) => days < max).concat([max]);
  const name = h("input", { id: "key-name", name: "name", required: true, maxlength: 128, autocomplete: "off" });
  const description = h("input", { id: "key-description", name: "description", maxlength: 1024, autocomplete: "off" });
  const subscription = h("select", { id: "key-subscription", name: "subscription" },
    sorted.map((s) => h("option", { value: s.subscription_id_header }, `${s.display_name || s.name} (priority ${s.priority}, ${s.tier})`)));
  const expiry = h("select", { id: "key-expiry", name: "expiry" },
    choices.map((days) => h("option", { value: `${days}d`, selected: days === Math.min(30, max) }, days === max ? `${days} days (the maximum)` : `${days} day${days === 1 ? "" : "s"}`)));
  const labels = h("textarea", { id: "key-labels", name: "labels", "aria-describedby": "labels-hint", rows: 2 });
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", id: "create-key" }, "Create key");
  if (!sorted.length) {
    return h("section", { class: "panel" }, h("h2", {}, "Create a key"),
      h("p", { class: "empty" }, "No subscription grants you any model yet, so you cannot create a key. Ask your platform administrator for access."));
  }
  return h("form", { class: "panel", id: "create-key-form", "aria-labelledby": "create-title", onsubmit: async (event) => {
    event.preventDefault();
    let body;
    try {
      body = {
        name: name.value.trim(), expiresIn: expiry.value, subscription: subscription.value,
        labels: parseLabels(labels.value),
      };
      if (description.value.trim()) body.description = description.value.trim();
    } catch (error) {
      show(status, h("p", { class: "error", role: "alert" }, error.message));
      return;
    }
    submit.disabled = true;
    show(status, loading("Creating the key…"));
    try {
      const created = await call("v1/api-keys", { method: "POST", body });
      show(status);
      event.target.reset();
      const chosen = sorted.find((s) => s.subscription_id_header === created.subscription || `${s.namespace}/${s.name}` === created.subscription) || sorted[0];
      show(secretArea, secretPanel(created, chosen, models, secretArea));
      document.getElementById("new-key-title").focus();
      announce(`Key ${created.name} created. Copy it now: it is shown only once.`);
      refresh();
    } catch (error) {
      show(status, h("p", { class: "error", role: "alert" }, `Could not create the key: ${error.message}`));
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", { id: "create-title" }, "Create a key"),
  h("div", { class: "row" },
    h("div", {}, h("label", { for: "key-name" }, "Name"), name),
    h("div", {}, h("label", { for: "key-description" }, "Description (optional)"), description)),
  h("div", { class: "row" },
    h("div", {}, h("label", { for: "key-subscription" }, "Subscription"), subscription),
    h("div", {}, h("label", { for: "key-expiry" }, "Expires after"), expiry)),
  h("label", { for: "key-labels" }, "Labels (optional)"),
  h("p", { class: "hint", id: "labels-hint" }, "key=value, one per line or comma-separated, e.g. team=search. They cannot be changed later."),
  labels,
  h("div", { class: "actions" }, submit),
  status);
}

/** The freshly minted key: shown once, with ready-to-paste snippets; gone when dismissed. */
function secretPanel(created, subscription, models, area) {
  const granted = new Set((subscription ? subscription.model_refs : []).map((ref) => ref.name));
  const model = models.data.find((m) => granted.has(m.id) || granted.has(m.id.split("/").pop())) || models.data[0];
  const curl = model
    ? `curl ${model.url}/v1/chat/completions \\\n  -H "Authorization: Bearer ${created.key}" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${model.id}", "messages": [{"role": "user", "content": "Hello!"}]}'`
    : null;
  const python = model
    ? `from openai import OpenAI\n\nclient = OpenAI(base_url="${model.url}/v1", api_key="${created.key}")\nreply = client.chat.completions.create(\n    model="${model.id}",\n    messages=[{"role": "user", "content": "Hello!"}],\n)\nprint(reply.choices[0].message.content)`
    : null;
  const copyStatus = h("span", { "aria-live": "polite", id: "copy-status" });
  const copy = (text, what) => async () => {
    try {
      await navigator.clipboard.writeText(text);
      copyStatus.textContent = `${what} copied.`;
    } catch {
      copyStatus.textContent = `Copying is blocked here: select the ${what.toLowerCase()} and copy it by hand.`;
    }
  };
  return h("section", { class: "panel secret", id: "new-key", "aria-labelledby": "new-key-title" },
    h("h2", { id: "new-key-title", tabindex: "-1" }, `Your new key “${created.name}”`),
    h("p", {}, h("strong", {}, "Copy it now: it is shown only this once."), " The server keeps only its hash."),
    h("p", {}, h("code", { class: "key", id: "new-key-value" }, created.key)),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "copy-key", onclick: copy(created.key, "Key") }, "Copy key"),
      copyStatus),
    h("p", { class: "hint" }, `Subscription ${created.subscription}; expires ${formatDate(created.expiresAt)}.`),
    model ? [
      h("h3", {}, `Call ${model.name || model.id} with curl`),
      h("pre", { id: "snippet-curl" }, curl),
      h("button", { type: "button", class: "secondary small", onclick: copy(curl, "curl command") }, "Copy curl command"),
      h("h3", {}, "With the OpenAI Python SDK"),
      h("pre", { id: "snippet-python" }, python),
      h("button", { type: "button", class: "secondary small", onclick: copy(python, "Python snippet") }, "Copy Python snippet"),
    ] : h("p", { class: "empty" }, "No model is listed for you yet, so there is no example call."),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "dismiss-key", onclick: () => show(area) }, "I have stored the key")));
}

// ---------------------------------------------------------------- Subscriptions and models

export async function subscriptionsPage(main) {
  show(main, h("h1", {}, "Subscriptions and models"), loading("Loading your subscriptions…"));
  try {
    const [subscriptions, models] = await Promise.all([call("v1/subscriptions"), call("v1/models")]);
    const sorted = [...subscriptions].sort((a, b) => b.priority - a.priority);
    show(main,
      h("h1", {}, "Subscriptions and models"),
      h("h2", {}, "Your subscriptions"),
      sorted.length
        ? h("div", { class: "cards", id: "subscriptions" }, sorted.map((s) => h("article", { class: "card", "data-subscription": s.subscription_id_header },
          h("h3", {}, s.display_name || s.name),
          h("p", { class: "hint" }, `${s.namespace}/${s.name} · tier ${s.tier} · priority ${s.priority}`),
          s.subscription_description ? h("p", {}, s.subscription_description) : null,
          s.cost_center || s.organization_id ? h("p", { class: "hint" }, `Cost center ${s.cost_center || "—"}, organization ${s.organization_id || "—"}`) : null,
          table("Models it grants", ["Model", "Token limits"], s.model_refs.map((ref) => [
            ref.display_name || `${ref.namespace}/${ref.name}`,
            ref.token_rate_limits.length ? ref.token_rate_limits.map((l) => `${formatNumber(l.limit)} per ${l.window}`).join(", ") : "no token limit",
          ])))))
        : empty("No subscription grants you access yet. Ask your platform administrator."),
      h("h2", {}, "Models you can call"),
      models.data.length
        ? table("Models and their base URLs", ["Model (send as model)", "Name", "Tier", "Base URL"],
          models.data.map((m) => [h("code", {}, m.id), m.name, m.tier, h("code", {}, m.url)]), { id: "models-table" })
        : empty("No models are available to you."));
  } catch (error) {
    show(main, h("h1", {}, "Subscriptions and models"), errorBox(error, "Could not load your subscriptions"));
  }
}

// ---------------------------------------------------------------- Limits now

function windowRow(kind, w) {
  const share = w.limit ? Math.min(1, w.used / w.limit) : 0;
  const full = w.remaining === 0 || w.remaining === "0" || w.remaining === "0.00";
  const fill = h("span", { "data-share": share });
  // CSSOM, not a style attribute: the CSP allows no inline styles.
  fill.style.width = `${Math.round(share * 100)}%`;
  return [
    kind, w.window,
    h("span", { "data-used": w.used }, kind === "spend" ? w.used : formatNumber(w.used)),
    kind === "spend" ? w.limit : formatNumber(w.limit),
    h("span", { "data-remaining": w.remaining }, kind === "spend" ? w.remaining : formatNumber(w.remaining)),
    h("div", { class: full ? "bar full" : "bar", role: "img", "aria-label": `${Math.round(share * 100)}% used` },
      fill),
    formatSeconds(w.resetSeconds),
  ];
}

function limitReason(entry) {
  const exhausted = [];
  for (const w of entry.requests) if (w.remaining === 0) exhausted.push(`the request limit of ${w.limit} per ${w.window} (rate_limit_exceeded), for ${formatSeconds(w.resetSeconds)} more`);
  for (const w of entry.tokens) if (w.remaining === 0) exhausted.push(`the token limit of ${w.limit} per ${w.window} (token_limit_exceeded), for ${formatSeconds(w.resetSeconds)} more`);
  for (const w of entry.spend || []) if (Number(w.remaining) <= 0) exhausted.push(`the spend limit of ${w.limit} per ${w.window} (spend_limit_exceeded), for ${formatSeconds(w.resetSeconds)} more`);
  return exhausted;
}

export async function limitsPage(main) {
  show(main, h("h1", {}, "Limits now"), loading("Reading your counters…"));
  try {
    const usage = await call("v1/usage");
    const history = await recentRateLimits();
    const entries = usage.data;
    show(main,
      h("h1", {}, "Limits now"),
      h("p", { class: "hint" }, "Each window counts from its start; when a window is used up, requests get HTTP 429 until it resets."),
      h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", id: "limits-refresh", onclick: () => limitsPage(main) }, "Refresh")),
      history,
      entries.length
        ? entries.map((entry) => {
          const reasons = limitReason(entry);
          const rows = [
            ...entry.requests.map((w) => windowRow("requests", w)),
            ...entry.tokens.map((w) => windowRow("tokens", w)),
            ...(entry.spend || []).map((w) => windowRow("spend", w)),
          ];
          return h("section", { class: "panel", "data-limits": `${entry.subscription} ${entry.model}` },
            h("h2", {}, `${entry.model}`),
            h("p", { class: "hint" }, `Subscription ${entry.subscription}, tier ${entry.tier}`),
            reasons.length ? h("p", { class: "error", role: "alert" }, `Requests are refused now (429): over ${reasons.join("; ")}.`) : null,
            rows.length
              ? table(`Windows for ${entry.model}`, ["Counts", "Window", "Used", "Limit", "Remaining", "Share used", "Resets in"], rows, { numeric: [2, 3, 4] })
              : empty("No limits apply to this model."));
        })
        : empty("No subscription grants you a model, so no limits apply."));
  } catch (error) {
    show(main, h("h1", {}, "Limits now"), errorBox(error, "Could not read your limits"));
  }
}

/** The last hour with refused (429) requests in the past day, from the usage report. */
async function recentRateLimits() {
  const to = new Date();
  const from = new Date(to.getTime() - 86400000);
  try {
    const report = await call(`v1/usage/report?${new URLSearchParams({ from: from.toISOString().slice(0, 19) + "Z", to: new Date(to.getTime() + 3600000).toISOString().slice(0, 19) + "Z", groupBy: "hour,model" })}`);
    const limited = report.data.filter((row) => Number(row.rateLimited) > 0).sort((a, b) => (a.hour < b.hour ? 1 : -1));
    if (!limited.length) return h("p", { class: "notice", id: "last-429" }, "No request was refused for a limit in the past 24 hours.");
    const last = limited[0];
    return h("p", { class: "notice", id: "last-429" }, `Last refusals (429): ${last.rateLimited} request(s) to ${last.model} in the hour from ${formatDate(last.hour)}.`);
  } catch (error) {
    if (error.status === 404) return h("p", { class: "hint", id: "last-429" }, "This server keeps no usage history, so past refusals are not shown.");
    return errorBox(error, "Could not read recent refusals");
  }
}

// ---------------------------------------------------------------- Usage

function isoDay(date) { return date.toISOString().slice(0, 10); }

function reportPath(params) {
  return `v1/usage/report?${new URLSearchParams(params)}`;
}

function metricCells(row, currency) {
  return [formatNumber(row.requests), formatNumber(row.rateLimited), formatNumber(row.promptTokens),
    formatNumber(row.completionTokens), formatNumber(row.totalTokens), `${row.cost} ${currency}`];
}

const METRIC_HEADERS = ["Requests", "Refused (429)", "Prompt tokens", "Completion tokens", "Total tokens", "Cost"];

export async function usagePage(main, session, extra = {}) {
  const today = new Date();
  const from = h("input", { type: "date", id: "usage-from", value: extra.from || isoDay(new Date(today.getTime() - 29 * 86400000)) });
  const to = h("input", { type: "date", id: "usage-to", value: extra.to || isoDay(today) });
  const results = h("div", { id: "usage-results" });
  const exportArea = h("span", { id: "csv-area", "aria-live": "polite" });
  const form = h("form", { class: "panel", id: "usage-form", onsubmit: (event) => { event.preventDefault(); load(); } },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "usage-from" }, "From (UTC day)"), from),
      h("div", {}, h("label", { for: "usage-to" }, "To (UTC day, included)"), to),
      h("div", {}, h("button", { type: "submit", id: "usage-apply" }, "Show"))),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", id: "csv-export", onclick: () => exportCsv() }, "Export CSV"),
      exportArea));
  show(main, h("h1", {}, "Usage"), form, results);

  function range() {
    const end = new Date(`${to.value}T00:00:00Z`);
    return { from: from.value, to: isoDay(new Date(end.getTime() + 86400000)) };
  }

  async function exportCsv() {
    show(exportArea, h("span", { class: "loading" }, "Preparing the CSV…"));
    try {
      const { from: f, to: t } = range();
      const blob = await download(reportPath({ from: f, to: t, groupBy: "day,model,key", format: "csv" }));
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: `usage-${f}-to-${t}.csv`, id: "csv-download", "data-bytes": blob.size, "data-from": f, "data-to": t }, `Download usage-${f}-to-${t}.csv`);
      show(exportArea, link);
      link.click();
    } catch (error) {
      show(exportArea, errorBox(error, "Could not export"));
    }
  }

  async function load() {
    if (!from.value || !to.value || from.value > to.value) {
      show(results, h("p", { class: "error", role: "alert" }, "Pick a start day on or before the end day."));
      return;
    }
    const { from: f, to: t } = range();
    show(results, loading("Adding up your usage…"));
    try {
      const [byDay, byModel, byKey, keys] = await Promise.all([
        call(reportPath({ from: f, to: t, groupBy: "day" })),
        call(reportPath({ from: f, to: t, groupBy: "model" })),
        call(reportPath({ from: f, to: t, groupBy: "key" })),
        call("v1/api-keys/search", { method: "POST", body: { filters: { status: ["active", "revoked", "expired"], username: session.username }, pagination: { limit: 100 } } }).catch(() => ({ data: [] })),
      ]);
      const names = new Map(keys.data.map((key) => [key.id, key.name]));
      const currency = byDay.currency || "USD";
      const totals = byDay.totals || {};
      const days = fillDays(byDay.data, f, t);
      show(results,
        h("section", { "aria-labelledby": "totals-title" },
          h("h2", { id: "totals-title" }, `Totals ${f} to ${to.value}`),
          h("div", { class: "totals", id: "usage-totals" },
            h("div", {}, "Requests", h("strong", { id: "total-requests" }, formatNumber(totals.requests))),
            h("div", {}, "Tokens", h("strong", { id: "total-tokens" }, formatNumber(totals.totalTokens))),
            h("div", {}, "Refused (429)", h("strong", {}, formatNumber(totals.rateLimited))),
            h("div", {}, "Spend", h("strong", { id: "total-cost" }, `${totals.cost || "0"} ${currency}`)))),
        h("h2", {}, "Per day"),
        byDay.data.length ? [
          h("div", { class: "legend" },
            h("span", {}, h("span", { class: "swatch swatch-tokens" }), "tokens (left axis)"),
            h("span", {}, h("span", { class: "swatch swatch-requests" }), "requests (right axis)")),
          dailyChart(days, `Tokens and requests per day, ${f} to ${to.value}`),
        ] : empty("No usage in this period yet. Calls made with your keys show here within a minute."),
        h("h2", {}, "By model"),
        byModel.data.length
          ? table("Usage by model", ["Model", ...METRIC_HEADERS], byModel.data.map((row) => [row.model, ...metricCells(row, currency)]), { id: "usage-by-model", numeric: [1, 2, 3, 4, 5, 6] })
          : empty("No usage by model in this period."),
        h("h2", {}, "By key"),
        byKey.data.length
          ? table("Usage by key", ["Key", ...METRIC_HEADERS], byKey.data.map((row) => [names.get(row.key) || h("code", {}, row.key || "—"), ...metricCells(row, currency)]), { id: "usage-by-key", numeric: [1, 2, 3, 4, 5, 6] })
          : empty("No usage by key in this period."));
    } catch (error) {
      if (error.status === 404) {
        show(results, h("p", { class: "notice" }, "This server keeps no usage history (no usage ledger), so there is nothing to chart. Your current limits are on the Limits now page."));
      } else {
        show(results, errorBox(error, "Could not load your usage"));
      }
    }
  }

  load();
}

// ---------------------------------------------------------------- Admin

export async function adminPage(main, session) {
  if (!session.admin) {
    show(main, h("h1", {}, "Admin"), h("p", { class: "error", role: "alert" }, "Only administrators can see this page."));
    return;
  }
  const user = h("input", { id: "admin-user", autocomplete: "off" });
  const subscription = h("input", { id: "admin-subscription", autocomplete: "off", placeholder: "namespace/name or name" });
  const status = h("select", { id: "admin-status" },
    h("option", { value: "active" }, "Active"), h("option", { value: "all" }, "All"),
    h("option", { value: "expired" }, "Expired"), h("option", { value: "revoked" }, "Revoked"));
  const list = h("div", { id: "admin-keys" });
  const bulkUser = h("input", { id: "bulk-user", autocomplete: "off" });
  const bulkSubscription = h("input", { id: "bulk-subscription", autocomplete: "off" });
  const bulkResult = h("div", { id: "bulk-result", "aria-live": "polite" });
  const bulkRun = h("button", { type: "button", class: "danger", id: "bulk-run", disabled: true }, "Revoke");
  const chargeback = h("div", { id: "chargeback" });
  let counted = null;

  const bulkScope = () => {
    const scope = {};
    if (bulkUser.value.trim()) scope.username = bulkUser.value.trim();
    if (bulkSubscription.value.trim()) scope.subscription = bulkSubscription.value.trim();
    return scope;
  };
  const resetCount = () => { counted = null; bulkRun.disabled = true; bulkRun.textContent = "Revoke"; };
  bulkUser.addEventListener("input", resetCount);
  bulkSubscription.addEventListener("input", resetCount);

  bulkRun.addEventListener("click", async () => {
    if (!counted) return;
    const scope = counted;
    const sure = await confirmAction("Revoke these keys?", `Every active key of ${describeScope(scope)} stops working at once. This cannot be undone.`, bulkRun.textContent);
    if (!sure) return;
    try {
      const done = await call("v1/api-keys/bulk-revoke", { method: "POST", body: scope });
      show(bulkResult, h("p", { class: "notice", id: "bulk-done" }, done.message));
      announce(done.message);
      resetCount();
      searchKeys();
    } catch (error) {
      show(bulkResult, errorBox(error, "Bulk revoke failed"));
    }
  });

  async function countBulk(event) {
    event.preventDefault();
    const scope = bulkScope();
    if (!scope.username && !scope.subscription) {
      show(bulkResult, h("p", { class: "error", role: "alert" }, "Name a user, a subscription or both."));
      return;
    }
    show(bulkResult, loading("Counting…"));
    try {
      const dry = await call("v1/api-keys/bulk-revoke", { method: "POST", body: { ...scope, dryRun: true } });
      counted = scope;
      show(bulkResult, h("p", { class: "notice", id: "bulk-count", "data-count": dry.revokedCount }, `Dry run: ${dry.revokedCount} active key(s) of ${describeScope(scope)} would be revoked.`));
      bulkRun.disabled = dry.revokedCount === 0;
      bulkRun.textContent = `Revoke ${dry.revokedCount} key(s)`;
    } catch (error) {
      resetCount();
      show(bulkResult, errorBox(error, "Could not count the keys"));
    }
  }

  async function searchKeys(event) {
    if (event) event.preventDefault();
    show(list, loading("Searching keys…"));
    try {
      const page = await call("v1/api-keys/search", { method: "POST", body: keysQuery({ status: status.value, username: user.value.trim(), subscription: subscription.value.trim() }) });
      show(list, page.data.length
        ? table("Keys, newest first", ["User", "Name", "ID", "Status", "Subscription", "Labels", "Created", "Last used", "Expires"],
          page.data.map((key) => [key.username, key.name, h("code", { title: key.id }, key.id.slice(0, 8)), statusBadge(key.status), key.subscription, labelsText(key.labels), formatDate(key.createdAt), key.lastUsedAt ? formatDate(key.lastUsedAt) : "never", expiryCell(key)]),
          { id: "admin-keys-table" })
        : empty("No keys match these filters."),
      page.has_more ? h("p", { class: "hint" }, "Showing the newest 100; narrow the filters to see others.") : null);
    } catch (error) {
      show(list, errorBox(error, "Could not search keys"));
    }
  }

  show(main,
    h("h1", {}, "Admin"),
    h("form", { class: "panel", id: "admin-filter", onsubmit: searchKeys, "aria-labelledby": "admin-keys-title" },
      h("h2", { id: "admin-keys-title" }, "Everyone's keys"),
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "admin-user" }, "User"), user),
        h("div", {}, h("label", { for: "admin-subscription" }, "Subscription"), subscription),
        h("div", {}, h("label", { for: "admin-status" }, "Status"), status),
        h("div", {}, h("button", { type: "submit", id: "admin-search" }, "Search")))),
    list,
    h("form", { class: "panel", id: "bulk-form", onsubmit: countBulk, "aria-labelledby": "bulk-title" },
      h("h2", { id: "bulk-title" }, "Bulk revoke"),
      h("p", { class: "hint" }, "Count first (a dry run changes nothing), then revoke exactly that scope."),
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "bulk-user" }, "User"), bulkUser),
        h("div", {}, h("label", { for: "bulk-subscription" }, "Subscription"), bulkSubscription)),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "secondary", id: "bulk-count-button" }, "Count keys (dry run)"), bulkRun),
      bulkResult),
    h("section", { "aria-labelledby": "chargeback-title" },
      h("h2", { id: "chargeback-title" }, "Usage by cost center and organization (last 30 days)"),
      chargeback));
  searchKeys();
  loadChargeback(chargeback);
}

function describeScope(scope) {
  const parts = [];
  if (scope.username) parts.push(`user ${scope.username}`);
  if (scope.subscription) parts.push(`subscription ${scope.subscription}`);
  return parts.join(" in ");
}

async function loadChargeback(area) {
  show(area, loading("Adding up usage…"));
  const to = new Date(Date.now() + 86400000);
  const range = { from: isoDay(new Date(to.getTime() - 31 * 86400000)), to: isoDay(to) };
  try {
    const [byCostCenter, byOrganization] = await Promise.all([
      call(reportPath({ ...range, groupBy: "costCenter" })),
      call(reportPath({ ...range, groupBy: "organizationId" })),
    ]);
    const currency = byCostCenter.currency || "USD";
    show(area,
      byCostCenter.data.length
        ? table("By cost center", ["Cost center", ...METRIC_HEADERS], byCostCenter.data.map((row) => [row.costCenter || "(none)", ...metricCells(row, currency)]), { id: "usage-by-cost-center", numeric: [1, 2, 3, 4, 5, 6] })
        : empty("No usage by cost center in the last 30 days."),
      byOrganization.data.length
        ? table("By organization", ["Organization", ...METRIC_HEADERS], byOrganization.data.map((row) => [row.organizationId || "(none)", ...metricCells(row, currency)]), { id: "usage-by-organization", numeric: [1, 2, 3, 4, 5, 6] })
        : empty("No usage by organization in the last 30 days.")
    );
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      show(area, h("p", { class: "notice" }, "This server keeps no usage history (no usage ledger)."));
    } else {
      show(area, errorBox(error, "Could not load usage"));
    }
  }
}
