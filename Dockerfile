# The image of every Ray node (head and workers) where a cluster does not install from source:
# KubeRay (deploy/k8s/) and `ray up` with a `docker:` section. CI does not build it (no image
# registry here); docs/cluster.md says how to build and push it.
#
# image: registry.example.com/instrumentgen:0.1.0
#
# Base: Ray's own CUDA image with the Ray version of constraints.txt and Python 3.11 (the tag
# format is <ray version>-py<python>-cu<cuda>). torch comes from the pinned wheel, which brings
# its own CUDA runtime; the base image brings Ray, the NVIDIA container set-up and the `ray` user
# that KubeRay expects.
FROM rayproject/ray:2.60.0-py311-cu128

WORKDIR /home/ray/instrumentgen
# Dependencies first, in their own layer: a code change does not reinstall torch.
COPY --chown=ray:users pyproject.toml constraints.txt README.md ./
COPY --chown=ray:users instrumentgen/__init__.py instrumentgen/__init__.py
RUN pip install --no-cache-dir -c constraints.txt -e . && pip check
# The code: the library, the jobs, the Serve app and its page (serve/static), the configs.
COPY --chown=ray:users . .
# `python -m jobs.render` and `serve.app:app` import from here on every node, whatever the cwd.
ENV PYTHONPATH=/home/ray/instrumentgen \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_TRAIN_V2_ENABLED=1

# Serve HTTP, Ray dashboard and job API (docs/cluster.md).
EXPOSE 8000 8265
