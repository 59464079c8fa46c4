// Building the page without HTML strings: every element is made with createElement and every piece of
// text (above all, whatever a model wrote) goes in as a text node, so nothing received can become markup.

/** An element: `attrs` are attributes (a false or null value leaves one out), `children` nodes or text. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace everything in `node` with `children`. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** "Architect" for "AGENT_ARCHITECT". */
export function agentName(agent) {
  if (!agent) return "?";
  const word = String(agent).replace(/^AGENT_/, "").toLowerCase();
  return word.charAt(0).toUpperCase() + word.slice(1);
}

/** "running" for "RUN_STATE_RUNNING". */
export function stateName(state) {
  return String(state || "RUN_STATE_UNSPECIFIED").replace(/^RUN_STATE_/, "").toLowerCase();
}

export const FINISHED = new Set(["completed", "failed", "cancelled"]);

/** A duration for people, as the CLI writes it: "4.2s", "2m05s". */
export function seconds(value) {
  const s = Math.max(0, Number(value) || 0);
  if (s < 60) return `${s.toFixed(1)}s`;
  return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
}

/** Seconds of a protobuf Duration in canonical JSON ("1.500s"). */
export function durationSeconds(text) {
  return text ? parseFloat(String(text)) || 0 : 0;
}

/** A USD amount as the CLI writes it; a lower bound ends with "+", an estimate starts with "~". */
export function costText(cost, unknown = false, estimated = false) {
  const c = Number(cost) || 0;
  if (unknown && c === 0) return "cost unknown";
  const text = c >= 0.01 || c === 0 ? `$${c.toFixed(4)}` : `$${c.toFixed(6)}`;
  return (estimated ? "~" : "") + text + (unknown ? "+" : "");
}

/** A Usage message's cost. */
export function money(usage) {
  const u = usage || {};
  return costText(u.costUsd, u.costUnknown, u.estimated);
}

/** "360 in / 73 out tokens". */
export function tokens(usage) {
  const u = usage || {};
  const about = u.estimated ? "~" : "";
  return `${about}${Number(u.inputTokens || 0)} in / ${about}${Number(u.outputTokens || 0)} out tokens`;
}

/** "1 file", "2 files". */
export function plural(count, word) {
  return count === 1 ? `${count} ${word}` : `${count} ${word}s`;
}

/** A timestamp for people, in the reader's own time zone. */
export function when(timestamp) {
  if (!timestamp) return "";
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}
