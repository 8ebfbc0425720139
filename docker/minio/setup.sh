#!/bin/sh
# Run once per `docker compose up` by the one-shot service minio-buckets (image minio/minio, which has
# mc), with this folder mounted read-only: the buckets, the two users of the stack and their policies.
# Safe to rerun: every step leaves the same state whether or not it was done before.
#
#   bucket    user                 policy (file here)          who uses it
#   losstune  LOSSTUNE_S3_KEY_ID   losstune-experiments.json   the Ray nodes: experiments, data
#   mlflow    MLFLOW_S3_KEY_ID     mlflow-artifacts.json       the MLflow server: run artifacts
#
# Each user reaches its own bucket only: the Ray nodes cannot touch MLflow's artifacts behind the
# server's back (MLflow's basic auth guards them), and neither holds MinIO's root credentials.
# Only sh built-ins and mc: the minio image has no guarantee of sed or grep.
set -eu

here=${0%/*}
for secret in "$MINIO_ROOT_PASSWORD" "$LOSSTUNE_S3_SECRET" "$MLFLOW_S3_SECRET"; do
    case $secret in change-me*)  # docker/.env.example's placeholders are public
        echo "a MinIO password in docker/.env still holds its change-me placeholder" >&2
        exit 1 ;;
    esac
done
if [ "$LOSSTUNE_S3_KEY_ID" = "$MLFLOW_S3_KEY_ID" ]; then
    echo "LOSSTUNE_S3_KEY_ID and MLFLOW_S3_KEY_ID must differ: one user would get both buckets" >&2
    exit 1
fi

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing local/losstune local/mlflow

# `policy create` replaces a policy of the same name: an edited file takes effect on the next run.
mc admin policy create local losstune-experiments "$here/losstune-experiments.json"
mc admin policy create local mlflow-artifacts "$here/mlflow-artifacts.json"

# `user add` of an existing user sets its secret: docker/.env stays the one place that holds it.
mc admin user add local "$LOSSTUNE_S3_KEY_ID" "$LOSSTUNE_S3_SECRET"
mc admin user add local "$MLFLOW_S3_KEY_ID" "$MLFLOW_S3_SECRET"

# mc refuses to attach a policy that is already attached and to detach one that is not, so each
# user's policies are detached (failures ignored), then its own attached (a failure stops the setup,
# and the user is left with no access rather than too much). `readwrite` is what stacks made before
# these policies gave the Ray nodes' user: every bucket.
only_policy() {
    for old in readwrite "$2"; do
        mc admin policy detach local "$old" --user "$1" >/dev/null 2>&1 || true
    done
    mc admin policy attach local "$2" --user "$1"
}
only_policy "$LOSSTUNE_S3_KEY_ID" losstune-experiments
only_policy "$MLFLOW_S3_KEY_ID" mlflow-artifacts
