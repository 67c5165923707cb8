# One image for every UAAP role: flower-server, flower-client, the MLflow server, the dashboard and the inference API.
# Build: docker build -t uaap .      (CPU-only torch; secrets are mounted at run time, never baked in)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    RAY_USAGE_STATS_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    UAAP_HOME=/workspace

WORKDIR /app
# CPU wheels of torch first (the default index ships multi-GB CUDA wheels), at the Makefile's pin.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
# Every other dependency at the version the tests passed with (requirements.lock, `make lock`).
COPY pyproject.toml README.md requirements.lock ./
COPY uaap ./uaap
COPY server ./server
COPY client ./client
COPY strategies ./strategies
COPY simulations ./simulations
COPY edge ./edge
COPY serving ./serving
# psycopg2-binary: MLflow's PostgreSQL backend store (postgresql+psycopg2://); onnxruntime: the API runs ONNX exports.
RUN pip install --constraint requirements.lock ".[server,dashboard,serving]" "psycopg2-binary>=2.9,<3" onnxruntime \
    && useradd --create-home --uid 1000 uaap \
    && mkdir -p /workspace /certs /keys \
    && chown uaap:uaap /workspace /certs /keys
USER uaap
VOLUME ["/workspace"]
# 9093: SuperLink (Fleet + Control + runtime API); 5000: MLflow; 8501: dashboard; 8000: inference API.
EXPOSE 9093 5000 8501 8000
CMD ["uaap", "--help"]
