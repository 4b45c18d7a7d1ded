# valet: multi-stage build, small non-root runtime image.
#
#   docker build -t valet .
#   docker run --rm -p 8443:8443 -v $PWD/my-config:/etc/valet valet
#
# Mount a directory holding config.yaml (and the certificate, keys and
# revocation file it names) at /etc/valet. Listeners must bind 0.0.0.0 inside
# a container to be reachable from outside.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/token_validation.rs \
    && cargo build --release --locked && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin valet

# distroless: glibc and CA certificates only; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/valet /usr/local/bin/valet
COPY --chown=nonroot:nonroot config.example.yaml /etc/valet/config.yaml
WORKDIR /etc/valet
USER nonroot:nonroot
# 8443: the TLS listener in the shipped config; 9090: metrics and health.
EXPOSE 8443 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/valet", "healthcheck", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/valet"]
CMD ["serve", "--config", "/etc/valet/config.yaml"]
