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
  return {
    port,
    url: `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/releasestatus`,
    stop: () => ctl("stop -m fast"),
    start: () => ctl("start"),
    psql: (query: string) =>
      asPostgres(`${PG_BIN}/psql -h ${dir} -p ${port} -U postgres -d releasestatus -tAc "${query}"`),
    destroy: () => {
      try {
        ctl("stop -m immediate");
      } catch {}
    },
  };
}
