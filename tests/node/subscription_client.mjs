// A Node.js client of the subscription service, built at run time from the .proto files
// alone (no generated code): it creates, reads, lists and updates one subscription, tries
// a stale etag and a bad URL, and prints what it saw as one JSON document on stdout.
//
//   node subscription_client.mjs --target 127.0.0.1:50051 [--token TOKEN]
//        [--proto-path DIR]... [--url URL] [--message-type TYPE]
//
// The token comes from --token or WEBHOOKS_TOKEN. --proto-path works like protoc's -I:
// the repository's protos/ is always searched first; the directories holding
// google/protobuf/*.proto (protoc's include directory) and google/rpc/*.proto (the
// googleapis common protos) must be given, as for any other protobuf toolchain.
//
// Exit status: 0 when every call answered as the service documents, 1 when a call the
// scenario needs failed (its status is printed as {"error": ...}), 2 on a usage error.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repositoryProtos = path.resolve(here, "..", "..", "protos");
const SERVICE_PROTO = "webhooks/v1/subscription_service.proto";
const DEADLINE_MS = 10_000;

class UsageError extends Error {}

function options() {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      token: { type: "string" },
      "proto-path": { type: "string", multiple: true, default: [] },
      url: { type: "string", default: "https://receiver.example.com/from-node" },
      "message-type": { type: "string", default: "event.claim.created.v1" },
    },
    strict: true,
  });
  const token = values.token ?? process.env.WEBHOOKS_TOKEN;
  if (!values.target) throw new UsageError("--target host:port is required");
  if (!token) throw new UsageError("a token is required: --token or WEBHOOKS_TOKEN");
  return {
    target: values.target,
    token,
    includeDirs: [repositoryProtos, ...values["proto-path"]],
    url: values.url,
    messageType: values["message-type"],
  };
}

function loadService(includeDirs) {
  const definition = protoLoader.loadSync(SERVICE_PROTO, {
    includeDirs,
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).webhooks.v1.SubscriptionService;
}

// google.rpc.Status and BadRequest, to read the field violations of INVALID_ARGUMENT.
function loadStatusTypes(includeDirs) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    for (const directory of includeDirs) {
      const candidate = path.join(directory, target);
      if (fs.existsSync(candidate)) return candidate;
    }
    throw new UsageError(`${target} is not in any --proto-path (${includeDirs.join(", ")})`);
  };
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  return {
    Status: root.lookupType("google.rpc.Status"),
    BadRequest: root.lookupType("google.rpc.BadRequest"),
  };
}

function describeError(error, statusTypes) {
  const described = {
    code: error.code,
    codeName: grpc.status[error.code] ?? String(error.code),
    details: error.details,
    fieldViolations: [],
  };
  for (const raw of error.metadata?.get("grpc-status-details-bin") ?? []) {
    const status = statusTypes.Status.decode(raw);
    for (const detail of status.details) {
      if (detail.type_url.endsWith("/google.rpc.BadRequest")) {
        const badRequest = statusTypes.BadRequest.decode(detail.value);
        for (const violation of badRequest.field_violations) {
          described.fieldViolations.push({
            field: violation.field,
            description: violation.description,
          });
        }
      }
    }
  }
  return described;
}

class CallFailed extends Error {
  constructor(step, error) {
    super(`${step}: ${error.details}`);
    this.step = step;
    this.error = error;
  }
}

function caller(client, token) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return (method, request) =>
    new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + DEADLINE_MS);
      client[method](request, metadata, { deadline }, (error, response) => {
        if (error) reject(new CallFailed(method, error));
        else resolve(response);
      });
    });
}

// Runs `call` expecting it to fail; returns the failure, or null when it succeeded.
async function failure(call) {
  try {
    await call;
    return null;
  } catch (caught) {
    if (caught instanceof CallFailed) return caught.error;
    throw caught;
  }
}

async function scenario(call, opts, statusTypes) {
  const { subscription: created } = await call("CreateSubscription", {
    subscription: {
      url: opts.url,
      message_types: [opts.messageType],
      description: "created from node",
    },
  });
  const { subscription: fetched } = await call("GetSubscription", { id: created.id });
  const listed = [];
  let pageToken = "";
  do {
    const page = await call("ListSubscriptions", {
      page_size: 1,
      page_token: pageToken,
      message_type: opts.messageType,
    });
    listed.push(...page.subscriptions.map((subscription) => subscription.id));
    pageToken = page.next_page_token;
  } while (pageToken);
  const { subscription: updated } = await call("UpdateSubscription", {
    subscription: {
      id: created.id,
      etag: created.etag,
      enabled: false,
      disabled_reason: "paused from node",
      description: "not in the mask, so unchanged",
    },
    update_mask: { paths: ["enabled", "disabled_reason"] },
  });
  const staleEtag = await failure(
    call("UpdateSubscription", {
      subscription: { id: created.id, etag: created.etag, description: "too late" },
      update_mask: { paths: ["description"] },
    }),
  );
  const badUrl = await failure(
    call("CreateSubscription", {
      subscription: { url: "ftp://receiver.example.com/in", message_types: [opts.messageType] },
    }),
  );
  return {
    created,
    fetched,
    listed,
    updated,
    staleEtag: staleEtag && describeError(staleEtag, statusTypes),
    badUrl: badUrl && describeError(badUrl, statusTypes),
  };
}

async function main() {
  const opts = options();
  const Service = loadService(opts.includeDirs);
  const statusTypes = loadStatusTypes(opts.includeDirs);
  const client = new Service(opts.target, grpc.credentials.createInsecure());
  try {
    const result = await scenario(caller(client, opts.token), opts, statusTypes);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  } catch (caught) {
    if (!(caught instanceof CallFailed)) throw caught;
    const error = { step: caught.step, ...describeError(caught.error, statusTypes) };
    process.stdout.write(`${JSON.stringify({ error })}\n`);
    return 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`${error instanceof UsageError ? error.message : error.stack}\n`);
    process.exitCode = 2;
  },
);
