# syntax=docker/dockerfile:1
# Exemplar server image. CPU by default; `--build-arg VARIANT=cuda` installs CUDA builds of torch
# and faiss-gpu instead (run with `--gpus all`).
ARG PYTHON_VERSION=3.11
ARG VARIANT=cpu

FROM python:${PYTHON_VERSION}-slim AS build
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exemplar ./exemplar
# torch first, from the index that matches the variant, so `pip install .` keeps it.
RUN if [ "$VARIANT" = "cuda" ]; then \
        pip install torch torchvision; \
    else \
        pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision; \
    fi \
 && pip install . \
 && if [ "$VARIANT" = "cuda" ]; then pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12; fi

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system exemplar && useradd --system --gid exemplar --home-dir /data --shell /usr/sbin/nologin exemplar \
 && mkdir -p /data && chown exemplar:exemplar /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EXEMPLAR_DATA_DIR=/data \
    EXEMPLAR_HOST=0.0.0.0 \
    EXEMPLAR_PORT=8000 \
    HF_HOME=/data/hf
USER exemplar
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["exemplar"]
CMD ["serve"]
