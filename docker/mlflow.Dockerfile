# The MLflow tracking server of the compose stack: MLflow with its basic-auth app (mlflow[auth]: Flask-WTF)
# + the PostgreSQL driver + boto3 for the MinIO (S3 API) artifact store, and mlflow_auth.py, which
# writes the auth app's config from the environment at start (no password in the image).
# Same MLflow line as losstune's own dependency (mlflow>=3.0).
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.10
ARG BOTO3_VERSION=1.40.0

ENV MLFLOW_DISABLE_TELEMETRY=true \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
        "boto3==${BOTO3_VERSION}" \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin mlflow

COPY mlflow_auth.py /usr/local/lib/losstune/mlflow_auth.py

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
