# The image holds the compiled binary as its only file, plus an empty data
# directory for the database. Build it with `make container`, which builds the
# binary first and hands Docker a context of just those two.
# CI here cannot reach gcr.io: it builds on a local stand-in under this exact
# name (docker/distroless-stand-in.sh); everywhere else this is the real image.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY releasestatus /usr/local/bin/releasestatus
COPY --chown=65532:65532 data /data

ENV RS_PORT=8080 RS_DB=/data/releasestatus.db
EXPOSE 8080
VOLUME /data
USER 65532:65532
WORKDIR /data
STOPSIGNAL SIGTERM
# Distroless has no shell or curl: the binary asks its own /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=3s --retries=3 CMD ["/usr/local/bin/releasestatus", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/releasestatus"]
