// The start page: the caller's runs, newest first, their states kept current, and the form that starts a run.

import { ApiError, call, login } from "./api.js";
import { FINISHED, agentName, el, fill, money, stateName, when } from "./dom.js";

// How often the list asks for the runs' states while it is shown (and the tab is visible).
const REFRESH_MS = 2000;
const PAGE_SIZE = 20;

export class HomeView {
  constructor(root, navigate) {
    this.root = root;
    this.navigate = navigate;
    this.pages = 1;
    this.rows = new Map(); // run id -> its row in the list
    this.timer = null;
    this.closed = false;
    this.build();
  }

  build() {
    this.task = el("textarea", { id: "task", name: "task", rows: 3, required: true,
      placeholder: "Write a function that reverses a string" });
    this.context = el("textarea", { id: "context", name: "context", rows: 2, spellcheck: "false",
      placeholder: '{"language": "python"}' });
    this.model = el("input", { id: "model", name: "model", list: "models", autocomplete: "off",
      placeholder: "the server's default" });
    this.models = el("datalist", { id: "models" });
    this.formError = el("div", { class: "error", role: "alert", hidden: true });
    this.submit = el("button", { type: "submit" }, "Start run");
    this.form = el("form", { class: "new-run", "aria-label": "Start a run" },
      el("h2", {}, "Start a run"),
      el("label", { for: "task" }, "Task ", el("span", { class: "muted" }, "(Ctrl+Enter starts the run)")), this.task,
      el("label", { for: "context" }, "Context (optional JSON object)"), this.context,
      el("label", { for: "model" }, "Model (optional, provider:model)"), this.model, this.models,
      this.formError, this.submit);
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.start();
    });
    // Enter writes a new line in the task; Ctrl+Enter (or Cmd+Enter) starts the run from the keyboard.
    this.form.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.list = el("ul", { class: "runs", "aria-live": "polite" });
    this.more = el("button", { type: "button", class: "more", hidden: true }, "Show more");
    this.more.addEventListener("click", () => {
      this.pages += 1;
      this.refresh();
    });
    this.listError = el("p", { class: "error", role: "alert", hidden: true });
    fill(this.root, this.form, el("section", { class: "run-list", "aria-label": "Your runs" },
      el("h2", {}, "Your runs"), this.listError, this.list, this.more));
  }

  async open() {
    this.loadModels();
    await this.refresh();
    this.task.focus();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
  }

  async loadModels() {
    try {
      const info = await call("GET", "/v1/info");
      const names = new Set([info.defaultModel, ...Object.values(info.agentModels || {})].filter(Boolean));
      fill(this.models, ...[...names].map((name) => el("option", { value: name })));
    } catch {
      // Suggestions only: the field still takes any model.
    }
  }

  /** The first `pages` pages of runs, then again in REFRESH_MS while the list is shown. */
  async refresh() {
    clearTimeout(this.timer);
    try {
      const runs = [];
      let token = "";
      let more = false;
      for (let page = 0; page < this.pages; page += 1) {
        const query = new URLSearchParams({ pageSize: String(PAGE_SIZE) });
        if (token) query.set("pageToken", token);
        const answer = await call("GET", `/v1/runs?${query}`);
        runs.push(...(answer.runs || []));
        token = answer.nextPageToken || "";
        more = Boolean(token);
        if (!more) break;
      }
      if (this.closed) return;
      this.show(runs);
      this.more.hidden = !more;
      this.listError.hidden = true;
    } catch (error) {
      if (this.closed) return;
      this.listError.hidden = false;
      fill(this.listError, `Could not list runs: ${error.message}`);
    }
    if (!this.closed) this.timer = setTimeout(() => this.refresh(), document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
  }

  /** Show the runs in order, updating the rows already there in place: a row that has the keyboard's focus
   * keeps it while the states change under it. */
  show(runs) {
    if (!runs.length) {
      this.rows.clear();
      fill(this.list, el("li", { class: "muted" }, "No runs yet."));
      return;
    }
    const wanted = new Set(runs.map((run) => run.runId));
    for (const child of [...this.list.children]) {
      if (!wanted.has(child.dataset.run || "")) child.remove();
    }
    for (const id of [...this.rows.keys()]) if (!wanted.has(id)) this.rows.delete(id);
    let next = this.list.firstElementChild;
    for (const run of runs) {
      const row = this.rows.get(run.runId) || this.row(run);
      this.update(row, run);
      if (row === next) next = next.nextElementSibling;
      else this.list.insertBefore(row, next); // only a new or moved row is (re)placed
    }
  }

  row(run) {
    const row = el("li", { "data-run": run.runId },
      el("a", { href: `/runs/${encodeURIComponent(run.runId)}`, "data-nav": "" },
        el("code", {}, run.runId.slice(0, 8)), " ", el("span", { class: "task" }, run.task || "")),
      el("span", { class: "state" }),
      el("span", { class: "muted" }));
    this.rows.set(run.runId, row);
    return row;
  }

  update(row, run) {
    const state = stateName(run.state);
    const stage = !FINISHED.has(state) && run.currentAgent ? ` · ${agentName(run.currentAgent)}` : "";
    row.dataset.state = state;
    const [, badge, meta] = row.children;
    badge.dataset.state = state;
    const shown = state.replace("_", " ") + stage; // "awaiting approval · Architect"
    if (badge.textContent !== shown) fill(badge, shown);
    const about = `${when(run.createdAt)} · ${money(run.usage)}`;
    if (meta.textContent !== about) fill(meta, about);
  }

  async start() {
    this.formError.hidden = true;
    const body = { task: this.task.value };
    if (this.context.value.trim()) {
      try {
        body.context = JSON.parse(this.context.value);
      } catch (error) {
        this.showError(["context: not valid JSON (" + error.message + ")"]);
        return;
      }
    }
    if (this.model.value.trim()) body.model = this.model.value.trim();
    this.submit.disabled = true;
    try {
      const answer = await call("POST", "/v1/runs", body);
      this.navigate(`/runs/${encodeURIComponent(answer.run.runId)}`);
    } catch (error) {
      this.showError(error instanceof ApiError ? [error.message, ...error.fields()] : [String(error)]);
    } finally {
      this.submit.disabled = false;
    }
  }

  showError(lines) {
    this.formError.hidden = false;
    fill(this.formError, ...lines.map((line) => el("p", {}, line)));
  }
}

/** The login form, for a server with keys; `done()` once the session cookie is set. */
export function loginView(root, done) {
  const key = el("input", { id: "key", name: "key", type: "password", autocomplete: "current-password", required: true });
  const error = el("p", { class: "error", role: "alert", hidden: true });
  const button = el("button", { type: "submit" }, "Log in");
  const form = el("form", { class: "login", "aria-label": "Log in" },
    el("h2", {}, "Log in"),
    el("p", {}, "This server needs an API key. It becomes a session cookie of this browser; the page never keeps it."),
    el("label", { for: "key" }, "API key"), key, error, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    try {
      await login(key.value);
      key.value = "";
      done();
    } catch (err) {
      error.hidden = false;
      fill(error, err instanceof ApiError && err.status === 401 ? "Wrong key." : `Could not log in: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  });
  fill(root, form);
  key.focus();
}
