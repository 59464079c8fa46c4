// A run's event stream (GET /v1/runs/{id}/events, server-sent events) read with fetch, and resumed by us.
//
// Why not EventSource: when its connection fails it either retries by itself or gives up, and it gives up
// the same way on the 204 that ends a finished run's stream as on a 401, a 404 or a server that answers 503
// while it restarts; it cannot be told to wait while the browser is offline either. Reading the stream with
// fetch, the page knows which case it is in, and every reconnect asks for exactly what it lacks:
// `after_seq` = the last seq applied (the server resumes from max(after_seq, Last-Event-ID)). An event at or
// below that seq is never applied twice; seqs are 1, 2, 3, ... with no gap, which the page checks.

import { ApiError, errorOf, runPath, sessionEnded } from "./api.js";

// Backoff between attempts: doubles from the first to the most, never more.
const FIRST_DELAY_MS = 250;
const MOST_DELAY_MS = 5000;
// The server sends a comment after 15 s of silence: 45 s of nothing means the connection is dead.
const SILENCE_MS = 45000;
// Stop retrying after this long without a working connection (a bound on the wait); the page says so.
const GIVE_UP_MS = 10 * 60 * 1000;
// gRPC codes (in the gateway's error bodies) worth another attempt: the server is restarting or busy.
const RETRYABLE_CODES = new Set(["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL"]);

/** Follows one run: `onEvent(event)` once per seq in order, `onState(state, detail)` on connection changes. */
export class RunStream {
  constructor(runId, { onEvent, onState }) {
    this.runId = runId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastSeq = 0; // the last seq applied
    this.applied = []; // every seq applied, in order (window.__facilitair.appliedSeqs for tests)
    this.duplicates = 0; // events received again after a reconnect and dropped
    this.gaps = 0; // events that would have skipped a seq (never expected)
    this.reconnects = 0;
    this.stopped = false;
    this.ended = false; // the terminal event was applied, or the server said there is nothing more (204)
    this._controller = null;
    this._wake = null;
    this._onOffline = () => this._controller && this._controller.abort(new Error("offline"));
    this._onOnline = () => this._wake && this._wake();
  }

  start() {
    window.addEventListener("offline", this._onOffline);
    window.addEventListener("online", this._onOnline);
    this._loop();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("offline", this._onOffline);
    window.removeEventListener("online", this._onOnline);
    if (this._controller) this._controller.abort(new Error("stopped"));
    if (this._wake) this._wake();
  }

  async _loop() {
    let failures = 0;
    let brokenSince = 0;
    while (!this.stopped && !this.ended) {
      this._opened = false;
      try {
        await this._attempt();
        if (this.ended || this.stopped) break;
      } catch (error) {
        if (this.stopped) break;
        if (error instanceof ApiError && !retryable(error)) {
          this.onState("error", error);
          return;
        }
      }
      // The stream broke (or never opened) before the run's end: go again from the last seq applied.
      if (this._opened) failures = 0;
      failures += 1;
      brokenSince = this._opened || !brokenSince ? Date.now() : brokenSince;
      if (Date.now() - brokenSince > GIVE_UP_MS) {
        this.onState("gave-up", null);
        return;
      }
      this.reconnects += 1;
      this.onState(navigator.onLine ? "reconnecting" : "offline", failures);
      await this._pause(Math.min(MOST_DELAY_MS, FIRST_DELAY_MS * 2 ** (failures - 1)));
    }
    if (this.ended) this.onState("ended", null);
  }

  /** One connection, from the last seq applied until it ends; `_opened` says whether it got that far. */
  async _attempt() {
    const controller = new AbortController();
    this._controller = controller;
    if (!navigator.onLine) return;
    const url = `${runPath(this.runId, "/events")}?coalesce=1&after_seq=${this.lastSeq}`;
    const response = await fetch(url, {
      headers: { Accept: "text/event-stream" },
      credentials: "same-origin",
      cache: "no-store",
      signal: controller.signal,
    });
    if (response.status === 204) {
      this.ended = true; // nothing past lastSeq and the run has finished
      return;
    }
    if (!response.ok) {
      if (response.status === 401) sessionEnded();
      throw await errorOf(response);
    }
    this._opened = true;
    this.onState("open", this.lastSeq);
    await this._read(response.body, controller);
  }

  async _read(body, controller) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let silence = setTimeout(() => controller.abort(new Error("silent")), SILENCE_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(silence);
        silence = setTimeout(() => controller.abort(new Error("silent")), SILENCE_MS);
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          this._message(block);
          if (this.ended) return;
        }
      }
    } finally {
      clearTimeout(silence);
      reader.cancel().catch(() => {});
    }
  }

  /** One SSE message: comments and `retry:` are skipped, `stream_error` ends the attempt, events applied. */
  _message(block) {
    let name = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(line[5] === " " ? 6 : 5);
      else if (line.startsWith("event:")) name = line.slice(6).trim();
    }
    if (!data) return;
    if (name === "stream_error") throw new ApiError(0, JSON.parse(data)); // status 0: judged by its code
    this._apply(JSON.parse(data));
  }

  _apply(event) {
    const seq = Number(event.seq);
    const first = event.firstSeq ? Number(event.firstSeq) : seq;
    if (seq <= this.lastSeq) {
      this.duplicates += 1;
      return;
    }
    if (first !== this.lastSeq + 1) this.gaps += 1;
    for (let s = first; s <= seq; s += 1) this.applied.push(s);
    this.lastSeq = seq;
    try {
      this.onEvent(event);
    } catch (error) {
      console.error("could not show event", seq, error); // a display bug must not stop the stream
    }
    if (event.runCompleted || event.runFailed || event.runCancelled) this.ended = true;
  }

  /** Wait `ms`, or less when the browser comes back online or the stream is stopped. */
  _pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this._wake = () => {
        this._wake = null;
        done();
      };
    });
  }
}

function retryable(error) {
  if (error.status === 0) return RETRYABLE_CODES.has(error.code);
  return error.status >= 500 || error.status === 429;
}
