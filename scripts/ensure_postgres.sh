#!/usr/bin/env bash
# Best effort: start the local PostgreSQL cluster if it is installed and down (the store tests use it).
if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>/dev/null || true
  fi
fi
exit 0
