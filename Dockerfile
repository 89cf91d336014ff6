# One image for every quantmesh service; compose picks the service with `serve <name>`,
# and runs the mesh's one-shot jobs (`pki init`, `mesh envoy`) from it too.
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
COPY storage storage
# The CPU build of torch (the trainer job needs it); PyPI's default is a CUDA build.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[train]" \
    && rm -rf /app/*

# Everything runs unprivileged as uid 10001, Envoy included (compose sets `user:`). Each
# folder a named volume mounts is created here, owned by 10001: Docker gives an empty
# named volume the owner and mode of the image's folder at its first mount, so the
# services can write their state and only uid 10001 can read the mesh's private keys.
RUN mkdir -p /var/lib/quantmesh/registry /var/lib/quantmesh/execution \
        /var/lib/quantmesh/risk /var/lib/quantmesh/analytics \
        /etc/quantmesh/pki /etc/quantmesh/envoy \
    && chown -R 10001:10001 /var/lib/quantmesh /etc/quantmesh \
    && chmod 0700 /etc/quantmesh/pki
USER 10001:10001
ENTRYPOINT ["quantmesh"]
