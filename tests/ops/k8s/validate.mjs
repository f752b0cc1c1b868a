// Validates Kubernetes objects offline against the Kubernetes API schemas, two ways:
//  1. kubernetes-models: JSON-schema validation (ajv) generated from the Kubernetes OpenAPI
//     document: types, required fields, enums, formats;
//  2. kubernetes-types: the same API's TypeScript definitions; each object is type-checked as an
//     object literal, so TypeScript's excess-property check rejects unknown fields (a misspelt
//     key is silently dropped by the API server's lax decoding, and rejected by its strict field
//     validation), which the OpenAPI schemas alone allow.
// Reads a JSON array of objects on stdin; prints one JSON line per object:
//   {"index", "kind", "apiVersion", "ok", "errors": [...]}
// Exit status: 0 all valid, 1 some invalid, 2 usage or input error.
// Used by tests/ops/test_deploy.py; install with `npm ci` in this directory (package-lock.json).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const HERE = dirname(fileURLToPath(import.meta.url));

// "apps/v1" -> ["apps", "v1"]; "v1" -> ["", "v1"]; "networking.k8s.io/v1" -> ["networking.k8s.io", "v1"]
function splitApiVersion(apiVersion) {
  return apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
}

async function schemaModel(obj) {
  const [group, version] = splitApiVersion(obj.apiVersion);
  const path = group === "" ? `kubernetes-models/${version}` : `kubernetes-models/${group}/${version}`;
  const mod = await import(`${path}/${obj.kind}`).catch(() => null);
  if (mod === null || typeof mod[obj.kind] !== "function")
    throw new Error(`no schema for ${obj.apiVersion} ${obj.kind}`);
  return mod[obj.kind];
}

// kubernetes-types lays the groups out by their first label: core/v1, apps/v1, networking/v1.
function typesModule(obj) {
  const [group, version] = splitApiVersion(obj.apiVersion);
  return `kubernetes-types/${group === "" ? "core" : group.split(".")[0]}/${version}`;
}

function typeCheck(objs) {
  const errors = objs.map(() => []);
  const lines = [];
  const startLine = [];
  objs.forEach((obj, i) => {
    const alias = `T${i}`;
    lines.push(`import type { ${obj.kind} as ${alias} } from ${JSON.stringify(typesModule(obj))};`);
  });
  objs.forEach((obj, i) => {
    startLine.push(lines.length);
    const body = JSON.stringify(obj, null, 1).split("\n");
    lines.push(`export const o${i}: T${i} = ${body[0]}`, ...body.slice(1));
    lines.push(";");
  });
  const file = join(HERE, "__manifests__.ts");
  const text = lines.join("\n");
  const options = { noEmit: true, strict: true, target: ts.ScriptTarget.ES2022,
                    module: ts.ModuleKind.ESNext, moduleResolution: ts.ModuleResolutionKind.Node10,
                    types: [], skipLibCheck: true };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, ...rest) =>
    name === file ? ts.createSourceFile(name, text, lang) : getSourceFile(name, lang, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === file || fileExists(name);
  const readFile = host.readFile.bind(host);
  host.readFile = (name) => (name === file ? text : readFile(name));
  const program = ts.createProgram([file], options, host);
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const msg = ts.flattenDiagnosticMessageText(d.messageText, " ");
    let index = -1;
    if (d.file && d.file.fileName === file && d.start !== undefined) {
      const { line } = d.file.getLineAndCharacterOfPosition(d.start);
      for (let i = 0; i < startLine.length; i++) if (line >= startLine[i]) index = i;
      if (index >= 0) {
        errors[index].push(`types: line ${line - startLine[index] + 1} of the object: ${msg}`);
        continue;
      }
    }
    errors.forEach((e) => e.push(`types: ${msg}`)); // an import that does not resolve: all fail
  }
  return errors;
}

let objs;
try {
  objs = JSON.parse(readFileSync(0, "utf8"));
  if (!Array.isArray(objs)) throw new Error("expected a JSON array");
  objs.forEach((o, i) => {
    if (typeof o !== "object" || o === null || typeof o.apiVersion !== "string" || typeof o.kind !== "string")
      throw new Error(`object ${i}: not a Kubernetes object (apiVersion and kind are required)`);
  });
} catch (e) {
  console.error(`validate.mjs: ${e.message}`);
  process.exit(2);
}
const typeErrors = typeCheck(objs);
let bad = 0;
for (const [index, obj] of objs.entries()) {
  const errs = [...typeErrors[index]];
  try {
    const Model = await schemaModel(obj);
    new Model(obj).validate();
  } catch (e) {
    errs.push(`schema: ${String(e.message ?? e).slice(0, 2000)}`);
  }
  if (errs.length) bad++;
  console.log(JSON.stringify({ index, kind: obj.kind, apiVersion: obj.apiVersion, ok: errs.length === 0, errors: errs }));
}
process.exit(bad ? 1 : 0);
