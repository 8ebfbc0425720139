# The MLflow tracking server of the compose stack: MLflow + the PostgreSQL driver + boto3 for the
# MinIO (S3 API) artifact store. Same MLflow line as losstune's own dependency (mlflow>=3.0).
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.10
ARG BOTO3_VERSION=1.40.0

ENV MLFLOW_DISABLE_TELEMETRY=true \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
        "boto3==${BOTO3_VERSION}" \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin mlflow

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
