# authz: policy decision point for AI agents (Envoy ext_authz v3 + authz.v1 over gRPC). docs/serve.md#container-image
#   docker build -t authz .
#   docker run --rm -p 9191:9191 -p 9464:9464 \
#     -v $PWD/authz.toml:/etc/authz/authz.toml:ro -v $PWD/idp-jwks.json:/etc/authz/identity/jwks.json:ro \
#     -v $PWD/policies:/etc/authz/policies:ro -v authz-data:/var/lib/authz authz
# The default command serves docker/authz.toml: it listens on 0.0.0.0, so it requires identity (a JWKS
# mounted at /etc/authz/identity/jwks.json); with none it stops at start (exit 2) naming what is missing.
#
# The base image is pinned by digest: python:3.11.15-slim-bookworm, the multi-platform index digest
# published by the Docker official images (docker-library/repo-info, repos/python/remote/
# 3.11.15-slim-bookworm.md, 2026-08-05). It was not pulled here: this machine reaches no image registry,
# so the digest is not verified against one. Check it with
#   docker buildx imagetools inspect python:3.11.15-slim-bookworm
# and update it with the tag when a new patch release comes out. --build-arg PYTHON_IMAGE=... builds on
# another Python 3.11 image (how it was tried here: docs/serve.md#container-image).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# -- build: compile the Cython evaluator into a wheel -------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md* ./
COPY authz ./authz
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- run: no compiler, no sources, not root -----------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --home-dir /var/lib/authz --create-home authz
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY docker/authz.toml /etc/authz/authz.toml
COPY authz/examples/policies /etc/authz/policies
USER 10001
WORKDIR /var/lib/authz
# Index, task-token signing keys (keep them: tokens die with them), revocations, decision log.
VOLUME ["/var/lib/authz"]
EXPOSE 9191 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["authz", "health", "--server", "127.0.0.1:9191", "--timeout", "4"]
# SIGTERM drains in-flight requests (see --drain); no shell in between so the signal reaches authz.
STOPSIGNAL SIGTERM
ENTRYPOINT ["authz"]
CMD ["serve", "--config", "/etc/authz/authz.toml"]
