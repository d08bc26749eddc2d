// Which store RS_DB names, from a table keyed by its scheme: a new store is one adapter file and one row here.
// SQLite and PostgreSQL are loaded only when asked for, so a daemon on the other stores neither evaluates their
// code nor holds it in memory.
import { isPostgres } from "../config.ts";
import { startupStep } from "../startup.ts";
import { openMemoryStore } from "./memory.ts";
import type { Store } from "./store.ts";

/** What a store is opened with: the RS_DB value and the settings every store reads. */
export type StoreSettings = { db: string; historyLimit: number; dbPool: number };

type Scheme = "memory" | "postgres" | "file";

const STORES: Record<Scheme, (s: StoreSettings) => Store | Promise<Store>> = {
  memory: (s) => openMemoryStore(s.historyLimit),
  postgres: async (s) => {
    const { openPostgresStore } = await import("./postgres.ts");
    startupStep("PostgreSQL store loaded");
    return openPostgresStore({ url: s.db, historyLimit: s.historyLimit, pool: s.dbPool });
  },
  file: async (s) => {
    const { openSqliteStore } = await import("./sqlite.ts");
    startupStep("SQLite store loaded");
    return openSqliteStore(s.db, s.historyLimit);
  },
};

/** RS_DB's scheme: `:memory:`, a postgres:// or postgresql:// URL, or else the path of an SQLite file. */
const schemeOf = (db: string): Scheme => (db === ":memory:" ? "memory" : isPostgres(db) ? "postgres" : "file");

/** SQLite by default; memory for RS_DB=:memory:; PostgreSQL for replicas. */
export const openStore = async (s: StoreSettings): Promise<Store> => STORES[schemeOf(s.db)](s);
