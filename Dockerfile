# The cregistry service. Redis runs elsewhere: set CREGISTRY_REDIS_URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CREGISTRY_API_LISTEN=0.0.0.0:8080 \
    CREGISTRY_BROKER_LISTEN=0.0.0.0:8081

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY cregistry ./cregistry
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 --no-create-home cregistry

USER cregistry
# 8080: devices and operators. 8081: go-auth only; publish it to the broker's
# network, never to devices (it answers "is this password right?").
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import socket; socket.create_connection(('127.0.0.1', 8080), 2)"
ENTRYPOINT ["cregistry"]
CMD ["serve"]
