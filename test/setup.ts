// Preloaded by bunfig.toml before the suites: most of them start the compiled
// binary, so say plainly when it has not been built rather than fail obscurely.
import { existsSync } from "node:fs";
import { BINARY } from "./daemon.ts";

if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run \`make test\` (or \`make build\` first)`);
