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
# The CPU build of torch (the trainer job needs it); PyPI's default is a CUDA build.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[train]" \
    && rm -rf /app/*

# Services run unprivileged; the registry volume is theirs.
RUN mkdir -p /var/lib/quantmesh/registry /var/lib/quantmesh/execution \
    && chown -R 10001 /var/lib/quantmesh
USER 10001
ENTRYPOINT ["quantmesh"]
