FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY routing ./routing
COPY tradebus ./tradebus
COPY tasks ./tasks
COPY workers ./workers
RUN pip install --no-cache-dir '.[otlp]' && useradd --system tradebus
# The definitions volume of docker-compose.yml, owned by the rabbitmq image's uid/gid so the broker reads it.
RUN install -d -o 999 -g 999 -m 0700 /definitions
USER tradebus
CMD ["tradebus", "--help"]
