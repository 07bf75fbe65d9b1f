# A Python base from Debian packages only: bookworm's python3 (3.11) and venv, and the CA
# certificates pip needs. deploy/offline/prepare-images.sh builds it; deploy/Dockerfile takes it as
# PYTHON_IMAGE where python:3.11-slim cannot be pulled. The site's own CAs (a TLS-inspecting
# proxy's, a private index's), if any, are in extra-ca/ and trusted system-wide.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV LANG=C.UTF-8
LABEL org.opencontainers.image.title="python 3.11 (Debian bookworm packages)" \
      org.opencontainers.image.base.name="${DEBIAN_IMAGE}"
CMD ["python3"]
