// The approval gate of a run that waits for a person (approval_requested): what is to be approved, and the
// four choices SubmitApproval takes. Model text goes into text nodes and textarea values only.

import { call, runPath } from "./api.js";
import { agentName, el, fill, when } from "./dom.js";

const DECIDED = {
  APPROVAL_DECISION_APPROVE: "approved",
  APPROVAL_DECISION_REVISE: "asked for a revision",
  APPROVAL_DECISION_EDIT: "edited",
  APPROVAL_DECISION_REJECT: "rejected",
};

/** One pending gate's section; `onDecided(decided)` when the server records a decision. */
export class ApprovalSection {
  constructor(runId, gate) {
    this.runId = runId;
    this.gate = gate;
    this.busy = false;
    const files = gate.artifacts || [];
    // The Architect's design is edited as text (edited_text); another stage's output as its files.
    const editFiles = gate.agent === "AGENT_ARCHITECT" ? [] : files;
    const policy = gate.onTimeout === "ON_APPROVAL_TIMEOUT_APPROVE" ? "approved" : "rejected";
    this.comment = el("textarea", { id: "approval-comment", rows: "3", "data-approval-comment": "" });
    this.edited = el("textarea", { id: "approval-edit", rows: "10", "data-approval-edit": "" });
    // The edit box starts from what is under review: the design text, or the files (one box per file).
    this.fileBoxes = editFiles.map((a) => {
      const box = el("textarea", { rows: "8", "data-approval-file": a.path, "aria-label": `Edited ${a.path}` });
      box.value = a.content || "";
      return box;
    });
    this.edited.value = gate.text || "";
    this.message = el("p", { class: "error", role: "alert", hidden: true });
    this.buttons = ["approve", "revise", "edit", "reject"].map((choice) => {
      const label = choice[0].toUpperCase() + choice.slice(1);
      const button = el("button", { type: "button", "data-approval": choice }, label);
      button.addEventListener("click", () => this.decide(choice));
      return button;
    });
    this.node = el("section", { class: "approval", "aria-label": "Approval", "data-approval-id": gate.approvalId },
      el("h2", {}, `Waiting for approval: stage ${gate.stage || 0}, ${agentName(gate.agent)}`),
      el("p", { class: "muted" }, `Expires ${when(gate.expiresAt)}; then it is ${policy} by itself.`),
      gate.text ? el("pre", { class: "text", tabindex: "0", "data-approval-text": "" }, gate.text) : null,
      ...files.map((a) => el("details", {}, el("summary", {}, el("code", {}, a.path)),
        el("pre", { class: "file", tabindex: "0" }, a.content || ""))),
      el("label", { for: "approval-comment" }, "Comment (required to revise; the reason to reject)"), this.comment,
      el("details", { class: "approval-edit" }, el("summary", {}, "Edit before approving"),
        editFiles.length ? el("div", {}, ...this.fileBoxes)
          : el("div", {}, el("label", { for: "approval-edit" }, "Edited text"), this.edited)),
      el("div", { class: "choices" }, ...this.buttons),
      this.message);
  }

  async decide(choice) {
    if (this.busy) return;
    const comment = this.comment.value.trim();
    if (choice === "revise" && !comment) {
      this.show("A revision needs a comment saying what to change.");
      this.comment.focus();
      return;
    }
    const body = { approvalId: this.gate.approvalId, decision: `APPROVAL_DECISION_${choice.toUpperCase()}`, comment };
    if (choice === "edit") {
      const files = this.fileBoxes.map((b) => ({ path: b.dataset.approvalFile, content: b.value }));
      if (files.length) body.editedFiles = files;
      else body.editedText = this.edited.value;
    }
    this.busy = true;
    for (const b of this.buttons) b.disabled = true;
    try {
      const answer = await call("POST", runPath(this.runId, "/approvals"), body);
      this.decided(answer.decided || {});
    } catch (error) {
      // Refused (decided elsewhere first) or bad input: the server's message says which.
      this.show(error.message);
      this.busy = false;
      if (!this.node.dataset.decided) for (const b of this.buttons) b.disabled = false;
    }
  }

  show(text) {
    this.message.hidden = false;
    fill(this.message, text);
  }

  /** The gate is decided (here, elsewhere, or by its timeout): say who decided what, drop the choices. */
  decided(d) {
    if (this.node.dataset.decided) return;
    const what = DECIDED[d.decision] || "decided";
    const by = d.timedOut ? "the timeout" : d.principal || "someone";
    this.node.dataset.decided = String(d.decision || "").replace(/^APPROVAL_DECISION_/, "").toLowerCase();
    fill(this.node,
      el("h2", {}, `Stage ${d.stage || this.gate.stage || 0}: ${what} by ${by}`),
      d.comment ? el("p", { class: "comment" }, d.comment) : null,
      d.edited ? el("p", { class: "muted" }, "The text was edited.") : null,
      this.message); // a refusal that arrives after the decision event is still shown
  }
}
