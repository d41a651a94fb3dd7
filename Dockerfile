# syntax=docker/dockerfile:1
# xmr service image. CPU by default; for NVIDIA GPUs build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# TORCH_INDEX_URL= (empty) installs torch from pip's configured index instead. BASE_IMAGE is any
# Debian-like image with python3 (3.11+), venv and `python`; scripts/docker_smoke.sh builds on
# a stand-in bootstrapped from Debian's packages where no registry image can be pulled.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# optional extras of the xmr package, e.g. "milvus" for the Milvus backend
ARG XMR_EXTRAS=""
# the building machine's pip settings, when it passes them in (pip reads them from the
# environment); unset in an ordinary build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch and torchvision first, from the index that matches the target hardware
RUN pip install ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} torch torchvision
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY index ./index
COPY xmr ./xmr
RUN pip install ".${XMR_EXTRAS:+[$XMR_EXTRAS]}"

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 xmr \
    && useradd --system --uid 10001 --gid xmr --home-dir /home/xmr --create-home xmr \
    && mkdir -p /data /cache /import && chown xmr:xmr /data /cache
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XMR_HOST=0.0.0.0 \
    XMR_PORT=8000 \
    XMR_DATA_DIR=/data \
    XMR_LOG_FORMAT=json \
    HF_HOME=/cache/huggingface \
    XMR_RUNTIME_CACHE_DIR=/cache/xmr-runtimes
USER 10001:10001
WORKDIR /home/xmr
VOLUME ["/data", "/cache"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]
