# One image for every wadispatch process; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY models ./models
COPY intake ./intake
COPY api_shim ./api_shim
COPY worker ./worker
COPY meta_sandbox ./meta_sandbox
COPY cli ./cli
COPY wadispatch ./wadispatch
RUN pip install --no-cache-dir . && useradd --create-home wadispatch \
    && mkdir -p /data/media && chown wadispatch /data/media
ENV WADISPATCH_MEDIA_DIR=/data/media
USER wadispatch
CMD ["wadispatch", "--help"]
