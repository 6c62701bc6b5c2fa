# A node image: Python slim, the locked dependencies, the node's code, a non-root user.
#   docker build -t scalenode:0.1.0 .
#   docker run --rm -p 8080:8080 scalenode:0.1.0                 # config/local.toml, no services
#   docker run ... scalenode:0.1.0 --config /etc/scalenode/scalenode.toml   (deploy/kubernetes)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first (a layer that changes only with the lock), each pinned by the lock.
COPY pyproject.toml requirements.lock README.md ./
COPY node/ node/
COPY plugins/ plugins/
COPY dashboard/ dashboard/
RUN pip install --constraint requirements.lock . && rm -rf build ./*.egg-info

COPY run.py ./
COPY config/ config/

# Non-root; ./data (the embedded shard store) is the only place the node writes.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin scalenode \
    && mkdir -p /app/data && chown scalenode:scalenode /app/data
USER 10001:10001

EXPOSE 8080
# SIGTERM drains: /ready 503 for node.drain_delay, then in-flight requests finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "run.py"]
CMD ["--config", "config/local.toml", "--host", "0.0.0.0"]
