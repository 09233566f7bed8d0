#!/bin/sh
# Create the MLflow artifact bucket once; succeed if it exists.
set -eu
mc alias set local http://minio:9000 "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
mc mb --ignore-existing local/mlflow-artifacts
