# att3d on NVIDIA GPUs: the HTTP service (`att3d serve`) with the tiny-cuda-nn and nvdiffrast backends.
#
#   docker build -t att3d:gpu .
#   docker run --gpus all -p 8000:8000 -v att3d-data:/data att3d:gpu [--checkpoint /models/NAME]
#
# With the Ray backend (Ray Serve replicas, Ray jobs; the image of a KubeRay RayService's head and workers):
#   docker build --build-arg ATT3D_EXTRAS=ray -t att3d:gpu-ray .
#   docker run --gpus all --shm-size=8g -p 8000:8000 -v att3d-data:/data att3d:gpu-ray --backend ray --replicas 1
#
# The devel base provides nvcc, which both CUDA extensions need to build. See docs/GPU.md.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

# The torch CUDA build matching constraints.txt's torch pin and the base image's CUDA 12.8.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# GPU generations compiled into the extensions: 80 A100, 86 A10/RTX 30, 89 L4/L40/RTX 40, 90 H100/H200.
ARG CUDA_ARCHITECTURES="80;86;89;90"
# Git refs of the official repositories (branch, tag or commit; pin a commit for reproducible images).
ARG TCNN_REF=master
ARG NVDIFFRAST_REF=main
# Optional extras of the package, comma-separated (e.g. "ray", "ray,redis"); empty: the plain service.
ARG ATT3D_EXTRAS=

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git build-essential ninja-build \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# torch first and alone, so nothing later resolves it to another build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# The CUDA extensions build against that torch (no build isolation) for the listed architectures; no GPU
# is needed at build time.
ENV TCNN_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
RUN pip install setuptools wheel \
    && pip install --no-build-isolation \
        "git+https://github.com/NVlabs/tiny-cuda-nn@${TCNN_REF}#subdirectory=bindings/torch" \
    && pip install --no-build-isolation "git+https://github.com/NVlabs/nvdiffrast@${NVDIFFRAST_REF}"

# The package with its pinned dependencies (constraints keep torch at the CUDA build installed above).
WORKDIR /opt/att3d
COPY pyproject.toml constraints.txt README.md ./
COPY att3d ./att3d
COPY server ./server
COPY configs ./configs
RUN pip install -c constraints.txt ".${ATT3D_EXTRAS:+[${ATT3D_EXTRAS}]}"

# Unprivileged user; the jobs database, training runs and caches live under /data.
RUN useradd --create-home --uid 1000 att3d && mkdir -p /data && chown att3d:att3d /data
USER att3d
ENV ATT3D_DEVICE=cuda \
    ATT3D_DATA_DIR=/data \
    ATT3D_CACHE=/data/cache \
    TORCH_EXTENSIONS_DIR=/data/torch_extensions \
    NUMBA_CACHE_DIR=/data/numba_cache
# glibc malloc for meshing (issue #16, att3d/malloc_tuning.py, which sets the same at start-up): keep
# large blocks and the freed heap top mapped instead of faulting them in again on every request.
ENV MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=1073741824 \
    MALLOC_TOP_PAD_=268435456
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)" || exit 1

ENTRYPOINT ["att3d", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
