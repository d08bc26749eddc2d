// Start-up measured step by step inside the binary: with RS_TEST_STARTUP=1 each step says on stderr
// how long after the process began it was reached (bench/run.ts startup, and the test of what loads).
const tracing = process.env.RS_TEST_STARTUP === "1";

export function startupStep(what: string): void {
  if (tracing) console.error(`startup: ${performance.now().toFixed(1)} ms ${what}`);
}
