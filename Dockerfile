# syntax=docker/dockerfile:1
# Exemplar server image. CPU by default; `--build-arg VARIANT=cuda` installs CUDA builds of torch
# and faiss-gpu instead (run with `--gpus all`).
#
# BASE_IMAGE: any Debian-like image with Python 3.10+ and its venv module (the public python:slim by
# default; tests/integration/test_container.py builds over a debootstrapped Debian, as a site whose
# registry is private would). TORCH_INDEX_URL: where the CPU torch comes from (empty: pip's own
# index). TORCH_SPEC: which torch. PIP_OPTIONS: extra options for every pip install (a private
# index, --find-links to a wheel mirror).
ARG BASE_IMAGE=python:3.11-slim
ARG VARIANT=cpu

FROM ${BASE_IMAGE} AS build
ARG VARIANT
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch torchvision"
ARG PIP_OPTIONS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exemplar ./exemplar
# torch first, from the index that matches the variant, so `pip install .` keeps it.
RUN if [ "$VARIANT" = "cuda" ] || [ -z "$TORCH_INDEX_URL" ]; then \
        pip install $PIP_OPTIONS $TORCH_SPEC; \
    else \
        pip install $PIP_OPTIONS --index-url "$TORCH_INDEX_URL" $TORCH_SPEC; \
    fi \
 && pip install $PIP_OPTIONS . \
 && if [ "$VARIANT" = "cuda" ]; then pip uninstall -y faiss-cpu && pip install $PIP_OPTIONS faiss-gpu-cu12; fi

FROM ${BASE_IMAGE} AS runtime
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
    CMD python -c "import os,sys,urllib.request; port = os.environ.get('EXEMPLAR_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["exemplar"]
CMD ["serve"]
