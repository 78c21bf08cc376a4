# The image of every Ray node (head and workers) where a cluster does not install from source:
# KubeRay (deploy/k8s/) and `ray up` with a `docker:` section. CI does not build it (no image
# registry here); docs/cluster.md says how to build and push it.
#
# image: registry.example.com/instrumentgen:<git commit>
#
# Tag it with the commit it is built from (docs/cluster.md), never reuse a tag across code changes.
#
# Base: Ray's own CUDA image with the Ray version of constraints.txt and Python 3.11 (the tag
# format is <ray version>-py<python>-cu<cuda>); it brings Ray, the NVIDIA container set-up and the
# `ray` user that KubeRay expects. torch, torchaudio and torchvision are the pinned versions built
# for the same CUDA (12.8) from PyTorch's own index: the PyPI wheel of torch 2.11 is built for
# CUDA 13.0 and needs a newer driver. GPU nodes need an NVIDIA driver >= 570 (CUDA 12.8); with an
# older one torch sees no GPU, and the Generator and the encoder actors refuse to start
# (`DeviceError`) instead of running on the CPU.
FROM rayproject/ray:2.60.0-py311-cu128

WORKDIR /home/ray/instrumentgen
# Dependencies first, in their own layer: a code change does not reinstall torch.
COPY --chown=ray:users pyproject.toml constraints.txt README.md ./
COPY --chown=ray:users instrumentgen/__init__.py instrumentgen/__init__.py
RUN pip install --no-cache-dir -c constraints.txt --index-url https://download.pytorch.org/whl/cu128 \
        torch torchaudio torchvision && \
    pip install --no-cache-dir -c constraints.txt -e . && pip check
# The code: the library, the jobs, the Serve app and its page (serve/static), the configs.
COPY --chown=ray:users . .
# `python -m jobs.render` and `serve.app:app` import from here on every node, whatever the cwd.
ENV PYTHONPATH=/home/ray/instrumentgen \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_TRAIN_V2_ENABLED=1

# Serve HTTP, Ray dashboard and job API (docs/cluster.md).
EXPOSE 8000 8265
