// The run view: header, plan, one section per stage with its text arriving token by token, the verdicts,
// the files, usage and cost, the result. Fed once per event, in seq order, by stream.js.
//
// Model output only ever goes into text nodes: a stage's text is one Text node that each token extends
// (appendData: no HTML parsing, and no re-copy of the text so far, so a token costs the same at the end of a
// long stage as at its start). Nothing here uses innerHTML or any other HTML sink.

import { call, runPath } from "./api.js";
import { ApprovalSection } from "./approval.js";
import {
  FINISHED, agentName, costText, durationSeconds, el, fill, money, plural, seconds, stateName, tokens, when,
} from "./dom.js";
import { RunStream } from "./stream.js";
import { TestRunSection, resultNote } from "./testrun.js";

const ROUND_AGENTS = new Set(["Refiner", "Reviewer"]);
const CONNECTION_TEXT = {
  connecting: "connecting…",
  open: "catching up…",
  live: "live",
  reconnecting: "reconnecting…",
  offline: "offline: reconnecting when the network is back…",
  ended: "run ended: all events received",
  error: "cannot follow the run",
  "gave-up": "disconnected: reload the page to try again",
};

/** One stage's section and what it shows while nothing streams. */
class Stage {
  constructor(number, agent, model, round) {
    this.number = number;
    this.agent = agent;
    this.round = round;
    this.started = null; // server time of stage_started (ms)
    this.done = false;
    this.waitingFrom = null; // {waited, at}: "waiting for the model (12s)" counts on from here
    this.retryAt = null; // performance.now() of the next attempt: "retrying in 8s"
    this.lastToken = null; // server time of the latest token, as sent
    this.text = document.createTextNode("");
    this.label = el("span", { class: "agent" }, this.title());
    this.model = el("span", { class: "model" }, model);
    this.elapsed = el("span", { class: "elapsed" }, "");
    this.cost = el("span", { class: "cost" }, "");
    this.status = el("p", { class: "status", "aria-live": "polite" });
    this.notes = el("ul", { class: "notes" });
    this.verdict = el("div", { class: "verdict" });
    this.node = el(
      "section",
      { class: "stage", "data-stage": number, "data-state": "running", "aria-label": `Stage ${number}` },
      el("h3", {}, el("span", { class: "number" }, `${number}`), this.label, this.model, this.elapsed, this.cost),
      this.status,
      this.notes,
      el("pre", { class: "text", "data-stage-text": number, tabindex: "0" }, this.text),
      this.verdict,
    );
  }

  title() {
    const round = this.round && ROUND_AGENTS.has(this.agent) ? ` (round ${this.round})` : "";
    return this.agent + round;
  }

  setState(state) {
    this.node.dataset.state = state;
  }

  note(text) {
    this.notes.append(el("li", {}, text));
  }
}

/** The whole run view, mounted in `root`; `close()` stops its stream and timer. */
export class RunView {
  constructor(root, runId) {
    this.root = root;
    this.runId = runId;
    this.stages = new Map();
    this.testRuns = new Map(); // stage number -> TestRunSection: the Test run steps, no model's stages
    this.files = new Map(); // path -> {artifact, node}
    this.approvals = new Map(); // approval id -> ApprovalSection
    this.cost = 0;
    this.costUnknown = false;
    this.costEstimated = false;
    this.finished = false;
    this.lastTime = null; // server time of the latest event, as sent (parsed only when the clock ticks)
    this.lastArrival = 0; // performance.now() when it arrived
    this.caughtUpAt = 0; // the run's last seq when the stream (re)opened: at or past it, the view is live
    this.build();
  }

  build() {
    this.state = el("span", { class: "state", "data-state": "queued" }, "loading");
    this.connection = el("span", { class: "connection", role: "status", "data-connection": "connecting" },
      CONNECTION_TEXT.connecting);
    this.cancelButton = el("button", { type: "button", class: "cancel", disabled: true }, "Cancel run");
    this.cancelButton.addEventListener("click", () => this.cancel());
    this.task = el("p", { class: "task" });
    this.meta = el("p", { class: "meta muted" });
    this.error = el("p", { class: "error", role: "alert", hidden: true });
    this.plan = el("section", { class: "plan", "aria-label": "Plan" });
    this.stageList = el("div", { class: "stages" });
    this.fileList = el("ul", { class: "file-list" });
    this.download = el("a", { class: "download", href: runPath(this.runId, "/files"), download: "", hidden: true },
      "Download all files (zip)");
    this.filesBox = el("section", { class: "files", "aria-label": "Files", hidden: true },
      el("h2", {}, "Files"), this.download, this.fileList);
    this.usage = el("p", { class: "usage" });
    this.result = el("section", { class: "result", "aria-label": "Result", hidden: true });
    this.node = el(
      "article",
      { class: "run", "data-run": this.runId, "data-last-seq": "0" },
      el("div", { class: "run-head" },
        el("h1", {}, "Run ", el("code", { class: "run-id" }, this.runId)), this.state, this.connection,
        this.cancelButton),
      this.task, this.meta, this.error, this.plan, this.stageList, this.filesBox,
      el("section", { class: "totals", "aria-label": "Usage" }, el("h2", {}, "Usage and cost"), this.usage),
      this.result,
    );
    fill(this.root, el("p", {}, el("a", { href: "/", "data-nav": "" }, "← All runs")), this.node);
  }

  /** Load the run, then follow its events from the first. */
  async open() {
    let summary;
    try {
      summary = (await call("GET", runPath(this.runId))).run;
    } catch (error) {
      this.fail(error.status === 404 ? `Run ${this.runId} not found.` : error.message);
      this.setConnection("error");
      return;
    }
    this.runId = summary.runId;
    this.node.dataset.run = summary.runId;
    fill(this.node.querySelector(".run-id"), summary.runId);
    this.download.setAttribute("href", runPath(summary.runId, "/files"));
    this.summary(summary);
    this.stream = new RunStream(summary.runId, {
      onEvent: (event) => this.apply(event),
      onState: (state, detail) => this.connectionChanged(state, detail),
    });
    exposeForTests(this);
    this.stream.start();
    this.timer = setInterval(() => this.tick(), 1000);
  }

  close() {
    if (this.stream) this.stream.stop();
    clearInterval(this.timer);
  }

  summary(run) {
    fill(this.task, run.task || "");
    this.createdAt = run.createdAt;
    this.showMeta(run.replicaId);
    this.setRunState(stateName(run.state));
  }

  /** When the run started and, while it runs, the replica driving it. */
  showMeta(replica) {
    fill(this.meta, `Started ${when(this.createdAt)}${replica ? ` · driven by ${replica}` : ""}`);
  }

  setRunState(state) {
    this.state.dataset.state = state;
    fill(this.state, state);
    this.finished = FINISHED.has(state);
    this.cancelButton.disabled = this.finished;
    this.node.dataset.state = state;
  }

  fail(message) {
    this.error.hidden = false;
    fill(this.error, message);
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      const answer = await call("POST", runPath(this.runId, ":cancel"));
      this.setRunState(stateName(answer.run.state));
    } catch (error) {
      this.cancelButton.disabled = false;
      this.fail(`Could not cancel: ${error.message}`);
    }
  }

  async connectionChanged(state, detail) {
    if (state === "open") {
      // Live once everything stored when the stream opened has been applied.
      this.setConnection(this.stream.lastSeq ? "open" : "connecting");
      this.caughtUpAt = Infinity; // not live before the run's last seq is known (the events may come first)
      try {
        this.caughtUpAt = Number((await call("GET", runPath(this.runId))).run.lastSeq || 0);
      } catch {
        this.caughtUpAt = 0;
      }
      this.checkCaughtUp();
      return;
    }
    if (state === "error") this.fail(detail && detail.status === 404 ? "Run not found." : String(detail.message));
    this.setConnection(state);
  }

  checkCaughtUp() {
    const mode = this.connection.dataset.connection;
    if ((mode === "open" || mode === "connecting") && this.stream.lastSeq >= this.caughtUpAt) {
      this.setConnection("live");
    }
  }

  setConnection(state) {
    this.connection.dataset.connection = state;
    const extra = state === "reconnecting" && this.stream ? ` (attempt ${this.stream.reconnects})` : "";
    fill(this.connection, CONNECTION_TEXT[state] + extra);
  }

  stage(number) {
    return this.stages.get(Number(number || 0));
  }

  /** Show one event (called once per seq, in order). */
  apply(event) {
    this.lastTime = event.time;
    this.lastArrival = performance.now();
    this.node.dataset.lastSeq = event.seq;
    const delta = event.tokenDelta;
    if (delta) {
      const stage = this.stage(delta.stage);
      if (stage) {
        if (stage.waitingFrom || stage.retryAt) this.quiet(stage);
        stage.text.appendData(delta.text || "");
        stage.lastToken = event.time; // kept as sent: parsed only if a heartbeat says the model went quiet
      }
    } else {
      this.applyOther(event);
    }
    if (this.connection.dataset.connection !== "live") this.checkCaughtUp();
  }

  applyOther(event) {
    if (event.runStarted) this.started(event);
    else if (event.stageStarted) this.stageStarted(event);
    else if (event.thinking) this.thinking(event.thinking);
    else if (event.heartbeat) this.heartbeat(event);
    else if (event.stageCompleted) this.stageCompleted(event.stageCompleted);
    else if (event.reviewVerdict) this.verdict(event.reviewVerdict);
    else if (event.artifactProduced) this.artifact(event.artifactProduced.artifact || {});
    else if (event.attemptReset) this.reset(event.attemptReset);
    else if (event.modelFallback) this.fallback(event.modelFallback);
    else if (event.cacheHit) this.cacheHit(event.cacheHit);
    else if (event.testsStarted) this.testRun(event.testsStarted).start(event.testsStarted, event.time);
    else if (event.testsOutput) this.testRun(event.testsOutput).line(event.testsOutput);
    else if (event.testsFinished) this.testRun(event.testsFinished).finish(event.testsFinished);
    else if (event.approvalRequested) this.approvalRequested(event.approvalRequested.approval || {});
    else if (event.approvalDecided) this.approvalDecided(event.approvalDecided);
    else if (event.runCompleted) this.completed(event.runCompleted);
    else if (event.runFailed) this.failed(event.runFailed);
    else if (event.runCancelled) this.cancelled(event.runCancelled);
    // Any other kind (one a newer server sends) is left out: the page goes on with the events it knows.
  }

  /** A gate: its section after the stage it asks about (a revision's gate gets a new one). */
  approvalRequested(gate) {
    const section = new ApprovalSection(this.runId, gate);
    this.approvals.set(gate.approvalId, section);
    this.stageList.append(section.node);
    if (!this.finished) this.setRunState("awaiting_approval");
  }

  approvalDecided(d) {
    const section = this.approvals.get(d.approvalId);
    if (section) section.decided(d);
    if (!this.finished && this.state.dataset.state === "awaiting_approval") this.setRunState("running");
  }

  /** The Test run step of this event's stage, its section added the first time. */
  testRun(e) {
    const number = Number(e.stage || 0);
    let section = this.testRuns.get(number);
    if (!section) {
      section = new TestRunSection(number);
      this.testRuns.set(number, section);
      this.stageList.append(section.node);
    }
    return section;
  }

  started(event) {
    this.runStartedAt = Date.parse(event.time);
    if (!this.finished) this.setRunState("running");
    const plan = event.runStarted.plan || {};
    const rows = (plan.stages || []).map((s, i) => s.testRun
      // The Test run step: no agent, no model, no cost; where its tests run instead.
      ? el("tr", { "data-test-run": "" }, el("td", {}, `${i + 1}`), el("td", {}, "Test run"),
        el("td", {}, `sandbox: ${s.sandbox || "none"}`), el("td", {}, `~${seconds(s.estimatedSeconds)}`),
        el("td", {}, "none"))
      : el("tr", {}, el("td", {}, `${i + 1}`), el("td", {}, agentName(s.agent)), el("td", {}, s.model || ""),
        el("td", {}, `~${seconds(s.estimatedSeconds)}`),
        el("td", {}, s.estimatedCostUsd === undefined ? "unknown" : `~${costText(s.estimatedCostUsd)}`)));
    const cost = plan.estimatedCostUsd === undefined ? "cost unknown" : `~${costText(plan.estimatedCostUsd)}`;
    const most = plan.maxEstimatedCostUsd === undefined ? "" : `, at most ~${costText(plan.maxEstimatedCostUsd)}`;
    const learned = plan.historyStages ? ` Estimates learned from ${plural(plan.historyStages, "earlier stage")}.` : "";
    fill(this.plan,
      el("h2", {}, "Plan"),
      el("p", {}, `~${seconds(plan.estimatedSeconds)}, ${cost}${most}; up to `
        + `${plural(plan.maxRefinements || 0, "refinement round")}.${learned}`),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["#", "Agent", "Model", "Time", "Cost"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...rows))));
  }

  stageStarted(event) {
    const s = event.stageStarted;
    const stage = this.stage(s.stage) || this.addStage(s);
    stage.started = Date.parse(event.time);
    if (s.attempt > 1) stage.note(`attempt ${s.attempt} with ${s.model}`);
    fill(stage.model, s.model || "");
    this.quiet(stage);
  }

  addStage(s) {
    const stage = new Stage(Number(s.stage), agentName(s.agent), s.model || "", s.round || 0);
    this.stages.set(stage.number, stage);
    this.stageList.append(stage.node);
    return stage;
  }

  thinking(t) {
    const stage = this.stage(t.stage);
    if (!stage || stage.done) return;
    stage.retryAt = null;
    stage.waitingFrom = { waited: Number(t.waitedSeconds || 0), at: performance.now() };
    stage.setState("waiting");
    this.showWaiting(stage);
  }

  /** A heartbeat for a stage that has streamed: the model has been silent since its last token. */
  heartbeat(event) {
    const stage = this.stage(event.heartbeat.stage);
    if (!stage || stage.done || !stage.lastToken || stage.retryAt !== null) return;
    const waited = (Date.parse(event.time) - Date.parse(stage.lastToken)) / 1000;
    stage.waitingFrom = { waited: Math.max(0, waited), at: performance.now() };
    stage.setState("waiting");
    this.showWaiting(stage);
  }

  reset(r) {
    const stage = this.stage(r.stage);
    if (!stage) return;
    const delay = durationSeconds(r.delay);
    const discarded = stage.text.length > 0;
    stage.text.data = ""; // the attempt's text is void: the next attempt streams the stage's text again
    stage.lastToken = null;
    stage.note(`attempt ${r.attempt || "?"}${delay >= 0.05 ? ` in ${seconds(delay)}` : ""}: ${r.reason || ""}`
      + `${r.model ? ` (${r.model})` : ""}${discarded ? "; the partial output was discarded" : ""}`);
    stage.waitingFrom = null;
    stage.retryAt = performance.now() + delay * 1000;
    stage.setState("retrying");
    this.showWaiting(stage);
  }

  fallback(f) {
    const stage = this.stage(f.stage);
    if (stage) stage.note(`giving up on ${f.fromModel} (${f.reason}); falling back to ${f.toModel}`);
  }

  /** The stage is answered from the response cache: say from where and what it saves. */
  cacheHit(hit) {
    const stage = this.stage(hit.stage);
    const saved = (hit.saved || {}).costUsd || 0;
    if (stage) stage.note(`from the response cache (run ${hit.sourceRunId}, stage ${hit.sourceStage || 0}): saved ${costText(saved)}`);
  }

  /** Text is streaming (or the stage moved on): no "waiting" or "retrying" line. */
  quiet(stage) {
    stage.waitingFrom = null;
    stage.retryAt = null;
    fill(stage.status);
    stage.setState(stage.done ? "done" : "running");
  }

  showWaiting(stage) {
    if (stage.retryAt !== null) {
      const left = Math.max(0, Math.ceil((stage.retryAt - performance.now()) / 1000));
      fill(stage.status, left > 0 ? `retrying in ${left}s` : "retrying…");
    } else if (stage.waitingFrom) {
      const waited = stage.waitingFrom.waited + (performance.now() - stage.waitingFrom.at) / 1000;
      fill(stage.status, `waiting for the model (${Math.round(waited)}s)`);
    }
  }

  stageCompleted(c) {
    const stage = this.stage(c.stage) || this.addStage(c);
    stage.done = true;
    this.quiet(stage);
    const usage = c.usage || {};
    fill(stage.model, c.model || "");
    fill(stage.elapsed, seconds(durationSeconds(c.duration)));
    fill(stage.cost, money(usage));
    if (c.truncated) stage.note("output truncated (the model reached max_tokens)");
    stage.note(tokens(usage));
    this.cost += Number(usage.costUsd || 0);
    this.costUnknown = this.costUnknown || Boolean(usage.costUnknown);
    this.costEstimated = this.costEstimated || Boolean(usage.estimated);
    fill(this.usage, `So far: ${costText(this.cost, this.costUnknown, this.costEstimated)}`);
  }

  verdict(v) {
    const stage = this.stage(v.stage);
    if (!stage) return;
    const issues = v.issues || [];
    let head = v.approved ? "Approved" : `Changes requested (${plural(issues.length, "issue")})`;
    if (!v.wellFormed) head += " — the verdict was malformed";
    fill(stage.verdict,
      el("p", { class: v.approved ? "approved" : "rejected" }, head),
      v.summary ? el("p", {}, v.summary) : null,
      issues.length ? el("ul", {}, ...issues.map((i) =>
        el("li", {}, el("strong", {}, i.severity || "issue"), ` ${i.file ? `${i.file}: ` : ""}${i.description || ""}`)))
        : null);
  }

  artifact(a) {
    const lines = (a.content || "").split("\n").length - ((a.content || "").endsWith("\n") ? 1 : 0);
    const kind = String(a.kind || "").replace(/^ARTIFACT_KIND_/, "").toLowerCase();
    let about = `${kind}, ${plural(lines, "line")}`;
    if (a.version > 1) about += `, version ${a.version}`;
    if (a.requestedPath) about += `; written beside ${a.requestedPath}`;
    const item = el("li", { "data-path": a.path },
      el("details", {}, el("summary", {}, el("code", {}, a.path), ` (${about})`),
        el("pre", { class: "file", tabindex: "0" }, a.content || "")));
    const known = this.files.get(a.path);
    if (known) known.replaceWith(item);
    else this.fileList.append(item);
    this.files.set(a.path, item);
    this.filesBox.hidden = false;
  }

  completed(done) {
    const result = done.result || {};
    const files = (result.artifacts || []).length;
    const verdict = result.approved ? "approved" : "not approved";
    this.end("completed", `Run completed in ${seconds(durationSeconds(done.duration))}, review ${verdict}: `
      + `${plural(files, "file")}, ${plural(result.refinements || 0, "refinement")}${resultNote(result)}.`, done.usage);
    if (files) this.download.hidden = false;
  }

  failed(f) {
    const hint = f.retryable ? " (retrying may help)" : "";
    const reason = f.reason ? ` [${f.reason}]` : "";
    this.end("failed", `Run failed${reason}: ${f.message || ""}${hint}`, f.usage);
  }

  cancelled(c) {
    this.end("cancelled", `Run cancelled: ${c.reason || ""}`, c.usage);
  }

  end(state, line, usage) {
    this.setRunState(state);
    this.showMeta(""); // an ended run has no replica driving it
    for (const stage of this.stages.values()) if (!stage.done) this.quiet(stage);
    this.result.hidden = false;
    fill(this.result, el("h2", {}, "Result"), el("p", { class: `outcome ${state}` }, line));
    fill(this.usage, `${tokens(usage)}, ${money(usage)}`);
    clearInterval(this.timer);
  }

  /** Once a second while the run goes on: the running stage's time, and the waiting or retrying line. */
  tick() {
    if (this.finished || this.lastTime === null) return;
    const now = Date.parse(this.lastTime) + (performance.now() - this.lastArrival);
    for (const stage of this.stages.values()) {
      if (stage.done || stage.started === null) continue;
      fill(stage.elapsed, seconds((now - stage.started) / 1000));
      this.showWaiting(stage);
    }
    for (const section of this.testRuns.values()) section.tick(now);
  }
}

/** What the browser tests read: the seqs applied, in order, and the counters of the stream. */
function exposeForTests(view) {
  const stream = view.stream;
  window.__facilitair = {
    runId: view.runId,
    get appliedSeqs() { return stream.applied.slice(); },
    get duplicates() { return stream.duplicates; },
    get gaps() { return stream.gaps; },
    get reconnects() { return stream.reconnects; },
    get connection() { return view.connection.dataset.connection; },
  };
}
