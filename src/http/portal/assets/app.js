// The portal's entry point: sign-in, the page router (#/keys, #/subscriptions, #/limits,
// #/usage, #/admin) and the header. Hash routing keeps every page in this one document, so the
// token held in memory survives moving between pages.

import { signOut } from "./api.js";
import { h, show } from "./dom.js";
import { adminPage, keysPage, limitsPage, subscriptionsPage, usagePage } from "./pages.js";
import { finishOidc, renderSignIn, trySession } from "./signin.js";

const PAGES = {
  keys: { title: "My keys", render: keysPage },
  subscriptions: { title: "Subscriptions and models", render: subscriptionsPage },
  limits: { title: "Limits now", render: limitsPage },
  usage: { title: "Usage", render: usagePage },
  admin: { title: "Admin", render: adminPage },
};

const main = document.getElementById("main");
let session = null;
let config = { oidc: null };

function pageName() {
  const name = window.location.hash.replace(/^#\/?/, "").split("?")[0];
  return PAGES[name] ? name : "keys";
}

function route() {
  if (!session) {
    renderSignIn(main, config, signedIn);
    return;
  }
  const name = pageName();
  if (name === "admin" && !session.admin) {
    window.location.hash = "#/keys";
    return;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${PAGES[name].title} · MaaS portal`;
  document.body.dataset.page = name;
  PAGES[name].render(main, session);
  main.focus({ preventScroll: true });
}

function signedIn(newSession) {
  session = newSession;
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-admin").hidden = !session.admin;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = `Signed in as ${session.username}${session.admin ? " (admin)" : ""}`;
  if (!window.location.hash || window.location.hash === "#/signin") window.location.hash = "#/keys";
  else route();
}

function signedOut(message) {
  signOut();
  session = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.body.dataset.page = "signin";
  renderSignIn(main, config, signedIn, message);
}

async function start() {
  window.addEventListener("hashchange", route);
  document.getElementById("sign-out").addEventListener("click", () => signedOut());
  try {
    const response = await fetch("config.json", { credentials: "omit", cache: "no-store" });
    if (response.ok) config = await response.json();
  } catch {
    config = { oidc: null };
  }
  try {
    const returned = await finishOidc();
    if (returned) {
      const result = await trySession(returned.token);
      if (result.error) {
        signedOut(result.error);
        return;
      }
      window.location.hash = returned.returnTo;
      signedIn(result.session);
      return;
    }
  } catch (error) {
    signedOut(`Single sign-on failed: ${error.message}`);
    return;
  }
  document.body.dataset.page = "signin";
  show(main);
  renderSignIn(main, config, signedIn);
}

start().catch((error) => show(main, h("p", { class: "error", role: "alert" }, `The portal failed to start: ${error.message}`)));
