#!/usr/bin/env bash
# Make sure a Redis server answers on 127.0.0.1:6379, starting a throwaway one (no persistence) if not.
set -euo pipefail
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then exit 0; fi
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is not installed and cannot be installed here" >&2; exit 1
  fi
fi
mkdir -p /tmp/anibot-redis
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir /tmp/anibot-redis --logfile /tmp/anibot-redis/redis.log
for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0; sleep 0.1; done
echo "Redis did not start" >&2; exit 1
