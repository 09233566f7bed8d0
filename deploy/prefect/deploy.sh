#!/bin/sh
# Register the work pool and every deployment in prefect.yaml against the Prefect server.
set -eu
prefect work-pool inspect local >/dev/null 2>&1 || prefect work-pool create local --type process
prefect --no-prompt deploy --all
