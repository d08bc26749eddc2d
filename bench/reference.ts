// The floor for the benchmark: a bare Bun.serve answering a constant 1, built
// the same way as releasestatus. Every figure is quoted next to this one.
const server = Bun.serve({
  port: Number(process.env.RS_PORT),
  hostname: process.env.RS_HOST || "127.0.0.1",
  development: false,
  fetch: () => new Response("1\n"),
});
process.on("SIGTERM", async () => {
  await server.stop();
  process.exit(0);
});
