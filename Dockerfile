# Multi-stage build: compile in the Rust image, run as a non-root user on a slim base.
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tidings

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/tidings --create-home tidings
COPY --from=build /src/target/release/tidings /usr/local/bin/tidings
USER tidings
WORKDIR /var/lib/tidings
ENV TIDINGS_LISTEN=0.0.0.0:8080 \
    TIDINGS_DATA_DIR=/var/lib/tidings/data \
    TIDINGS_LOG_FORMAT=json
VOLUME ["/var/lib/tidings/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["tidings"]
CMD ["serve"]
