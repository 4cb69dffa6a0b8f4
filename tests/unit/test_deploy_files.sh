#!/usr/bin/env bash
# Structural checks of deploy/, k8s/, config/ and the Grafana dashboard.
set -euo pipefail
cd "${ZI_SOURCE_DIR:-$(dirname "$0")/../..}"
exec /usr/bin/python3 tests/deploy/check_deploy.py
