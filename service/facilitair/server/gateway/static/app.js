// The page's entry point: the session (login when the server has keys), and the two views by URL:
// `/` the runs and the form, `/runs/{id}` one run. Links marked data-nav change the view without a reload.

import { ApiError, loadSession, logout, session } from "./api.js";
import { el, fill } from "./dom.js";
import { HomeView, loginView } from "./home.js";
import { RunView } from "./run.js";

const main = document.getElementById("main");
let view = null;

function route() {
  if (view) view.close();
  view = null;
  const match = /^\/runs\/([^/]+)\/?$/.exec(location.pathname);
  if (match) {
    const runId = decodeURIComponent(match[1]);
    document.title = `Run ${runId.slice(0, 8)} · Facilitair`;
    view = new RunView(main, runId);
  } else {
    document.title = "Facilitair";
    view = new HomeView(main, navigate);
  }
  view.open();
}

function navigate(path) {
  history.pushState(null, "", path);
  route();
  main.focus();
}

function showWho() {
  fill(document.getElementById("who"), session.principal && session.loginRequired ? session.principal : "");
  document.getElementById("logout").hidden = !(session.loginRequired && session.principal);
}

async function boot() {
  document.addEventListener("click", (e) => {
    const link = e.target instanceof Element ? e.target.closest("a[data-nav]") : null;
    if (!link || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    navigate(link.getAttribute("href"));
  });
  window.addEventListener("popstate", route);
  window.addEventListener("facilitair:login", () => {
    if (main.querySelector("form.login")) return; // already asking
    if (view) view.close();
    view = null;
    session.principal = "";
    showWho();
    loginView(main, () => {
      showWho();
      route();
    });
  });
  document.getElementById("logout").addEventListener("click", async () => {
    await logout().catch(() => {});
    location.assign("/");
  });
  try {
    if (!(await loadSession())) {
      loginView(main, () => {
        showWho();
        route();
      });
      return;
    }
  } catch (error) {
    fill(main, el("p", { class: "error", role: "alert" },
      `The server did not answer: ${error instanceof ApiError ? error.message : String(error)}`));
    return;
  }
  showWho();
  route();
}

boot();
