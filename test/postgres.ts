// A throwaway PostgreSQL cluster for the replica tests: Debian's server binaries,
// run as the postgres user, on a loopback port, in a fresh directory.
import { chownSync, mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./daemon.ts";

const PG_BIN = (() => {
  const versions = readdirSync("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a));
  if (!versions.length) throw new Error("no PostgreSQL server found: apt-get install postgresql");
  return `/usr/lib/postgresql/${versions[0]}/bin`;
})();
export const PASSWORD = "releasestatus-test";

function asPostgres(command: string) {
  const r = Bun.spawnSync(["su", "postgres", "-s", "/bin/sh", "-c", command], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${command}\n${r.stdout}${r.stderr}`);
  return r.stdout.toString();
}

export function startCluster() {
  const dir = mkdtempSync(join(tmpdir(), "rs-pg-"));
  chownSync(dir, Number(asPostgres("id -u").trim()), Number(asPostgres("id -g").trim()));
  const port = freePort();
  const data = join(dir, "data");
  const pwfile = join(dir, "pw");
  asPostgres(
    `echo '${PASSWORD}' > ${pwfile} && ${PG_BIN}/initdb -D ${data} -U postgres --pwfile=${pwfile} --auth-host=scram-sha-256 --auth-local=trust >/dev/null`,
  );
  const ctl = (action: string) =>
    asPostgres(
      `${PG_BIN}/pg_ctl -D ${data} -l ${dir}/log -w -t 30 -o "-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=200" ${action} >/dev/null`,
    );
  ctl("start");
  asPostgres(`${PG_BIN}/createdb -h ${dir} -p ${port} -U postgres releasestatus`);
  const psql = (query: string, database = "releasestatus") =>
    asPostgres(`${PG_BIN}/psql -h ${dir} -p ${port} -U postgres -d ${database} -tAc "${query}"`);
  return {
    port,
    url: `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/releasestatus`,
    stop: () => ctl("stop -m fast"),
    start: () => ctl("start"),
    psql,
    /** A login role (password PASSWORD) with a database of its own, which it owns when `owner`; the URL for both. */
    role: (name: string, opts: { owner?: boolean; settings?: string } = {}) => {
      psql(`CREATE ROLE ${name} LOGIN PASSWORD '${PASSWORD}' ${opts.settings ?? ""}`);
      psql(`CREATE DATABASE ${name}${opts.owner ? ` OWNER ${name}` : ""}`);
      return `postgres://${name}:${PASSWORD}@127.0.0.1:${port}/${name}`;
    },
    /** How many connections `role` holds now. */
    connectionsOf: (role: string) =>
      Number(psql(`SELECT count(*) FROM pg_stat_activity WHERE usename = '${role}'`).trim()),
    destroy: () => {
      try {
        ctl("stop -m immediate");
      } catch {}
    },
  };
}
