# confluence-vectors: one image for the API and for workers (same entry point the tests run).
#
# Without build arguments the image expects a Postgres of its own (DATABASE_URL, as docker-compose.yaml gives)
# and leaves out the embedded PostgreSQL. For a self-contained container that keeps its index under /data:
#   docker build --build-arg EXTRAS=embedded -t confluence-vectors .
#   docker run -v cv-data:/data --env-file .env -p 8000:8000 confluence-vectors
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DATA_DIR=/data HOME=/data
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
# The data directory belongs to the image's user and to group 0, group-writable: it works as that user and as
# any user id a platform assigns (OpenShift-style `--user <uid>:0`), neither of which may write elsewhere.
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --system --uid 10001 --gid 0 --home-dir /data --no-create-home cv \
    && mkdir -p /data && chown 10001:0 /data && chmod 2775 /data
USER 10001:0
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["confluence-vectors"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
