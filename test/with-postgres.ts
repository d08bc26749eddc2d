// Runs a command with RS_TEST_DB pointing at a throwaway PostgreSQL cluster,
// so that a suite written for one daemon runs unchanged on the shared store:
//   bun run test/with-postgres.ts bun test ./index.test.ts
import { startCluster } from "./postgres.ts";

const cluster = startCluster();
try {
  const proc = Bun.spawn(process.argv.slice(2), {
    env: { ...process.env, RS_TEST_DB: cluster.url },
    stdio: ["inherit", "inherit", "inherit"],
  });
  process.exitCode = await proc.exited;
} finally {
  cluster.destroy();
}
