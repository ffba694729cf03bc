#!/bin/sh
# Entrypoint of the mlkit serving image (see the Dockerfile).
#   no arguments, or only flags:  mlkit serve on $MLKIT_HOST:$MLKIT_PORT, flags appended (e.g. --workers 2 --unseen reject)
#   a command (mlkit monitor ..., sh): run as given
# The service binds every interface of the container, so it needs a bearer token: without MLKIT_SERVE_TOKEN it stops at once
# (exit 2) unless MLKIT_SERVE_ALLOW_UNAUTHENTICATED=true says that something else guards the network.
set -eu
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then exec "$@"; fi

if [ -z "${MLKIT_SERVE_TOKEN:-}" ]; then
  case "${MLKIT_SERVE_ALLOW_UNAUTHENTICATED:-false}" in
    true|1|yes)
      echo "mlkit-entrypoint: warning: serving WITHOUT authentication on ${MLKIT_HOST}:${MLKIT_PORT} (MLKIT_SERVE_ALLOW_UNAUTHENTICATED is set)" >&2 ;;
    *)
      echo "mlkit-entrypoint: MLKIT_SERVE_TOKEN is not set, and this container serves on ${MLKIT_HOST}:${MLKIT_PORT} (every interface)." \
           "Set it to a long random secret, e.g. -e MLKIT_SERVE_TOKEN=\"\$(openssl rand -hex 32)\" (Kubernetes: from a Secret);" \
           "clients send 'Authorization: Bearer <token>'. To serve without a token on a network that is protected otherwise," \
           "set MLKIT_SERVE_ALLOW_UNAUTHENTICATED=true." >&2
      exit 2 ;;
  esac
fi
exec mlkit serve --model "${MLKIT_MODEL_URI}" --host "${MLKIT_HOST}" --port "${MLKIT_PORT}" --workers "${MLKIT_WORKERS}" \
     --log-dir "${MLKIT_LOG_DIR}" --token-env MLKIT_SERVE_TOKEN "$@"
