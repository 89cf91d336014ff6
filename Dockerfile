# One image for every quantmesh service; compose picks the service with `serve <name>`.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gen gen
COPY services services
COPY runtime runtime
COPY cli cli
COPY bench bench
COPY datasets datasets
COPY mesh mesh
COPY observability observability
RUN pip install --no-cache-dir . && rm -rf /app/*

# Services run unprivileged.
USER 10001
ENTRYPOINT ["quantmesh"]
