# One image for every process of loyale-klaviyo-sync (see docker-compose.yml and Procfile):
# Celery workers and beat, Flower, `loyale-sync webhooks`, `loyale-sync metrics`, and the fakes of the demo.
FROM python:3.11-slim

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /usr/local/bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PYTHONUNBUFFERED=1 \
    PATH="/app/.venv/bin:${PATH}"

WORKDIR /app

# Dependencies first (a layer that changes only with uv.lock), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
# Only the packages: never the host's .venv, .env or tenants files.
COPY worker/ worker/
COPY producers/ producers/
COPY cli/ cli/
COPY fakes/ fakes/
RUN uv sync --frozen --no-dev

RUN useradd --create-home --uid 10001 --user-group sync
USER sync

# Overridden by every service; this one just shows the commands.
CMD ["loyale-sync", "--help"]
