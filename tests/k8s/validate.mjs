// Validates prometheus-operator resources against the CRDs' OpenAPI schemas (compiled by
// @kubernetes-models/prometheus-operator). Reads a JSON array of resources on stdin; prints a
// JSON array of {kind, name, error} (error null when valid). A kind with no schema is an error.
const input = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => { text += chunk; });
  process.stdin.on("end", () => resolve(text));
}));
const results = [];
for (const resource of input) {
  const { apiVersion, kind } = resource;
  const name = resource.metadata?.name ?? null;
  let error = null;
  try {
    const module = await import(`@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`);
    new module[kind](resource).validate();
  } catch (e) {
    error = String(e.message ?? e);
  }
  results.push({ kind, name, error });
}
process.stdout.write(JSON.stringify(results));
