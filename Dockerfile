FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY routing ./routing
COPY tradebus ./tradebus
COPY tasks ./tasks
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --system tradebus
USER tradebus
CMD ["tradebus", "--help"]
