# sensorgate container: a static-enough binary on a slim Debian, run as a non-root user.
#   docker build -t sensorgate .
#   docker run --rm -p 5683:5683/udp -p 8080:8080 -v sensorgate-data:/var/lib/sensorgate sensorgate
# The default pipeline (docker/pipeline.toml, the repository's pipeline.toml with container paths)
# needs no other service; mount your own at /etc/sensorgate/pipeline.toml.

FROM rust:1.95-slim-bookworm AS build
# librdkafka is built from source by rdkafka-sys (make, a C/C++ compiler, perl, zlib).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl python3 pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sensorgate \
 && strip target/release/sensorgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcoap3-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/sensorgate --create-home sensorgate
COPY --from=build /src/target/release/sensorgate /usr/local/bin/sensorgate
COPY schemas /usr/share/sensorgate/schemas
COPY devices.toml /etc/sensorgate/devices.toml
COPY docker/pipeline.toml /etc/sensorgate/pipeline.toml
USER sensorgate
WORKDIR /var/lib/sensorgate
VOLUME /var/lib/sensorgate
EXPOSE 5683/udp 8080/tcp
# Live when the CoAP server answers a ping (an empty confirmable message gets a reset).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["coap-client-notls", "-m", "get", "-B", "2", "coap://127.0.0.1/t"]
ENTRYPOINT ["sensorgate"]
CMD ["run", "--config", "/etc/sensorgate/pipeline.toml"]
