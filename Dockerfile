# One image, three entrypoints: `python -m services.api|runtime|image`; the `tests`
# target adds the test suite for `make e2e-compose`.
# BASE_IMAGE defaults to the official Python slim image; offline hosts build a local
# Debian bookworm base (tests/compose/base-image.sh) and pass it as a build argument.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS services

# pip verifies TLS against the system trust store (which a local base copies from its host).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN command -v ip >/dev/null && command -v mount >/dev/null && command -v nft >/dev/null || { \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        iproute2 util-linux nftables && rm -rf /var/lib/apt/lists/*; }

WORKDIR /opt/berth
COPY requirements.txt ./
RUN python3 -m venv /opt/berth/.venv \
 && /opt/berth/.venv/bin/pip install --no-cache-dir -r requirements.txt
COPY protos ./protos
RUN mkdir -p gen \
 && /opt/berth/.venv/bin/python -m grpc_tools.protoc -I protos --python_out=gen --grpc_python_out=gen \
      $(find protos -name '*.proto') \
 && find gen/berth -type d -exec touch {}/__init__.py \;
COPY services ./services
COPY cli ./cli
ENV PYTHONPATH=/opt/berth:/opt/berth/gen \
    PATH=/opt/berth/.venv/bin:$PATH
ENTRYPOINT ["/opt/berth/.venv/bin/python", "-m"]
CMD ["services.api"]

FROM services AS tests
# What the tests themselves run: a real registry, skopeo, htpasswd, busybox for test images.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      busybox-static procps docker-registry skopeo apache2-utils openssl \
 && rm -rf /var/lib/apt/lists/*
COPY requirements-dev.txt ./
RUN /opt/berth/.venv/bin/pip install --no-cache-dir -r requirements-dev.txt
COPY pyproject.toml ./
COPY tests ./tests
CMD ["pytest", "-q", "-p", "no:cacheprovider", "tests/e2e"]
