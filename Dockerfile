# The ringcast image: every ringcast service (python -m services.<name>) and the ringcast CLI. The
# compose healthchecks call each service's /readyz with bash alone (services/common/probes.py).
# etcd, Redis and Prometheus run their own images.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ringcast ./ringcast
COPY services ./services
COPY ringcast_tools ./ringcast_tools
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
CMD ["ringcast", "--help"]
