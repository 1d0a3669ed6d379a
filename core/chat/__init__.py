"""What the front-ends keep per chat and per user: chat settings and corrections (store) and the Redis token
buckets with one job per user per chat (ratelimit)."""
