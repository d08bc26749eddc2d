// Preloaded by bunfig.toml before every suite. ([test] timeout in bunfig.toml
// is not honoured by Bun 1.4.4; setDefaultTimeout in a preload is.)
import { setDefaultTimeout } from "bun:test";

setDefaultTimeout(20_000);
