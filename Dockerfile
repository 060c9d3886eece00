# One image, three entrypoints: `python -m services.api|runtime|image`.
# BASE_IMAGE defaults to the official Python slim image; offline hosts can build
# a local Debian base and pass it with --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iproute2 util-linux \
 && rm -rf /var/lib/apt/lists/*

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
    PATH=/opt/berth/.venv/bin:$PATH \
    BERTH_CONFIG=/etc/berth/berth.toml
ENTRYPOINT ["python", "-m"]
CMD ["services.api"]
