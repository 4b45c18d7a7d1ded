# syntax=docker/dockerfile:1
# valet: multi-stage build, small non-root runtime image.
#
#   docker build -t valet .
#   docker run --rm -p 8443:8443 -p 9090:9090 \
#     -v $PWD/tls:/etc/valet/tls:ro -v valet-data:/var/lib/valet valet
#
# The image's config (/etc/valet/config.yaml, written below) listens on
# 0.0.0.0, reads its TLS certificate from /etc/valet/tls/{cert,key}.pem and
# keeps what valet writes (signing key, the state store, clients) in the volume
# /var/lib/valet, owned by the runtime user. Mount your own config over
# /etc/valet/config.yaml to change anything. Secrets come from files (mount
# them and name them in the config); the client-secret pepper may instead come
# from VALET_SECRET_PEPPER in a config without secret_pepper_file.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. Every target
# Cargo.toml declares gets a stub (the lib, the binary, each [[bench]]): cargo
# refuses a manifest whose targets are missing.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in $(awk '/^\[\[bench\]\]/{b=1;next} /^\[/{b=0} b&&/^name *=/{gsub(/.*= *"|".*/,"");print}' Cargo.toml); do \
         echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bin valet && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin valet \
    && mkdir -p /out/var/lib/valet

# distroless: glibc and CA certificates only; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/valet /usr/local/bin/valet
# The data folder, owned by the runtime user (distroless has no shell to
# make it at run time).
COPY --from=build --chown=nonroot:nonroot /out/var/lib/valet /var/lib/valet
COPY <<'EOF' /etc/valet/config.yaml
# valet in a container (valet check --config /etc/valet/config.yaml).
listeners:
  - name: public
    address: "0.0.0.0:8443"
    tls:
      cert_file: tls/cert.pem          # mount the certificate at /etc/valet/tls
      key_file: tls/key.pem
metrics:
  address: "0.0.0.0:9090"              # /metrics, /healthz, /readyz
tokens:
  issuer: "https://valet.example.com"  # set to the URL clients reach valet at
  audiences: ["api"]
  keys:
    - id: valet-1
      algorithm: EdDSA
      # Created on first start in the volume, then kept. To bring your own,
      # mount it (PKCS#8 PEM) and point private_key_file at it.
      private_key_file: /var/lib/valet/signing-key.pem
      generate_if_missing: true
revocation:
  # The operator's list (valet only reads it; it may be a read-only mount).
  file: /var/lib/valet/revocations.yaml
store:
  # What valet records itself: revocations, rotations, single-use ids,
  # managed clients, OAuth 1.0 tokens.
  path: /var/lib/valet/valet-state.db
authorization_server:
  # Clients are added with `valet client add` (or the admin API) into the
  # state store on the volume. The pepper for generated secrets: this file,
  # created on first start (without secret_pepper_file: VALET_SECRET_PEPPER).
  # The clients file of earlier images, imported into the store once.
  clients_file: /var/lib/valet/clients.yaml
  secret_pepper_file: /var/lib/valet/pepper
  generate_pepper_if_missing: true
routes:
  # A sidecar's workload listens on the pod's loopback.
  - name: app
    match: { path_prefix: / }
    upstream: "http://127.0.0.1:8080"
logging:
  format: json
EOF
WORKDIR /etc/valet
USER nonroot:nonroot
VOLUME /var/lib/valet
# 8443: the TLS listener; 9090: metrics and health.
EXPOSE 8443 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/valet", "healthcheck", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/valet"]
CMD ["serve", "--config", "/etc/valet/config.yaml"]
