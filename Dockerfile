# confluence-vectors: one image for the API and for workers (same entry point the tests run).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install . && useradd --system --uid 10001 cv
USER cv
EXPOSE 8000
ENTRYPOINT ["confluence-vectors"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
