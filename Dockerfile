# authz: policy decision point for AI agents (Envoy ext_authz v3 + authz.v1 over gRPC).
#   docker build -t authz .
#   docker run --rm -p 9191:9191 authz                       # bundled example policies
#   docker run --rm -p 9191:9191 -v $PWD/policies:/policies:ro authz serve --listen 0.0.0.0:9191 --policies /policies

# -- build: compile the Cython evaluator into a wheel -------------------------------------------------
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md* ./
COPY authz ./authz
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- run: no compiler, no sources, not root ----------------------------------------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/authz --create-home authz
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/authz
EXPOSE 9191 9464
# SIGTERM drains in-flight requests (see --drain); no shell in between so the signal reaches authz.
STOPSIGNAL SIGTERM
ENTRYPOINT ["authz"]
CMD ["serve", "--listen", "0.0.0.0:9191", "--metrics-listen", "0.0.0.0:9464"]
