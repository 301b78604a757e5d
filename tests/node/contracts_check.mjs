// Reads the published contracts with the tools receivers use, and prints a JSON summary.
//
//   node contracts_check.mjs --base-url http://127.0.0.1:8080 [--samples FILE] TYPE...
//   node contracts_check.mjs [--samples FILE] CONTRACT.json...
//
// For each contract (GET /v1/contracts/{TYPE} from a dispatcher on loopback, or a file such as
// `webhooks-contracts schema TYPE` prints): compile it with Ajv 2020-12 in strict mode with
// ajv-formats, validate its documented examples (and the valid/invalid samples of --samples,
// {"TYPE": {"valid": [...], "invalid": [...]}}), and generate TypeScript with
// json-schema-to-typescript. Nothing is fetched but the contracts themselves: a $ref that
// json-schema-to-typescript would have to resolve outside the document is recorded and fails
// the contract. Exit 0 when every contract passed every check.

import { readFile } from "node:fs/promises";
import process from "node:process";
import { parseArgs } from "node:util";

import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { compile as toTypeScript } from "json-schema-to-typescript";

const LOOPBACK_HOSTS = new Set(["127.0.0.1", "[::1]", "localhost"]);

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: { "base-url": { type: "string" }, samples: { type: "string" } },
});

async function loadContracts() {
  const baseUrl = options["base-url"];
  if (baseUrl === undefined) {
    return Promise.all(
      positionals.map(async (path) => JSON.parse(await readFile(path, "utf8"))),
    );
  }
  if (!LOOPBACK_HOSTS.has(new URL(baseUrl).hostname)) {
    throw new Error(`--base-url must be a loopback address, not ${baseUrl}`);
  }
  return Promise.all(
    positionals.map(async (type) => {
      const url = new URL(`/v1/contracts/${encodeURIComponent(type)}`, baseUrl);
      const response = await fetch(url);
      if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
      return response.json();
    }),
  );
}

// Once the contracts are loaded nothing may be fetched: every attempt is recorded and refused.
const remoteLookups = [];
function refuseNetwork() {
  globalThis.fetch = async (input) => {
    remoteLookups.push(String(input instanceof Request ? input.url : input));
    throw new Error("contracts_check: no network access after the contracts are loaded");
  };
}

function strictAjv() {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  return ajv;
}

function checkWithAjv(contract, samples) {
  let validate;
  try {
    validate = strictAjv().compile(contract);
  } catch (error) {
    return { strict: false, strictError: error.message, examples: [], samples: [] };
  }
  const run = (instances, expected) =>
    (instances ?? []).map((instance) => {
      const valid = validate(instance);
      return { valid, expected, errors: valid ? [] : validate.errors };
    });
  return {
    strict: true,
    strictError: null,
    examples: run(contract.examples, true),
    samples: [...run(samples?.valid, true), ...run(samples?.invalid, false)],
  };
}

async function generateTypeScript(contract) {
  const lookups = [];
  const refuse = {
    order: 1,
    canRead: true,
    read(file) {
      lookups.push(file.url);
      throw new Error(`contracts_check: refused to resolve ${file.url}`);
    },
  };
  try {
    const typescript = await toTypeScript(structuredClone(contract), contract.title, {
      bannerComment: "",
      format: true,
      // Only local references may be followed; the built-in file and http resolvers are off.
      $refOptions: { resolve: { file: false, http: false, refuse } },
    });
    return { typescript, typescriptError: null, lookups };
  } catch (error) {
    return { typescript: null, typescriptError: error.message, lookups };
  }
}

async function main() {
  const contracts = await loadContracts();
  refuseNetwork();
  const samples = options.samples ? JSON.parse(await readFile(options.samples, "utf8")) : {};
  const results = {};
  for (const contract of contracts) {
    const name = contract.$id.split("/").pop();
    const ajv = checkWithAjv(contract, samples[name]);
    const typescript = await generateTypeScript(contract);
    const passed =
      ajv.strict &&
      [...ajv.examples, ...ajv.samples].every(({ valid, expected }) => valid === expected) &&
      typescript.typescriptError === null &&
      typescript.lookups.length === 0;
    results[name] = { id: contract.$id, passed, ...ajv, ...typescript };
  }
  const ok =
    contracts.length > 0 &&
    remoteLookups.length === 0 &&
    Object.values(results).every(({ passed }) => passed);
  process.stdout.write(JSON.stringify({ ok, remoteLookups, contracts: results }));
  process.exitCode = ok ? 0 : 1;
}

main().catch((error) => {
  process.stderr.write(`${error.stack ?? error}\n`);
  process.exitCode = 2;
});
