// Calling facilitair from Node.js with @grpc/grpc-js and @grpc/proto-loader.
//
//   npm ci
//   node client.js run 127.0.0.1:50051 "Write a function that reverses a string" [--context JSON] [--max-refinements N]
//   node client.js watch 127.0.0.1:50051 RUN_ID [--after SEQ]
//
// The model's text goes to stderr as it streams; stdout gets one JSON line when the run ends:
// {"run_id", "state", "last_seq", "events", "kinds", "files", "usage"}, where "kinds" counts the events of
// each kind ({"run_started": 1, "token_delta": 940, ...}) so the line stays short however long the run. Exit code 0 completed, 1 failed or
// cancelled, 2 the call was refused (the field violations are printed), 3 the server is unavailable.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");

// keepCase: fields as in the .proto (run_id, after_seq); without it, snake_case keys in a request are
//   silently dropped and the server answers "run_id: is required".
// longs: String: uint64 fields (seq, tokens) arrive as decimal strings, not Long objects.
// enums: String: "AGENT_CODER" instead of 2. defaults: unset fields read as 0 / "" / false.
// oneofs: true: event.payload names the field that is set ("token_delta", "run_completed", ...).
const packageDefinition = protoLoader.loadSync(path.join(PROTOS, "facilitair/v1/orchestrator.proto"), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTOS],
});
const { OrchestratorService } = grpc.loadPackageDefinition(packageDefinition).facilitair.v1;

// Keepalive that the server accepts: it allows a ping every 10 s, so 30 s never earns a GOAWAY
// "too_many_pings" (which grpc-js reports as UNAVAILABLE or RESOURCE_EXHAUSTED on the open stream).
// grpc.http2.max_pings_without_data is a C-core option: grpc-js ignores it.
const CHANNEL_OPTIONS = {
  "grpc.keepalive_time_ms": 30000,
  "grpc.keepalive_timeout_ms": 10000,
  "grpc.keepalive_permit_without_calls": 1,
};

// The three google.rpc messages this client reads from grpc-status-details-bin (field numbers as in
// googleapis' google/rpc/status.proto and error_details.proto).
const rpc = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: "int32", id: 1 },
                message: { type: "string", id: 2 },
                details: { rule: "repeated", type: "Any", id: 3 },
              },
            },
            Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } },
            BadRequest: {
              fields: { field_violations: { rule: "repeated", type: "FieldViolation", id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: "string", id: 1 }, description: { type: "string", id: 2 } },
                },
              },
            },
            RetryInfo: { fields: { retry_delay: { type: "Duration", id: 1 } } },
            Duration: { fields: { seconds: { type: "int64", id: 1 }, nanos: { type: "int32", id: 2 } } },
          },
        },
      },
    },
  },
});

/**
 * A plain JSON value as a google.protobuf.Value. protobufjs defines the well-known types itself, with
 * camelCase field names (stringValue, not string_value), whatever keepCase says; any other key is dropped.
 */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}

/** A plain JSON object as a google.protobuf.Struct: {"language": "python"} alone would be dropped. */
function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

/** "field: description" for each violation of a BadRequest detail; the RetryInfo delay if any. */
function errorDetails(err) {
  const raw = err.metadata ? err.metadata.get("grpc-status-details-bin")[0] : undefined;
  if (!raw) return [];
  const status = rpc.lookupType("google.rpc.Status").decode(raw);
  const lines = [];
  for (const detail of status.details) {
    if (detail.type_url.endsWith("/google.rpc.BadRequest")) {
      const bad = rpc.lookupType("google.rpc.BadRequest").decode(detail.value);
      for (const v of bad.field_violations) lines.push(`${v.field}: ${v.description}`);
    } else if (detail.type_url.endsWith("/google.rpc.RetryInfo")) {
      const retry = rpc.lookupType("google.rpc.RetryInfo").decode(detail.value);
      lines.push(`retry after ${Number(retry.retry_delay.seconds)}s`);
    }
  }
  return lines;
}

const TERMINAL = new Set(["run_completed", "run_failed", "run_cancelled"]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow a run to its terminal event. `open(afterSeq, runId)` starts a stream; when one breaks with
 * UNAVAILABLE after the run is known, it is resumed with WatchRun after the last seq seen.
 */
async function follow(client, open, runId, afterSeq) {
  const seen = { runId, lastSeq: afterSeq, events: 0, kinds: {}, final: null };
  const deadline = Date.now() + 60000;
  for (let attempt = 0; ; attempt++) {
    try {
      for await (const response of open(seen.lastSeq, seen.runId)) {
        const event = response.event;
        if (BigInt(event.seq) <= BigInt(seen.lastSeq)) continue; // seq is a string: compare as BigInt
        seen.runId = event.run_id;
        seen.lastSeq = event.seq;
        seen.events += 1;
        seen.kinds[event.payload] = (seen.kinds[event.payload] || 0) + 1;
        if (event.payload === "token_delta") process.stderr.write(event.token_delta.text);
        if (TERMINAL.has(event.payload)) {
          seen.final = event;
          return seen;
        }
      }
      throw Object.assign(new Error("the stream ended before the run did"), { code: grpc.status.UNAVAILABLE });
    } catch (err) {
      if (err.code !== grpc.status.UNAVAILABLE || !seen.runId || Date.now() > deadline) throw err;
      await sleep(Math.min(200 * 2 ** attempt, 5000));
    }
  }
}

function summary(seen) {
  const final = seen.final;
  const body = final[final.payload];
  return {
    run_id: seen.runId,
    state: final.payload,
    last_seq: seen.lastSeq,
    events: seen.events,
    kinds: seen.kinds,
    files: final.payload === "run_completed" ? body.result.artifacts.map((a) => a.path) : [],
    usage: body.usage,
    message: final.payload === "run_failed" ? body.message : undefined,
  };
}

function option(args, name) {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
}

const USAGE = "usage: node client.js run TARGET TASK [--context JSON] [--max-refinements N] | watch TARGET RUN_ID [--after SEQ]";

async function main(argv) {
  const [command, target, subject, ...rest] = argv;
  // Checked before a client is made: grpc-js throws a TypeError for an undefined target.
  if (!["run", "watch"].includes(command) || !target || !subject) {
    console.error(USAGE);
    return 2;
  }
  const client = new OrchestratorService(target, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
  try {
    let seen;
    if (command === "run") {
      const request = { task: subject, client_request_id: `node-${process.pid}-${Date.now()}` };
      const context = option(rest, "--context");
      if (context) request.context = toStruct(JSON.parse(context));
      const bound = option(rest, "--max-refinements");
      if (bound !== undefined) request.max_refinements = Number(bound);
      const open = (after, runId) =>
        runId ? client.WatchRun({ run_id: runId, after_seq: after }) : client.Collaborate(request);
      seen = await follow(client, open, "", "0");
    } else {
      const open = (after, runId) => client.WatchRun({ run_id: runId, after_seq: after });
      seen = await follow(client, open, subject, option(rest, "--after") || "0");
    }
    process.stdout.write(JSON.stringify(summary(seen)) + "\n");
    return seen.final.payload === "run_completed" ? 0 : 1;
  } catch (err) {
    const name = Object.keys(grpc.status).find((key) => grpc.status[key] === err.code) || err.code;
    console.error(`${name}: ${err.details || err.message}`);
    for (const line of errorDetails(err)) console.error(`  ${line}`);
    return err.code === grpc.status.UNAVAILABLE ? 3 : 2;
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
