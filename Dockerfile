# One Dockerfile, one target per extra: `bot` (no torch), `worker` (inference and training), `dev` (tests).
FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ANIBOT_DATA_DIR=/data ANIBOT_MODELS_DIR=/models
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core fonts-noto-cjk \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY workers ./workers
COPY bot ./bot
COPY cli ./cli
RUN useradd --create-home --uid 10001 anibot && mkdir -p /data /models && chown anibot /data /models

FROM base AS bot
RUN pip install --no-cache-dir ".[bot]"
USER anibot
CMD ["anibot", "--help"]

FROM base AS worker
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
# torch first and pinned, so resolving timm/ultralytics never swaps the build
RUN pip install --no-cache-dir "torch==2.15.0" "torchvision==0.29.2" && pip install --no-cache-dir ".[worker]"
ENV YOLO_OFFLINE=1 HF_HUB_OFFLINE=1
USER anibot
CMD ["anibot", "worker", "--queues", "gpu"]

FROM worker AS dev
USER root
COPY tests ./tests
COPY scripts ./scripts
RUN pip install --no-cache-dir ".[worker,bot,dev]"
USER anibot
CMD ["python", "-m", "pytest", "-m", "not queue"]
