# First working image of avfuse (the deployment issue adds the CUDA base, hadolint and k8s wiring).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY operators ./operators
RUN python -m venv /opt/avfuse \
 && /opt/avfuse/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/avfuse/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 avfuse
COPY --from=build /opt/avfuse /opt/avfuse
COPY configs /etc/avfuse
ENV PATH=/opt/avfuse/bin:$PATH PYTHONUNBUFFERED=1
USER avfuse
WORKDIR /home/avfuse
ENTRYPOINT ["avfuse"]
CMD ["--help"]
