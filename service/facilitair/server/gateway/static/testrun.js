// A Test run step on the run page: the Tester's tests run in the sandbox (tests_started, tests_output lines,
// tests_finished). It is no model's stage, so it has a section of its own: what runs and where, the output
// lines as they stream, then the counts, the limits that stopped it and each failure with its message.
//
// Test output and failure messages come from code a model wrote: they only ever go into text nodes (each
// output line extends one Text node, as a stage's tokens do), never through an HTML sink.

import { durationSeconds, el, fill, plural, seconds } from "./dom.js";

// Lines of a failure's traceback shown under it (the event carries up to 1,500 characters), as the CLI does.
const EXCERPT_LINES = 6;

/** One Test run step's section; `start`, `line` and `finish` are fed its events in seq order. */
export class TestRunSection {
  constructor(number) {
    this.number = number;
    this.started = null; // server time of tests_started (ms), for the running step's elapsed time
    this.done = false;
    this.output = document.createTextNode("");
    this.round = el("span", { class: "model" }, "");
    this.elapsed = el("span", { class: "elapsed" }, "");
    this.what = el("p", { class: "what" });
    this.summary = el("div", { class: "tests-summary", "aria-live": "polite" });
    this.node = el(
      "section",
      { class: "stage test-run", "data-stage": number, "data-test-run": "", "data-state": "running",
        "aria-label": `Stage ${number}: Test run` },
      el("h3", {}, el("span", { class: "number" }, `${number}`), el("span", { class: "agent" }, "Test run"),
        this.round, this.elapsed),
      this.what,
      el("pre", { class: "text test-output", "data-test-output": number, tabindex: "0" }, this.output),
      this.summary,
    );
  }

  /** tests_started: what runs where. A second one for the same step (a restart ran the tests again)
   *  voids the first one's output and results. */
  start(t, time) {
    this.started = Date.parse(time);
    this.done = false;
    this.output.data = "";
    fill(this.summary);
    fill(this.elapsed);
    this.node.dataset.state = "running";
    fill(this.round, Number(t.round || 0) ? `against round ${t.round}'s code` : "against the Coder's code");
    const files = (t.files || []).join(", ") || "no test file";
    const command = t.command ? `${t.command} on ` : "";
    fill(this.what, `${command}${files}, in ${t.sandbox || "no sandbox"}`);
  }

  /** tests_output: one line the tests printed (the server bounds how many and how long). */
  line(o) {
    this.output.appendData(`${o.line || ""}\n`);
  }

  /** tests_finished: the counts, what stopped the run, and each failure. */
  finish(f) {
    this.done = true;
    fill(this.elapsed, seconds(durationSeconds(f.duration)));
    if (!f.executed) {
      this.node.dataset.state = "skipped";
      fill(this.summary, el("p", { class: "tests-outcome not-run" }, `Tests not run: ${f.notRunReason || ""}`));
      return;
    }
    const passed = Boolean(f.testsPassed);
    this.node.dataset.state = passed ? "done" : "failed";
    const counts = `${Number(f.passed || 0)} passed, ${Number(f.failed || 0)} failed, `
      + `${plural(Number(f.errors || 0), "error")}, ${Number(f.skipped || 0)} skipped`;
    const notes = [];
    if (f.timedOut) notes.push("timed out (the wall-clock limit stopped the tests)");
    if (f.stopped) notes.push(`stopped by the ${f.stopped} limit`);
    if (f.truncated) notes.push("output truncated (only its first lines were kept)");
    const failures = f.failures || [];
    fill(this.summary,
      el("p", { class: `tests-outcome ${passed ? "passed" : "failed"}` },
        `${headline(f, passed)}: ${counts}, in ${seconds(durationSeconds(f.duration))}`),
      notes.length ? el("ul", { class: "notes" }, ...notes.map((n) => el("li", {}, n))) : null,
      failures.length ? el("ul", { class: "failures" }, ...failures.map(failureItem)) : null);
  }

  /** Once a second while the tests run: how long they have been running. */
  tick(now) {
    if (!this.done && this.started !== null) fill(this.elapsed, seconds((now - this.started) / 1000));
  }
}

/** "Tests failed" only when something failed or was stopped: none collected (or all skipped) is no failure. */
function headline(f, passed) {
  if (passed) return "Tests passed";
  if (Number(f.failed || 0) + Number(f.errors || 0) > 0 || f.timedOut || f.stopped) return "Tests failed";
  return "No test passed";
}

function failureItem(failure) {
  const excerpt = String(failure.excerpt || "").split("\n").filter((l) => l).slice(-EXCERPT_LINES).join("\n");
  return el("li", { class: "failure" },
    el("strong", { class: "failure-name" }, failure.name || "?"),
    el("pre", { class: "failure-message" }, failure.message || ""),
    excerpt ? el("pre", { class: "failure-excerpt" }, excerpt) : null);
}

/** The note the run's result line gets from its last test run ("" when the server runs no tests). */
export function resultNote(result) {
  const tests = result.tests;
  if (!tests) return "";
  if (!tests.executed) return ", tests not run";
  return result.testsPassed ? ", tests passed"
    : `, tests failing (${Number(tests.failed || 0) + Number(tests.errors || 0)})`;
}
